"""The d2l Jay Chou setup, trained for real: charlstm reproduces the tutorial's figures.

d2l (zh, PyTorch) trains on the first 10,000 characters with newlines as spaces, hidden
256, batch 32, 35 steps, consecutive sampling, and reports training perplexity 1.03 for
``nn.LSTM`` with Adam at epoch 40 and 4.3 for its from-scratch LSTM with SGD (lr 100,
clip 0.01) at epoch 160. ``--val-fraction 0`` trains on all of the text, as d2l does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from charlstm.training.start import prepare_training

D2L_DATA = {"max_chars": 10_000, "newlines": "space"}
D2L_MODEL = {"hidden_size": 256, "num_layers": 1, "dropout": 0.0}
D2L_TRAIN = {
    "batch_size": 32,
    "num_steps": 35,
    "sampling": "consecutive",
    "val_fraction": 0.0,
    "sample_every": 0,
    "seed": 0,
}


def run(corpus: Path, run_dir: Path, model: dict, train: dict):
    trainer = prepare_training(
        corpus,
        {**D2L_MODEL, **model},
        {**D2L_TRAIN, **train},
        D2L_DATA,
        run_dir=run_dir,
        log=lambda _: None,
        progress_bar=False,
    )
    assert len(trainer.vocab) == 1027
    return trainer.fit().metrics


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["scratch", "torch"])
def test_adam_reaches_training_perplexity_below_2_within_40_epochs(jaychou, tmp_path, backend):
    metrics = run(
        jaychou,
        tmp_path / backend,
        {"backend": backend},
        {"optimizer": "adam", "lr": 1e-2, "clip": 1.0, "epochs": 40},
    )
    assert len(metrics) == 40
    assert min(m.train_ppl for m in metrics) < 2.0
    assert metrics[0].train_ppl > 50  # it really started from scratch


@pytest.mark.slow
def test_scratch_with_d2l_sgd_falls_below_10_within_160_epochs(jaychou, tmp_path):
    metrics = run(
        jaychou,
        tmp_path / "sgd",
        {"backend": "scratch"},
        {"optimizer": "sgd", "lr": 100.0, "clip": 0.01, "epochs": 160},
    )
    assert min(m.train_ppl for m in metrics) < 10.0
