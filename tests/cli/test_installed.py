"""The product as a user meets it: the installed ``charlstm`` console script, run from an
empty directory with the README's commands, and the demo corpus as package data.

Every other test passes a corpus and runs this checkout; this one runs what ``pip install``
put on the PATH, from a directory holding nothing, as the README's first two commands do.
(``.ci/run`` goes one step further: it builds a wheel, installs it into a fresh virtual
environment and runs the two commands there.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import charlstm
from charlstm.data.corpus import read_text
from charlstm.data.demo import demo_corpus


def installed_charlstm() -> str:
    path = shutil.which("charlstm")
    assert path is not None, "no charlstm on PATH: install the project (pip install -e .)"
    return path


def test_the_demo_corpus_is_package_data():
    path = demo_corpus()
    assert path.parent == Path(charlstm.__file__).parent / "data"
    assert len(read_text(path)) == 17_251


def test_the_readmes_commands_work_from_an_empty_directory(tmp_path):
    """``charlstm train`` with no corpus (one epoch here), then ``charlstm generate`` from
    the newest run: the console script, in a directory holding nothing."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [installed_charlstm(), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    trained = run("train", "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    assert "demo_lyrics" in trained.stdout and "epoch   1/1" in trained.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "best.pt").is_file()
    written = run("generate", "--prefix", "分开", "--length", "20", "--seed", "1")
    assert written.returncode == 0, written.stderr
    assert written.stdout.startswith("分开") and len(written.stdout.strip()) > 2
