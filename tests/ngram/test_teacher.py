"""charlstm.ngram.teacher: the cross-fitted n-gram teacher, and training with it
(--ngram-teacher)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from charlstm.data.corpus import Vocab, read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.ngram.kneser_ney import KneserNeyLM
from charlstm.ngram.teacher import NgramTeacher
from charlstm.training.start import prepare_training
from tests.helpers import SMALL_MODEL, SMALL_TRAIN, losses, train

LINE = "我们说好不分开 分开以后的雨天 窗外的风吹过\n"
# A phrase that occurs once, in the third of five folds: a teacher that had seen it would
# predict its last character almost surely; a cross-fitted one has not seen it.
SECRET = "龙卷风暴"
TEXT = LINE * 20 + SECRET + LINE * 20


def test_teacher_rows_are_the_other_folds_kneser_ney_distributions() -> None:
    vocab = Vocab.from_text(TEXT)
    teacher = NgramTeacher(TEXT, vocab, order=4, folds=5, top=len(vocab))
    n = len(TEXT)
    edges = [round(n * f / 5) for f in range(6)]
    for f in range(5):
        others = KneserNeyLM(4).fit(TEXT[: edges[f]] + TEXT[edges[f + 1] :], vocab)
        for p in (edges[f], (edges[f] + edges[f + 1]) // 2, edges[f + 1] - 1):
            q = teacher.dense(torch.tensor([p]))[0].double().numpy()
            np.testing.assert_allclose(q, others.distribution(TEXT[:p]), atol=1e-6)


def test_teacher_never_saw_the_character_it_predicts() -> None:
    vocab = Vocab.from_text(TEXT)
    teacher = NgramTeacher(TEXT, vocab, order=4, folds=5)
    last = TEXT.index(SECRET) + len(SECRET) - 1  # predicts 暴 from 龙卷风
    q = teacher.dense(torch.tensor([last]))[0]
    seen_everything = KneserNeyLM(4).fit(TEXT, vocab).distribution(TEXT[:last])
    target = vocab.char_to_idx["暴"]
    assert seen_everything[target] > 0.2  # an n-gram fitted on all the text recalls it
    # The teacher, fitted without this fold, has never seen 暴 at all: it gets only the
    # unigram level's share for an unseen character, no higher-order mass.
    kept = teacher.ids[last][teacher.values[last] > 0]
    assert target not in kept.tolist()
    assert q[target] < 0.05


def test_cross_entropy_equals_the_dense_formula() -> None:
    vocab = Vocab.from_text(TEXT)
    teacher = NgramTeacher(TEXT, vocab, order=3, folds=4, top=8)
    positions = torch.arange(1, len(TEXT), 7)
    log_probs = torch.log_softmax(torch.randn(len(positions), len(vocab)), dim=-1)
    q = teacher.dense(positions)
    torch.testing.assert_close(q.sum(1), torch.ones(len(positions)))
    torch.testing.assert_close(teacher.cross_entropy(log_probs, positions), -(q * log_probs).sum(1))


@pytest.mark.parametrize("order", [1, -2, 17])
def test_bad_teacher_order_is_a_clear_error(small_corpus, tmp_path, order: int) -> None:
    with pytest.raises(CharLSTMError, match="ngram_teacher must be an n-gram order from 2 to 16"):
        train(small_corpus, tmp_path / "run", train_options={"ngram_teacher": order})
    with pytest.raises(CharLSTMError, match="teacher_weight"):
        train(small_corpus, tmp_path / "run", train_options={"teacher_weight": 1.5})
    with pytest.raises(CharLSTMError, match="teacher_folds must be at least 2"):
        train(small_corpus, tmp_path / "run", train_options={"teacher_folds": 1})


def test_teacher_changes_training_and_resume_stays_exact(small_corpus, tmp_path) -> None:
    options = {"ngram_teacher": 4, "teacher_weight": 0.5, "teacher_folds": 3, "epochs": 4}
    _, plain = train(small_corpus, tmp_path / "plain", train_options={"epochs": 4})
    _, straight = train(small_corpus, tmp_path / "a", train_options=options)
    assert losses(straight) != losses(plain)  # the option is used, not parsed and ignored
    config = json.loads((tmp_path / "a" / "config.json").read_text(encoding="utf-8"))
    assert config["train"]["ngram_teacher"] == 4 and config["train"]["teacher_folds"] == 3
    train(small_corpus, tmp_path / "b", train_options={**options, "epochs": 2})
    _, resumed = train(small_corpus, None, train_options={"epochs": 4}, resume=tmp_path / "b")
    assert losses(resumed) == losses(straight)[2:]


@pytest.mark.slow
def test_teacher_improves_held_out_loss_on_jaychou(jaychou, tmp_path) -> None:
    """The reason the option exists: on real lyrics the n-gram's knowledge carries over.

    A small tied LSTM, three epochs, with and without the 6-gram teacher: the same seed,
    data order and dropout masks, so the teacher's targets are the only difference.
    """
    text = read_text(jaychou)
    assert split_point(len(text), 0.1) == 56953
    model = {**SMALL_MODEL, "hidden_size": 128, "tie_weights": True, "dropout": 0.3}
    options = {**SMALL_TRAIN, "batch_size": 32, "num_steps": 35, "epochs": 3, "lr": 5e-3}
    held_out = {}
    for name, extra in (("plain", {}), ("teacher", {"ngram_teacher": 6, "teacher_weight": 0.5})):
        trainer = prepare_training(
            jaychou,
            model,
            {**options, **extra},
            {},
            run_dir=tmp_path / name,
            log=lambda _: None,
            progress_bar=False,
        )
        held_out[name] = min(m.val_loss for m in trainer.fit().metrics)
    assert held_out["teacher"] < held_out["plain"] - 0.05
