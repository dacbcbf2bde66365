"""charlstm.ngram.mixture: the LSTM interpolated with a Kneser-Ney n-gram (``--ngram-mix``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charlstm.api import load_model
from charlstm.config import ModelConfig, TrainConfig
from charlstm.data.corpus import Vocab, read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.eval.scoring import score, score_adaptive
from charlstm.generation.sample import generate
from charlstm.generation.settings import CacheConfig, DynamicConfig, SamplingConfig
from charlstm.model import build_model
from charlstm.ngram.kneser_ney import KneserNeyLM
from charlstm.ngram.mixture import DISCOUNT, NgramMixture
from charlstm.storage import checkpoint as ckpt
from charlstm.training.start import prepare_training
from tests.helpers import save_known_model

TEXT = "我们说好不分开\n分开以后的雨天\n我们说好的雨天\n不分开的夜晚\n" * 3
VOCAB = Vocab.from_text(TEXT + "星")  # one character the n-gram never saw


@pytest.fixture
def mixture() -> NgramMixture:
    return NgramMixture(TEXT, VOCAB, order=4, weight=0.3)


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=len(VOCAB), hidden_size=16, dropout=0.0)
    return build_model(config).eval()


def reference_log_probs(model, mixture, text: str, start: int) -> list[float]:
    """``log((1 - w) p_LSTM + w p_KN)`` of each ``text[i]``, ``i >= start``, one at a time."""
    ngram = KneserNeyLM(mixture.order, DISCOUNT).fit(mixture.text, VOCAB)
    w = mixture.weight
    with torch.no_grad():
        logits, _ = model(VOCAB.encode(text[:-1]).view(-1, 1))
    probs = torch.softmax(logits[:, 0].double(), dim=-1)
    out = []
    for i in range(start, len(text)):
        p_lstm = probs[i - 1, VOCAB.char_to_idx[text[i]]].item()
        p_kn = math.exp(ngram.log_prob(text[max(0, i - mixture.order + 1) : i], text[i]))
        out.append(math.log((1 - w) * p_lstm + w * p_kn))
    return out


def test_whole_distributions_match_the_one_character_reference(mixture):
    ngram = mixture.ngram
    contexts = ["", "分", "说好", "我们说", "开\n分", "星星星", "好的雨"]
    dense = ngram.distributions(contexts)
    for row, context in zip(dense, contexts, strict=True):
        np.testing.assert_allclose(row, ngram.distribution(context), rtol=1e-12)
        assert row.sum() == pytest.approx(1.0)
    assert dense[:, VOCAB.char_to_idx["星"]].min() > 0  # unseen, yet possible


def test_scoring_interpolates_the_two_models_character_by_character(model, mixture):
    text = "不分开的雨天\n我们说好星不分开"
    context, targets = VOCAB.encode(text[:1]), VOCAB.encode(text[1:])
    result = score(model, targets, context, mixture=mixture)
    expected = reference_log_probs(model, mixture, text, 1)
    np.testing.assert_allclose(-result.per_char.numpy(), expected, rtol=1e-5)
    assert result.loss == pytest.approx(-sum(expected) / len(expected), rel=1e-5)
    # The adaptive path without adaptation scores the same distribution.
    same = score_adaptive(model, targets, context, mixture=mixture)
    assert same.loss == pytest.approx(result.loss, rel=1e-5)
    alone = score(model, targets, context)
    assert alone.loss != pytest.approx(result.loss, rel=1e-3)


def test_the_ngram_is_mixed_in_before_the_cache(model, mixture):
    text = TEXT[:40]
    context, targets = VOCAB.encode(text[:1]), VOCAB.encode(text[1:])
    cache = CacheConfig(window=50, flatness=1.0, mix=0.4)
    mixed = score_adaptive(model, targets, context, cache=cache, mixture=mixture)
    # Cache weight 0 leaves exactly the interpolation.
    none = score_adaptive(model, targets, context, cache=CacheConfig(mix=0.0), mixture=mixture)
    assert none.loss == pytest.approx(score(model, targets, context, mixture=mixture).loss)
    assert mixed.loss != pytest.approx(none.loss, rel=1e-3)
    # Dynamic evaluation at learning rate 0 changes nothing either.
    frozen = score_adaptive(model, targets, context, dynamic=DynamicConfig(lr=0.0), mixture=mixture)
    assert frozen.loss == pytest.approx(none.loss, rel=1e-5)


def test_generation_draws_from_the_interpolated_distribution(model, mixture):
    """Greedy decoding with the mixture picks the arg max of (1 - w) p_LSTM + w p_KN."""
    prefix = "我们说"
    texts = generate(model, VOCAB, [prefix], 12, SamplingConfig(greedy=True), mixture=mixture)
    written = prefix
    for _ in range(12):
        with torch.no_grad():
            logits, _ = model(VOCAB.encode(written).view(-1, 1))
        p = (1 - mixture.weight) * torch.softmax(logits[-1, 0].double(), -1)
        p += mixture.weight * torch.from_numpy(mixture.ngram.distributions([written])[0])
        written += VOCAB.idx_to_char[int(p.argmax())]
    assert prefix + texts[0][0] == written
    alone = generate(model, VOCAB, [prefix], 12, SamplingConfig(greedy=True))
    assert alone != texts  # the n-gram changes what is written


def test_bad_mixture_settings_are_refused():
    with pytest.raises(CharLSTMError, match="ngram_mix must be an n-gram order"):
        TrainConfig(ngram_mix=1)
    for weight in (0.0, 1.0, float("nan")):
        with pytest.raises(CharLSTMError, match="mix_weight must be in"):
            TrainConfig(ngram_mix=3, mix_weight=weight)


def test_a_run_keeps_its_ngram_and_scores_with_it(tmp_path, small_corpus):
    run = tmp_path / "run"
    trainer = prepare_training(
        small_corpus,
        {"hidden_size": 32},
        {"epochs": 2, "sample_every": 1, "ngram_mix": 3, "mix_weight": 0.4},
        {},
        run_dir=run,
        log=lambda line: None,
        progress_bar=False,
    )
    result = trainer.fit()
    text = read_text(small_corpus)
    cut = split_point(len(text), 0.1)
    checkpoint = ckpt.load(run / "best.pt")
    assert checkpoint.ngram_text == text[:cut]  # the training text, never the held-out part
    loaded = load_model(run)
    assert loaded.describe() == "LSTM + Kneser-Ney 3-gram at weight 0.4"
    report = loaded.evaluate_file(small_corpus)
    best = min(m.val_loss for m in result.metrics)
    assert report["loss"] == pytest.approx(best, rel=1e-6)  # what training reported
    lstm = loaded.lstm_only().evaluate_file(small_corpus)
    assert lstm["model"] == "LSTM" and lstm["loss"] != pytest.approx(report["loss"], rel=1e-3)


def test_a_checkpoint_without_its_ngram_text_is_malformed(tmp_path):
    path = save_known_model(
        tmp_path / "best.pt", {"a": 0.5, "b": 0.5}, train_config=TrainConfig(ngram_mix=2)
    )
    with pytest.raises(CharLSTMError, match="n-gram's text is missing"):
        ckpt.load(path)


def test_real_lyrics_target_probabilities_are_the_ngram_baselines(jaychou):
    """On jaychou the mixture's n-gram scores the held-out part exactly as the baseline."""
    text = read_text(jaychou)
    vocab = Vocab.from_text(text)
    cut = split_point(len(text), 0.1)
    mixture = NgramMixture(text[:cut], vocab, order=6, weight=0.25)
    indices = vocab.encode(text)
    log_q = mixture.target_log_probs(indices[cut:], indices[cut - 256 : cut])
    nll, count = KneserNeyLM(6).fit(text[:cut], vocab).score(text[cut:], history=text[:cut])
    assert count == len(log_q)
    assert -log_q.sum().item() == pytest.approx(nll, rel=1e-9)
    assert math.exp(nll / count) == pytest.approx(207.8, abs=0.1)  # ../shared/data/README.md
