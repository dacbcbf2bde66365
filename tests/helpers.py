"""Helpers that several test modules share, imported by name (``from tests.helpers import
invoke``); the fixtures are in ``conftest.py``. Test modules never import each other.

* :func:`invoke` runs ``charlstm ARGS`` (stdout and stderr apart, as a terminal shows them);
  :func:`run_charlstm` runs it in a child process, :class:`ServerProcess` serves;
* :data:`FAST` is the training options that keep a run to seconds (30 steps an epoch on
  the ``small_corpus`` fixture);
* :func:`shared_file` is a real corpus from ../shared/data; :func:`write_zip` a small one;
* :func:`copy_run` is a copy of a run directory (``tiny_run``'s) to change;
* :func:`one_line_error` is what every refused command must print;
* :func:`save_known_model` and :func:`save_verse_model` save models whose distribution is
  known.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from charlstm.cli.app import app
from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.data.corpus import Vocab
from charlstm.fields import SettingError, option_name
from charlstm.model import build_model
from charlstm.storage import checkpoint as ckpt

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEMO_CORPUS = REPO_ROOT / "charlstm" / "data" / "demo_lyrics.zip"


def shared_file(name: str) -> Path:
    """Path of a shared corpus in ``../shared/data``; skip (or fail, in CI) when absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        reason = f"shared corpus not found: {path}"
        if os.environ.get("CHARLSTM_REQUIRE_SHARED") == "1":
            pytest.fail(f"{reason} (CHARLSTM_REQUIRE_SHARED=1)")
        pytest.skip(reason)
    return path


def shown(error: Exception) -> str:
    """The message ``charlstm`` prints for ``error``: a :class:`SettingError` names the
    settings by their options (the library names them by field)."""
    return error.render(option_name) if isinstance(error, SettingError) else str(error)


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def save_known_model(path: Path, probs: dict[str, float], **fields: object) -> Path:
    """Save a checkpoint at ``path`` whose model predicts ``probs`` after any text.

    The output layer's weights are zero and its bias is ``log(probs)``, so the next-character
    distribution is known exactly. ``fields`` go to the :class:`Checkpoint` (epoch, step...).
    """
    vocab = Vocab(list(probs))
    config = ModelConfig(vocab_size=len(vocab), hidden_size=8, dropout=0.0)
    model = build_model(config)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(list(probs.values())).log())
    fields = {
        "train_config": TrainConfig(epochs=1),
        "data_config": DataConfig("corpus.txt"),
        "epoch": 1,
        **fields,
    }
    checkpoint = ckpt.Checkpoint(
        model_config=config, vocab=vocab, model=model.state_dict(), **fields
    )
    return ckpt.save(checkpoint, path)


#: Training options that keep a run to seconds: 30 optimizer steps an epoch on small_corpus.
FAST = ["--hidden", "32", "--batch-size", "8", "--num-steps", "20", "--sample-every", "0"]


def invoke(*args: object) -> Result:
    """``charlstm ARGS`` through typer's CliRunner; ``result.stdout`` / ``.stderr`` apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result: Result, message: str, code: int = 2) -> str:
    """A refused command: exit ``code``, one ``error:`` line holding ``message`` on stderr,
    nothing on stdout, no traceback. Returns the line."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output, result.output
    assert line.startswith("error: ") and message in line, line
    assert result.stdout == "", result.stdout
    return line


def copy_run(run: Path, to: Path) -> Path:
    """A copy of ``run`` at ``to``, to resume, break or change."""
    shutil.copytree(run, to)
    return to


ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",  # the same arithmetic in every process
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
}

# ``python -m charlstm`` that slows down once it has saved its first mid-epoch checkpoint
# (the second save: the first is the start of the run), so that a test polling for that
# checkpoint always catches the run before it ends, however busy the machine. Sleeping
# between steps leaves the arithmetic, and so every loss and weight, unchanged.
PACED = """
import runpy, sys, time
import torch
from charlstm.training.loop import Trainer

real_save, real_step, saves = torch.save, Trainer.train_step, []

def counting_save(*args, **kwargs):
    saves.append(1)
    return real_save(*args, **kwargs)

def paced_step(self, *args, **kwargs):
    if len(saves) >= 2:
        time.sleep(0.05)
    return real_step(self, *args, **kwargs)

torch.save, Trainer.train_step = counting_save, paced_step
sys.argv = ["charlstm", *sys.argv[1:]]
runpy.run_module("charlstm", run_name="__main__", alter_sys=True)
"""


def same_weights(a: Path, b: Path) -> bool:
    first, second = ckpt.load(a).model, ckpt.load(b).model
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


#: ``torchrun`` on this machine: one node, its processes started here.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def command(processes: int, *args: object) -> list[str]:
    """``charlstm ARGS`` in one process, or under torchrun in ``processes``."""
    if processes == 1:
        return [sys.executable, "-m", "charlstm", *map(str, args)]
    return [*TORCHRUN, f"--nproc_per_node={processes}", "-m", "charlstm", *map(str, args)]


