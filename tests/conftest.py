"""Shared fixtures and helpers: real corpora from ../shared/data, small corpora written on the
fly, one tiny trained run, and the command line through typer's ``CliRunner``:

* :func:`invoke` runs ``charlstm ARGS`` (stdout and stderr apart, as a terminal shows them);
* :data:`FAST` is the training options that keep a run to seconds (30 steps an epoch on
  :func:`small_corpus`);
* :func:`tiny_run` is one epoch of that: a real run directory, shared by every test that
  only reads it; a test that changes a run works on :func:`copy_run`'s copy;
* :func:`one_line_error` is what every refused command must print.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from charlstm.cli.app import app
from charlstm.config import DataConfig, ModelConfig, SettingError, TrainConfig, option_name
from charlstm.data.corpus import Vocab
from charlstm.model import build_model
from charlstm.storage import checkpoint as ckpt

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEMO_CORPUS = REPO_ROOT / "data" / "demo_lyrics.zip"

# Two cores: keep torch from oversubscribing them (tests also run beside other work).
torch.set_num_threads(min(2, torch.get_num_threads()))


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


@pytest.fixture
def jaychou() -> Path:
    return shared_file("jaychou_lyrics.txt.zip")


@pytest.fixture
def shakespeare() -> Path:
    return shared_file("tiny_shakespeare.txt")


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 6,000 characters of repetitive lyrics: trains to recognisable text in seconds."""
    lines = [
        "我们说好不分开",
        "分开以后的雨天",
        "窗外的风吹过",
        "你说的话还在耳边",
        "不分开的夜晚",
        "城市的灯亮了",
        "我在这里等你",
        "分开也会想念",
    ]
    text = "\n".join(lines[(i * 3) % len(lines)] for i in range(700)) + "\n"
    path = tmp_path_factory.mktemp("corpus") / "small.zip"
    return write_zip(path, {"small.txt": text.encode("utf-8")})


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


@pytest.fixture(scope="session")
def tiny_run(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``charlstm train small_corpus --epochs 1 FAST``: a run directory to read, never to change."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    result = invoke("train", small_corpus, "--run-dir", run, "--epochs", "1", *FAST)
    assert result.exit_code == 0, result.output
    assert "epoch   1/1" in result.stdout and (run / "best.pt").is_file()
    return run


def copy_run(run: Path, to: Path) -> Path:
    """A copy of ``run`` at ``to``, to resume, break or change."""
    shutil.copytree(run, to)
    return to


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


# -- end of serve ----------------------------------------------------------------------------
