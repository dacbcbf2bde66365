"""Shared fixtures: real corpora from ../shared/data, small corpora written on the fly."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from charlstm import checkpoint as ckpt
from charlstm.config import DataConfig, ModelConfig, SettingError, TrainConfig, option_name
from charlstm.corpus import Vocab
from charlstm.model import build_model

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