SMALL_MODEL = {"hidden_size": 32, "dropout": 0.2}
SMALL_TRAIN = {"batch_size": 8, "num_steps": 20, "sample_every": 0, "seed": 3}


def make_trainer(corpus, run_dir, model=None, train_options=None, data=None, **kwargs):
    """A trainer of the small model on ``corpus`` (no log, no progress bar)."""
    from charlstm.training.start import prepare_training

    return prepare_training(
        corpus,
        {**SMALL_MODEL, **(model or {})},
        {**SMALL_TRAIN, **(train_options or {})},
        data or {},
        run_dir=run_dir,
        log=lambda _: None,
        progress_bar=False,
        **kwargs,
    )


def train(corpus, run_dir, model=None, train_options=None, data=None, **kwargs):
    trainer = make_trainer(corpus, run_dir, model, train_options, data, **kwargs)
    return trainer, trainer.fit()


def losses(result) -> list[tuple[float, float]]:
    return [(m.train_loss, m.val_loss) for m in result.metrics]


# -- verse (issue 27): a model whose distribution is known, over Chinese characters ----------

#: Characters of several 平水韵 classes (一東, 七陽, 一先, 十一尤), both tones, and the
#: punctuation of the classical forms.
VERSE_CHARS = "春夏秋冬東風中紅空同宮陽光長香霜天年前煙山月日水雪竹柳木石酒鳥\n，。"


def save_verse_model(
    path: Path, corpus: Path | None = None, weights: dict[str, float] | None = None
) -> Path:
    """A known model (:func:`save_known_model`) over :data:`VERSE_CHARS`, uniform unless
    ``weights`` says otherwise, whose training corpus is ``corpus`` (for the copy filter)."""
    probs = dict.fromkeys(VERSE_CHARS, 1.0)
    probs.update(weights or {})
    total = sum(probs.values())
    probs = {ch: p / total for ch, p in probs.items()}
    data = DataConfig(str(corpus) if corpus is not None else "corpus.txt")
    return save_known_model(path, probs, data_config=data)


# -- serve (charlstm serve: a real server process on loopback) -----------------------------


class ServerProcess:
    """``charlstm serve ARGS --port 0`` in a process of its own; ``url`` once it listens.

    The process runs this checkout (``PYTHONPATH``) with one torch thread."""

    def __init__(self, *args: object, ready: bool = True) -> None:
        import subprocess
        import sys

        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "charlstm", "serve", *map(str, args), "--port", "0"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        line = self.process.stdout.readline()
        assert line.startswith("charlstm serve: http://"), line + self.process.stderr.read()
        self.url = line.split()[2]
        if ready:
            self.wait_healthy()

    def wait_healthy(self, seconds: float = 60.0) -> None:
        import time

        import httpx

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/health", timeout=30).status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError("the server did not become healthy")

    def metric(self, name: str) -> float:
        """The value of an unlabelled series of ``/metrics``."""
        import httpx

        reply = httpx.get(f"{self.url}/metrics", timeout=30)
        for line in reply.text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no {name} in /metrics: {reply.status_code} {reply.text[:300]}")

    def wait_metric(self, name: str, value: float, seconds: float = 30.0) -> float:
        """Poll ``name`` until it equals ``value`` (or give up after ``seconds``)."""
        import time

        deadline = time.monotonic() + seconds
        seen = self.metric(name)
        while seen != value and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = self.metric(name)
        return seen

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 60 s)."""
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def raw_post(url: str, path: str, body: bytes) -> object:
    """Send ``POST path`` with a JSON ``body`` over a plain socket and return the socket,
    unread: closing it is a client that goes away."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    sock = socket.create_connection((where.hostname, where.port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def sse_events(lines: object) -> list[object]:
    """The ``data:`` payloads of a Server-Sent Events stream (its lines), JSON decoded;
    ``[DONE]`` stays a string."""
    import json

    events: list[object] = []
    for line in lines:  # type: ignore[attr-defined]
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def generated(run: Path, prompt: str, length: int, seed: int, *options: object) -> list[str]:
    """What ``charlstm generate --seed`` writes after ``prompt`` (each sample, without it)."""
    result = invoke(
        "generate",
        "--checkpoint",
        run,
        "--prefix",
        prompt,
        "--length",
        length,
        "--seed",
        seed,
        "--format",
        "jsonl",
        *options,
    )
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    return [s["text"].removeprefix(s["prefix"]) for s in samples]


# -- end of serve ----------------------------------------------------------------------------


# ``python -m charlstm`` whose files may not grow past argv[1] bytes: a full disk.
LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["charlstm", *sys.argv[2:]]
runpy.run_module("charlstm", run_name="__main__", alter_sys=True)
"""


def run_charlstm(*args: object, limit: int | None = None) -> subprocess.CompletedProcess:
    """``charlstm ARGS`` in a child process (its files capped at ``limit`` bytes)."""
    prefix = ["-m", "charlstm"] if limit is None else ["-c", LIMITED, str(limit)]
    return subprocess.run(
        [sys.executable, *prefix, *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
