"""Fixtures only: real corpora from ../shared/data, a small corpus written on the fly, and one
tiny trained run. The helpers they use, and every other shared helper, are in
:mod:`tests.helpers`, which test modules import by name.

* ``jaychou`` and ``shakespeare`` are the shared corpora (skipped, or failed in CI, when absent);
* ``small_corpus`` is about 6,000 characters of lyrics that train in seconds;
* ``tiny_run`` is one epoch of :data:`~tests.helpers.FAST` on it: a real run directory,
  shared by every test that only reads it; a test that changes a run works on
  :func:`~tests.helpers.copy_run`'s copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import FAST, invoke, shared_file, write_zip

# Two cores: keep torch from oversubscribing them (tests also run beside other work).
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def jaychou() -> Path:
    return shared_file("jaychou_lyrics.txt.zip")


@pytest.fixture
def shakespeare() -> Path:
    return shared_file("tiny_shakespeare.txt")


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


@pytest.fixture(scope="session")
def tiny_run(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``charlstm train small_corpus --epochs 1 FAST``: a run directory to read, never to change."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    result = invoke("train", small_corpus, "--run-dir", run, "--epochs", "1", *FAST)
    assert result.exit_code == 0, result.output
    assert "epoch   1/1" in result.stdout and (run / "best.pt").is_file()
    return run
