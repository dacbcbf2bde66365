"""charlstm.eval.scoring: held-out scoring, continuous cache and dynamic evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.errors import CharLSTMError
from charlstm.eval.scoring import score, score_adaptive, score_heldout
from charlstm.fields import SettingError
from charlstm.generation.adaptation import StreamCache
from charlstm.generation.settings import CacheConfig, DynamicConfig
from charlstm.model import build_model
from tests.helpers import shown

V = 30


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=V, hidden_size=16, dropout=0.0)).eval()


def test_every_character_scored_once_whatever_the_columns(model):
    targets = torch.randint(0, V, (500,))
    context = torch.randint(0, V, (20,))
    one = score(model, targets, context, columns=1)
    assert one.chars == 500
    with torch.no_grad():  # the same figure, computed directly as one stream
        _, state = model(context[:-1].view(-1, 1))
        logits, _ = model(torch.cat([context[-1:], targets[:-1]]).view(-1, 1), state)
        direct = torch.nn.functional.cross_entropy(logits[:, 0], targets).item()
    assert one.loss == pytest.approx(direct, rel=1e-5)
    # Seven columns of 72 (the last one short): the first follows the context, the others
    # restart from a zero state; still every target once.
    many = score(model, targets, context, columns=7)
    inputs = torch.cat([context[-1:], targets[:-1]])
    total = 0.0
    with torch.no_grad():
        for start in range(0, 500, 72):
            logits, _ = model(inputs[start : start + 72].view(-1, 1), state if start == 0 else None)
            total += torch.nn.functional.cross_entropy(
                logits[:, 0], targets[start : start + 72], reduction="sum"
            ).item()
    assert many.chars == 500
    assert many.loss == pytest.approx(total / 500, rel=1e-5)
    assert many.loss != pytest.approx(one.loss, rel=1e-6)  # the restarts do change it
    assert score_adaptive(model, targets, context).loss == pytest.approx(one.loss, rel=1e-5)


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_scoring_in_small_chunks_changes_nothing(softmax, monkeypatch):
    # A big vocabulary is scored a few steps at a time (evaluate.CHUNK_VALUES bounds the
    # logits held at once); shrinking the bound to 3 steps of 5 columns of 30 characters
    # must give the same loss for every character as the whole text in one chunk.
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=V, hidden_size=16, dropout=0.0, softmax=softmax)
    model = build_model(config).eval()
    targets = torch.randint(0, V, (400,))
    context = torch.randint(0, V, (20,))
    whole = score(model, targets, context, columns=5)
    monkeypatch.setattr("charlstm.eval.scoring.CHUNK_VALUES", 3 * 5 * V)
    chunked = score(model, targets, context, columns=5)
    assert chunked.chars == whole.chars == 400
    torch.testing.assert_close(chunked.per_char, whole.per_char, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and the target's log-probability in the whole distribution
        inputs = torch.cat([context[-1:], targets[:-1]])
        _, state = model.features(context[:-1].view(-1, 1), None)
        log_p, _ = model.log_probs(inputs[:80].view(-1, 1), state)  # the first column
    expected = -log_p[:, 0].gather(1, targets[:80, None])[:, 0].double()
    torch.testing.assert_close(chunked.per_char[:80], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"cache": CacheConfig()},
        {"dynamic": DynamicConfig()},
        {"cache": CacheConfig(), "dynamic": DynamicConfig()},
    ],
)
def test_adaptation_is_causal(model, options):
    """A character's score depends only on the characters before it."""
    a = torch.randint(0, V, (120,))
    context = torch.randint(0, V, (10,))
    first = score_adaptive(model, torch.cat([a, torch.randint(0, V, (80,))]), context, **options)
    second = score_adaptive(model, torch.cat([a, torch.randint(0, V, (80,))]), context, **options)
    torch.testing.assert_close(first.per_char[:120], second.per_char[:120])
    assert not torch.equal(first.per_char[120:], second.per_char[120:])


def test_cache_and_dynamic_evaluation_exploit_a_repeated_chorus(model):
    chorus = torch.randint(0, V, (150,))
    text = torch.cat([chorus, chorus, chorus])
    context = torch.randint(0, V, (5,))
    plain = score_adaptive(model, text, context)
    # an untrained model: its states are rough keys, so match them sharply
    cached = score_adaptive(model, text, context, cache=CacheConfig(window=500, flatness=50.0))
    dynamic = score_adaptive(model, text, context, dynamic=DynamicConfig(lr=0.5, segment=25))
    # the first pass is new text; the repeats are predictable from what was just read
    assert cached.per_char[150:].mean() < plain.per_char[150:].mean() - 0.5  # nats per char
    assert dynamic.per_char[300:].mean() < plain.per_char[300:].mean()


