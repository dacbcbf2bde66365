"""The charlstm command line end to end, through typer's CliRunner and as a real process."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from charlstm.api import load_model
from charlstm.data.corpus import read_text, split_point
from charlstm.eval.scoring import score_adaptive
from charlstm.generation.settings import CacheConfig, DynamicConfig
from charlstm.storage import checkpoint as ckpt
from tests.helpers import FAST, REPO_ROOT, copy_run, invoke, write_zip


def test_resume_prints_perplexities_and_samples(tiny_run: Path, small_corpus: Path, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    # resume to a new total, through the CLI, printing samples from now on
    result = invoke("train", small_corpus, "--resume", run, "--epochs", "2", "--sample-every", "1")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    assert "epoch   2/2" in result.output and "held-out ppl" in result.output
    assert "分开" in result.output  # the default prefixes are sampled each epoch


def test_generate_from_a_run_is_reproducible(tiny_run: Path):
    args = [
        "generate",
        "--checkpoint",
        tiny_run,
        "--prefix",
        "分开",
        "--prefix",
        "不分开",
        "--length",
        "30",
        "--seed",
        "7",
        "--num-samples",
        "2",
    ]
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0, first.output
    assert first.output == second.output
    lines = first.output.strip("\n").split("\n")
    starts = [line for line in lines if line.startswith(("分开", "不分开"))]
    assert len(starts) >= 4


def test_generate_uses_the_newest_run_by_default(tiny_run: Path, tmp_path: Path):
    root = tmp_path / "runs"
    older, newer = root / "older", root / "newer"
    for run in (older, newer):
        copy_run(tiny_run, run)
    (root / "not-a-run").mkdir()  # no checkpoint: never chosen
    for age, run in ((200, older), (100, newer)):
        for path in run.glob("*.pt"):
            os.utime(path, (time.time() - age, time.time() - age))
    args = ["generate", "--runs-root", root, "--prefix", "分", "--length", "10", "--seed", "1"]
    result = invoke(*args, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["text"].startswith("分")
    assert Path(record["checkpoint"]) == newer / "best.pt"
    os.utime(older / "best.pt")  # now the older run holds the newest checkpoint
    assert Path(json.loads(invoke(*args, "--format", "jsonl").stdout)["checkpoint"]) == (
        older / "best.pt"
    )


def test_eval_reports_held_out_perplexity_as_json(tiny_run: Path, small_corpus: Path):
    result = invoke("eval", small_corpus, "--checkpoint", tiny_run, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    n = len(read_text(small_corpus))
    assert report["chars"] == n - split_point(n, 0.1)  # the held-out part, each char once
    best = ckpt.load(tiny_run / "best.pt")
    assert report["loss"] == pytest.approx(best.best_val_loss, rel=1e-5)  # as in training
    assert {"loss", "bpc", "perplexity", "chars"} <= report.keys()


def test_eval_reads_the_runs_own_corpus_as_training_did(small_corpus: Path, tmp_path: Path):
    """The member and --max-chars of the run apply to its own corpus, and only to it."""
    text = read_text(small_corpus)
    both = write_zip(tmp_path / "both.zip", {"a.txt": text.encode(), "b.txt": text[::-1].encode()})
    run = tmp_path / "run"
    trained = invoke(
        "train", both, "--member", "a.txt", "--max-chars", "3000", "--epochs", "1",
        "--run-dir", run, *FAST,
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    own = json.loads(invoke("eval", both, "--checkpoint", run, "--json").stdout)
    assert own["chars"] == 3000 - split_point(3000, 0.1)
    assert own["loss"] == pytest.approx(ckpt.load(run / "best.pt").best_val_loss, rel=1e-5)
    other = tmp_path / "other.txt"
    other.write_text(text, encoding="utf-8")
    whole = json.loads(invoke("eval", other, "--checkpoint", run, "--json").stdout)
    assert whole["chars"] == len(text) - 1  # not cut at the run's --max-chars


def test_eval_of_another_text_scores_all_of_it_and_adapts_on_request(
    tiny_run: Path, small_corpus: Path, tmp_path: Path
):
    text = read_text(small_corpus)[:1500]
    other = tmp_path / "other.txt"
    other.write_text(text, encoding="utf-8")
    n = len(text)

    plain = invoke("eval", other, "--checkpoint", tiny_run)
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.startswith(f"{other}: {n - 1:,} characters scored (whole text after")
    assert re.search(r"loss \d\.\d{4} nats/char, \d+\.\d{4} bits/char, perplexity", plain.stdout)

    half = json.loads(
        invoke("eval", other, "--checkpoint", tiny_run, "--json", "--val-fraction", "0.5").stdout
    )
    assert half["chars"] == n - split_point(n, 0.5)

    saved = (tiny_run / "best.pt").read_bytes()
    adapted = invoke("eval", other, "--checkpoint", tiny_run, "--json", "--cache", "--dynamic")
    assert (tiny_run / "best.pt").read_bytes() == saved  # adaptation never writes back
    assert adapted.exit_code == 0, adapted.output
    report = json.loads(adapted.stdout)
    assert report["chars"] == n - 1
    assert report["cache"] == asdict(CacheConfig()) and report["dynamic"] == asdict(DynamicConfig())
    model = load_model(tiny_run)
    indices = model.vocab.encode(text)
    expected = score_adaptive(model.model, indices[1:], indices[:1], CacheConfig(), DynamicConfig())
    assert report["loss"] == pytest.approx(expected.loss, rel=1e-5)
    unadapted = json.loads(invoke("eval", other, "--checkpoint", tiny_run, "--json").stdout)
    assert report["loss"] != pytest.approx(unadapted["loss"], rel=1e-4)


def test_module_entry_point_and_help():
    result = subprocess.run(
        [sys.executable, "-m", "charlstm", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    for command in ("train", "generate", "eval"):
        assert command in result.stdout


def imported_modules(*args: object) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run ``python -X importtime -m charlstm ARGS``: the process, and every module it
    imported, each with the module whose import imported it (``""``: the top level)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "charlstm", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    rows = []  # (depth, module); importtime lists a module after the ones it imported
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1]
            if name.strip() != "package":  # the header line
                rows.append((len(name) - len(name.lstrip()), name.strip()))
    importers = {}
    for i, (depth, name) in enumerate(rows):
        parent = next((n for d, n in rows[i + 1 :] if d < depth), "")
        importers.setdefault(name, parent)
    return result, importers


@pytest.mark.parametrize(
    "args",
    [["--help"]]
    + [
        [command, "--help"]
        for command in ("train", "prepare", "generate", "eval", "convert", "info", "plot")
    ],
)
def test_help_prints_without_importing_torch(args):
    result, modules = imported_modules(*args)
    assert result.returncode == 0 and "Usage:" in result.stdout, result.stderr[-2000:]
    assert "typer" in modules  # the listing is real
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def test_generate_loads_neither_the_training_code_nor_tqdm(tiny_run: Path):
    result, modules = imported_modules(
        "generate", "--checkpoint", tiny_run, "--prefix", "分开", "--length", "1", "--seed", "1"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("分开")
    assert "charlstm.generation.sample" in modules and "torch" in modules
    assert not {m for m in modules if m.startswith("charlstm.training")}
    # torch.hub imports tqdm when it is installed; no charlstm module does
    assert not modules.get("tqdm", "").startswith("charlstm")


def option_literals(path: Path) -> list[str]:
    """String literals of ``path`` that start with ``--``, except a field's own option name
    (``setting(..., option="--hidden")``) and the rule that derives the others
    (:func:`charlstm.fields._option`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "option":
            allowed.update(id(n) for n in ast.walk(node.value))
        if isinstance(node, ast.FunctionDef) and node.name == "_option":
            allowed.update(id(n) for n in ast.walk(node))
    return [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {node.value[:50]!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("--")
        and id(node) not in allowed
    ]


#: The one folder that speaks in option names: the CLI renders the library's field names.
SPEAKS_IN_OPTIONS = ("cli",)


def test_only_the_cli_speaks_in_option_names():
    """Library errors name fields (``SettingError``); only cli/ turns them into options."""
    package = REPO_ROOT / "charlstm"
    checked = [
        path
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).parts[0] not in SPEAKS_IN_OPTIONS
    ]
    assert len(checked) > 20
    assert [found for path in checked for found in option_literals(path)] == []


def test_real_process_error_has_no_traceback(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "charlstm", "train", str(tmp_path / "none.zip")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: corpus not found: {tmp_path / 'none.zip'}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
        (["train", "--nope"], "No such option: --nope"),
        (["eval"], "Missing argument 'corpus'"),
    ],
)
def test_malformed_command_line_is_one_line_in_a_real_process(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "charlstm", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert result.stdout == ""
