"""Tests for charlstm.ngram.kneser_ney (interpolated Kneser-Ney) and scripts/ngram_baseline.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from charlstm.data.corpus import Vocab, read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.ngram.kneser_ney import (
    KneserNeyLM,
    choose_discount,
    cross_fitted_loss,
    evaluate_ngram,
)
from tests.helpers import DEMO_CORPUS, REPO_ROOT, shared_file

TEXT = "abracadabra, cadabra! abra kadabra.\nabracadabra arbaca.\n" * 3
VOCAB = Vocab.from_text(TEXT + "xyz")  # x, y, z are in the vocabulary but never in TEXT
D = 0.75


@pytest.mark.parametrize("order", [1, 2, 3, 5])
@pytest.mark.parametrize("context", ["", "a", "abra", "cad", "xyzq", "zz a", "kadab"])
def test_distribution_sums_to_one(order: int, context: str) -> None:
    model = KneserNeyLM(order, D).fit(TEXT, VOCAB)
    probs = model.distribution(context)  # (V,)
    assert probs.shape == (len(VOCAB),)
    assert np.all(probs > 0)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_order_one_by_hand() -> None:
    """Order 1: raw counts with discount, mixed with the uniform distribution."""
    text = "abracadabra"  # a x5, b x2, r x2, c, d: 11 characters, 5 distinct
    vocab = Vocab.from_text(text + "z")  # V = 6
    model = KneserNeyLM(1, D).fit(text, vocab)
    gamma = D * 5 / 11
    assert math.exp(model.log_prob("", "a")) == pytest.approx((5 - D) / 11 + gamma / 6)
    assert math.exp(model.log_prob("", "z")) == pytest.approx(gamma / 6)


def test_order_two_by_hand() -> None:
    """Order 2: raw bigram counts above continuation unigram counts above uniform."""
    text = "abracadabra"
    vocab = Vocab.from_text(text + "z")  # V = 6
    model = KneserNeyLM(2, D).fit(text, vocab)
    # Distinct bigrams: ab br ra ac ca ad da -> N1+(••) = 7; 'b' has one left
    # extension (ab); 5 distinct characters have a left extension.
    p_uni_b = (1 - D) / 7 + D * 5 / 7 / 6
    # After 'a': ab x2, ac, ad -> c(a•) = 4, N1+(a•) = 3.
    p_b_after_a = (2 - D) / 4 + D * 3 / 4 * p_uni_b
    assert math.exp(model.log_prob("a", "b")) == pytest.approx(p_b_after_a)
    # 'z' never follows anything: an unseen context backs off fully to the unigram level.
    assert math.exp(model.log_prob("z", "b")) == pytest.approx(p_uni_b)


@pytest.mark.parametrize("order", [1, 3, 5])
@pytest.mark.parametrize("context", ["", "abra", "cad", "zzz"])
def test_unseen_char_gets_small_positive_probability(order: int, context: str) -> None:
    model = KneserNeyLM(order, D).fit(TEXT, VOCAB)
    unseen = math.exp(model.log_prob(context, "x"))
    seen = [math.exp(model.log_prob(context, ch)) for ch in sorted(set(TEXT))]
    assert 0.0 < unseen < min(seen)


def test_score_equals_sum_of_log_probs_and_uses_history() -> None:
    order = 4
    model = KneserNeyLM(order, D).fit(TEXT, VOCAB)
    history, text = "abra ", "cadabra xyz"
    nll, count = model.score(text, history=history)
    full = history + text
    expected = -sum(model.log_prob(full[: len(history) + i], ch) for i, ch in enumerate(text))
    assert count == len(text)
    assert nll == pytest.approx(expected)
    # Without history the first characters have shorter contexts: a different score.
    assert model.score(text)[0] != pytest.approx(nll)


@pytest.mark.parametrize("order", [1, 2, 4])
def test_sparse_distributions_are_the_full_distributions(order: int) -> None:
    """``base * P_0 + sparse additions`` is exactly :meth:`distribution`, position by position."""
    model = KneserNeyLM(order, D).fit(TEXT, VOCAB)
    text = "xyz abracadabra kadabra zz"  # unseen characters and contexts included
    base, ids, values = model.sparse_distributions(text, 0, len(text), top=len(VOCAB))
    unigram = model.base_distribution()
    for i in range(len(text)):
        dense = base[i] * unigram
        np.add.at(dense, ids[i], values[i])
        np.testing.assert_allclose(dense, model.distribution(text[:i]), rtol=0, atol=1e-12)


def test_sparse_distributions_keep_the_top_entries_and_sum_to_one() -> None:
    model = KneserNeyLM(3, D).fit(TEXT, VOCAB)
    text = "abracadabra"
    base, ids, values = model.sparse_distributions(text, 1, len(text), top=2)
    _, all_ids, all_values = model.sparse_distributions(text, 1, len(text), top=len(VOCAB))
    unigram = model.base_distribution()
    assert ids.shape == values.shape == (len(text) - 1, 2)
    for row in range(len(text) - 1):
        dense = base[row] * unigram
        np.add.at(dense, ids[row], values[row])
        assert dense.sum() == pytest.approx(1.0, abs=1e-12)
        # the two kept are the two largest additions; the dropped ones went to the base
        largest = np.sort(all_values[row])[-2:]
        np.testing.assert_allclose(np.sort(values[row]), largest)
        assert base[row] == pytest.approx(1.0 - largest.sum())
        assert set(ids[row][values[row] > 0]) <= set(all_ids[row][all_values[row] > 0])


def test_higher_order_fits_training_text_better() -> None:
    losses = {}
    for order in (1, 3, 5):
        nll, count = KneserNeyLM(order, D).fit(TEXT, VOCAB).score(TEXT)
        losses[order] = nll / count
    assert losses[5] < losses[3] < losses[1]


def test_char_outside_vocab_raises() -> None:
    model = KneserNeyLM(3, D).fit(TEXT, VOCAB)
    with pytest.raises(CharLSTMError, match="not in the vocabulary"):
        model.score("abra§")
    with pytest.raises(CharLSTMError, match="character not in the vocabulary: '§'"):
        model.log_prob("abr", "§")
    with pytest.raises(CharLSTMError, match="training text has characters not in the vocabulary"):
        KneserNeyLM(3, D).fit("abc§", VOCAB)


@pytest.mark.parametrize(
    "order, discount, message",
    [
        (0, 0.75, "order must be a positive integer, not 0"),
        (3, 0.0, r"discount must be in \(0, 1\], not 0.0"),
        (3, 1.5, r"discount must be in \(0, 1\], not 1.5"),
    ],
)
def test_bad_settings_raise(order: int, discount: float, message: str) -> None:
    with pytest.raises(CharLSTMError, match=message):
        KneserNeyLM(order, discount)


def test_jaychou_order6_matches_reference() -> None:
    text = read_text(shared_file("jaychou_lyrics.txt.zip"))
    result = evaluate_ngram(text, order=6)
    assert result["vocab_size"] == 2583
    assert result["val_chars"] == 6329
    assert result["unseen_chars"] == 169
    assert 195 <= result["perplexity"] <= 222  # reference: 208 (loss 5.34)
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2))


def test_cross_fitted_loss_scores_each_fold_with_a_model_fitted_without_it() -> None:
    text = TEXT * 2  # 336 characters: folds of 112
    loss = cross_fitted_loss(text, VOCAB, order=3, folds=3)
    edges = [0, 112, 224, 336]
    for discount in (0.5, 0.9):
        nll = 0.0
        for start, stop in pairwise(edges):
            model = KneserNeyLM(3, discount).fit(text[:start] + text[stop:], VOCAB)
            nll += model.score(text[start:stop], history=text[:start])[0]
        assert loss(discount) == pytest.approx(nll / len(text))


def test_chosen_discount_minimises_the_cross_fitted_loss() -> None:
    text = read_text(DEMO_CORPUS)
    vocab = Vocab.from_text(text)
    chosen = choose_discount(text, vocab, order=4)
    loss = cross_fitted_loss(text, vocab, order=4)
    grid = [round(0.05 * i, 2) for i in range(1, 21)]
    assert loss(chosen) <= min(loss(d) for d in grid) + 1e-9
    assert 0.05 < chosen <= 1.0


def test_jaychou_chosen_discount_beats_the_default_on_held_out_text() -> None:
    """Chosen on the training part alone, the discount still scores the unseen songs better."""
    text = read_text(shared_file("jaychou_lyrics.txt.zip"))
    default = evaluate_ngram(text, order=6)
    chosen = evaluate_ngram(text, order=6, discount=None)
    assert chosen["discount_chosen"] and not default["discount_chosen"]
    assert 0.8 < chosen["discount"] < 0.97  # measured: 0.892
    assert chosen["perplexity"] < 0.97 * default["perplexity"]  # measured: 197.6 vs 207.8


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/ngram_baseline.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_json(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 5, encoding="utf-8")
    proc = run_script(str(corpus), "--order", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    expected = evaluate_ngram(TEXT * 5, order=3)
    assert result["order"] == 3
    assert result["val_chars"] == expected["val_chars"]
    assert result["loss"] == pytest.approx(expected["loss"])
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_cli_missing_file_is_one_line_error(tmp_path: Path) -> None:
    proc = run_script(str(tmp_path / "missing.zip"), "--order", "3")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_auto_discount_and_bad_discount(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 5, encoding="utf-8")
    proc = run_script(str(corpus), "--order", "3", "--discount", "auto", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    train = (TEXT * 5)[: split_point(len(TEXT * 5), 0.1)]
    assert result["discount_chosen"] is True
    assert result["discount"] == choose_discount(train, Vocab.from_text(TEXT * 5), 3)
    bad = run_script(str(corpus), "--order", "3", "--discount", "half")
    assert bad.returncode == 2
    assert "not a number or 'auto'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_fit_refuses_a_text_over_the_limit_on_one_line(monkeypatch):
    import charlstm.ngram.kneser_ney as ngram_module

    monkeypatch.setattr(ngram_module, "MAX_NGRAM_CHARS", 10)
    with pytest.raises(CharLSTMError, match="limited to 10 training characters") as info:
        ngram_module.check_ngram_chars(11, ngram_module.MAX_NGRAM_CHARS)
    assert "--max-chars" in str(info.value) and "\n" not in str(info.value)
    ngram_module.check_ngram_chars(10, ngram_module.MAX_NGRAM_CHARS)


def direct_kneser_ney(text: str, vocab: Vocab, order: int, context: str, char: str) -> float:
    """``P(char | context)`` straight from the definition, counting strings of ``text``."""
    n = order
    grams = {m: [text[i : i + m] for i in range(len(text) - m + 1)] for m in range(1, n + 1)}

    def a(k: int, gram: str) -> int:  # raw count at the top level, continuation count below
        if k == n - 1:
            return grams[n].count(gram)
        return len({g[0] for g in set(grams[k + 2]) if g[1:] == gram})

    prob = 1.0 / len(vocab)
    for k in range(min(len(context), n - 1) + 1):
        h = context[len(context) - k :]
        followers = {w: a(k, h + w) for w in vocab.idx_to_char}
        total = sum(followers.values())
        if total:
            distinct = sum(1 for count in followers.values() if count)
            prob = (max(followers[char] - D, 0.0) + D * distinct * prob) / total
    return prob


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_counts_in_arrays_give_the_definition_s_probabilities(order: int) -> None:
    """The NumPy counts give exactly the probabilities of counting strings directly."""
    text = "abracadabra, cadabra! abra kadabra."
    model = KneserNeyLM(order, D).fit(text, VOCAB)
    for context in ["", "a", "abr", "zz a", "q", "dabr"]:
        expected = [direct_kneser_ney(text, VOCAB, order, context, ch) for ch in VOCAB.idx_to_char]
        np.testing.assert_allclose(model.distribution(context), expected, rtol=1e-13)
        np.testing.assert_allclose(model.distributions([context])[0], expected, rtol=1e-13)
        for ch in "abz":
            assert math.exp(model.log_prob(context, ch)) == pytest.approx(
                expected[VOCAB.char_to_idx[ch]], rel=1e-13
            )