def test_dynamic_evaluation_leaves_the_model_unchanged(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score_adaptive(
        model, torch.randint(0, V, (200,)), torch.randint(0, V, (3,)), dynamic=DynamicConfig(lr=1.0)
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_zero_mix_and_zero_learning_rate_change_nothing(model):
    targets, context = torch.randint(0, V, (160,)), torch.randint(0, V, (4,))
    plain = score_adaptive(model, targets, context).per_char
    for options in (
        {"cache": CacheConfig(mix=0.0)},
        {"dynamic": DynamicConfig(lr=0.0, segment=20)},
        {"cache": CacheConfig(mix=0.0), "dynamic": DynamicConfig(lr=0.0, segment=20)},
    ):
        torch.testing.assert_close(
            score_adaptive(model, targets, context, **options).per_char, plain
        )


def test_stream_cache_votes_for_what_followed_the_most_similar_state():
    """Two streams, hand-built hidden states: the mass goes where the query points."""
    config = CacheConfig(window=3, flatness=20.0, mix=0.5)
    cache = StreamCache(config, batch=2, hidden_size=2, device=torch.device("cpu"))
    east, north = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # stream 0 read (east -> 1), (north -> 2); stream 1 only (east -> 3)
    cache.fill(torch.tensor([0]), torch.stack([east, north])[:, None], torch.tensor([[1], [2]]))
    cache.fill(torch.tensor([1]), east[None, None], torch.tensor([[3]]))
    log_p = torch.full((2, 4), 0.25).log()  # the model: uniform over 4 characters
    p = cache.mix(log_p, torch.stack([north, north])).exp()
    near = 1 / (1 + math.exp(-20.0))  # softmax of scores 20 (north) and 0 (east)
    expected = torch.tensor(
        [
            [0.125, 0.125 + 0.5 * (1 - near), 0.125 + 0.5 * near, 0.125],
            [0.125, 0.125, 0.125, 0.625],  # one pair: all its votes go to 3
        ]
    )
    torch.testing.assert_close(p, expected)
    assert p[0].argmax() == 2 and p[1].argmax() == 3
    # a ring of 3: after three more pairs stream 0 has forgotten (east -> 1), (north -> 2)
    for _ in range(3):
        cache.add(torch.stack([east, east]), torch.tensor([0, 0]))
    p = cache.mix(log_p, torch.stack([north, north])).exp()
    torch.testing.assert_close(p[:, 0], torch.tensor([0.625, 0.625]))
    empty = StreamCache(config, batch=1, hidden_size=2, device=torch.device("cpu"))
    torch.testing.assert_close(empty.mix(log_p[:1], north[None]), log_p[:1])  # nothing yet


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CacheConfig(mix=1.0), "--cache-mix must be in [0, 1)"),
        (lambda: CacheConfig(mix=-0.1), "--cache-mix"),
        (lambda: CacheConfig(window=0), "--cache-window"),
        (lambda: CacheConfig(flatness=float("nan")), "--cache-flatness"),
        (lambda: DynamicConfig(lr=-0.1), "--dynamic-lr must be >= 0"),
        (lambda: DynamicConfig(lr=float("inf")), "--dynamic-lr"),
        (lambda: DynamicConfig(segment=0), "--dynamic-segment"),
    ],
)
def test_bad_adaptation_settings(make, message):
    with pytest.raises(SettingError) as err:
        make()
    assert message in shown(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["scratch", "torch"])
def test_adaptation_on_cuda_equals_cpu(backend):
    """cuDNN's LSTM (torch backend) learns during dynamic evaluation as the CPU does."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=V, hidden_size=16, dropout=0.0, backend=backend)
    cpu = build_model(config).double().eval()
    gpu = build_model(config).double().cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    targets, context = torch.randint(0, V, (200,)), torch.randint(0, V, (5,))
    options = {"cache": CacheConfig(), "dynamic": DynamicConfig(lr=0.5, segment=25)}
    expected = score_adaptive(cpu, targets, context, **options)
    got = score_adaptive(gpu, targets, context, **options)
    torch.testing.assert_close(got.per_char.cpu(), expected.per_char, rtol=1e-5, atol=1e-5)


def test_score_adaptive_honours_its_segment_and_refuses_one_dynamic_contradicts(model):
    targets, context = torch.randint(0, V, (120,)), torch.randint(0, V, (5,))
    cache = CacheConfig(window=40, flatness=2.0)
    whole = score_adaptive(model, targets, context, cache=cache)
    short = score_adaptive(model, targets, context, cache=cache, segment=7)  # only speed differs
    torch.testing.assert_close(short.per_char, whole.per_char, rtol=1e-5, atol=1e-6)
    dynamic = DynamicConfig(lr=0.5, segment=10)
    same = score_adaptive(model, targets, context, dynamic=dynamic, segment=10)
    assert same.loss == score_adaptive(model, targets, context, dynamic=dynamic).loss
    with pytest.raises(CharLSTMError, match=r"dynamic\.segment \(10\), not 7"):
        score_adaptive(model, targets, context, dynamic=dynamic, segment=7)
    with pytest.raises(CharLSTMError, match="segment must be positive"):
        score_adaptive(model, targets, context, segment=0)


def test_score_heldout_warms_on_the_last_256_training_characters(model):
    indices = torch.randint(0, V, (900,))
    cut = 600
    held = score_heldout(model, indices[:cut], indices[cut:])
    assert held.chars == 300
    direct = score(model, indices[cut:], indices[cut - 256 : cut])
    assert held.loss == direct.loss
    first = score_heldout(model, indices[:cut], indices[cut:], max_chars=50)
    assert first.chars == 50
    assert first.loss == score(model, indices[cut : cut + 50], indices[cut - 256 : cut]).loss
    alone = score_heldout(model, indices[:0], indices)  # no training part: after its first
    assert alone.chars == 899 and alone.loss == score(model, indices[1:], indices[:1]).loss
    cache = CacheConfig()
    adaptive = score_heldout(model, indices[:cut], indices[cut:], cache=cache)
    expected = score_adaptive(model, indices[cut:], indices[cut - 256 : cut], cache=cache)
    assert adaptive.loss == expected.loss
