"""The d2l Jay Chou setup, trained for real: charlstm reproduces the tutorial's figures.

d2l (zh, PyTorch) trains on the first 10,000 characters with newlines as spaces, hidden
256, batch 32, 35 steps, consecutive sampling, and reports training perplexity 1.03 for
``nn.LSTM`` with Adam at epoch 40 and 4.3 for its from-scratch LSTM with SGD (lr 100,
clip 0.01) at epoch 160. ``--val-fraction 0`` trains on all of the text, as d2l does.

The tests assert bounds that a run settles early rather than d2l's final figures: training
perplexity below 2 within 40 epochs (d2l: 1.03 at epoch 40) and below 10 within 160 epochs
(d2l: 4.3 at epoch 160). Each claim is "below X within N epochs", so a run stops as soon as
it is settled, which keeps the two tests to seconds instead of minutes; it trains
:data:`CHUNK` epochs at a time, each chunk a ``--resume`` of the last with a larger
``--epochs``. The learning rate is constant and there is no dropout, and a resume continues
the straight run's losses exactly (``test_train``'s resume tests), so the epochs seen are
the first epochs of one straight run of N.
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
CHUNK = 3  # epochs between two looks at the training perplexity
QUIET = {"log": lambda _: None, "progress_bar": False}


def train_until(corpus: Path, run_dir: Path, model: dict, train: dict, below: float, within: int):
    """Epoch metrics of the d2l setup trained until its training perplexity falls below
    ``below``, ``within`` epochs at most."""
    metrics, epochs = [], 0
    while epochs < within and not (metrics and min(m.train_ppl for m in metrics) < below):
        epochs = min(epochs + CHUNK, within)
        if not metrics:
            options = ({**D2L_MODEL, **model}, {**D2L_TRAIN, **train, "epochs": epochs}, D2L_DATA)
            trainer = prepare_training(corpus, *options, run_dir=run_dir, **QUIET)
        else:  # the same run, on to a new total (it keeps its settings)
            trainer = prepare_training(None, {}, {"epochs": epochs}, resume=run_dir, **QUIET)
        assert len(trainer.vocab) == 1027
        metrics += trainer.fit().metrics
    assert [m.epoch for m in metrics] == list(range(1, epochs + 1))  # one run, epoch by epoch
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["scratch", "torch"])
def test_adam_reaches_training_perplexity_below_2_within_40_epochs(jaychou, tmp_path, backend):
    metrics = train_until(
        jaychou,
        tmp_path / backend,
        {"backend": backend},
        {"optimizer": "adam", "lr": 1e-2, "clip": 1.0},
        below=2.0,
        within=40,
    )
    assert min(m.train_ppl for m in metrics) < 2.0  # within 40 epochs: train_until stops there
    assert metrics[0].train_ppl > 50  # it really started from scratch


@pytest.mark.slow
def test_scratch_with_d2l_sgd_falls_below_10_within_160_epochs(jaychou, tmp_path):
    metrics = train_until(
        jaychou,
        tmp_path / "sgd",
        {"backend": "scratch"},
        {"optimizer": "sgd", "lr": 100.0, "clip": 0.01},
        below=10.0,
        within=160,
    )
    assert min(m.train_ppl for m in metrics) < 10.0  # within 160 epochs
    assert metrics[0].train_ppl > 50  # it really started from scratch
