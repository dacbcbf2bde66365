"""Generation: seeds, the decoding rules on a model with a known distribution, stopping,
batched against sequential decoding, the one-step path against the model's forward, and
adaptive generation (cache, dynamic evaluation) against the scoring it mirrors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.data.corpus import Vocab
from charlstm.errors import CharLSTMError
from charlstm.eval.scoring import score_adaptive
from charlstm.fields import SettingError
from charlstm.generation.decoding import draw
from charlstm.generation.sample import generate
from charlstm.generation.settings import CacheConfig, DynamicConfig, SamplingConfig, parse_char
from charlstm.generation.streams import open_streams
from charlstm.model import CharLSTM, build_model
from tests.helpers import shown

LYRICS = "我们说好不分开\n分开以后的雨天\n窗外的风吹过\n你说的话还在耳边\n"


def known_model(probs: dict[str, float], backend: str = "scratch") -> tuple[CharLSTM, Vocab]:
    """A model whose next-character distribution is ``probs`` whatever it has read:
    output weights zero, output bias the log-probabilities."""
    vocab = Vocab(list(probs))
    model = build_model(
        ModelConfig(vocab_size=len(vocab), hidden_size=4, dropout=0.0, backend=backend)
    )
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(list(probs.values())).log())
    return model.eval(), vocab


def random_model(**options) -> tuple[CharLSTM, Vocab]:
    torch.manual_seed(0)
    vocab = Vocab.from_text(LYRICS)
    config = ModelConfig(vocab_size=len(vocab), hidden_size=24, **options)
    return build_model(config).eval(), vocab


def sample_counts(model, vocab, config, draws=4000, seed=0) -> Counter:
    texts = generate(model, vocab, ["a"], 20, config, num_samples=draws // 20, seed=seed)
    return Counter("".join(texts[0]))


SIX = {"a": 0.3, "b": 0.25, "c": 0.2, "d": 0.12, "e": 0.08, "f": 0.05}


def test_same_seed_same_text_other_seed_other_text():
    model, vocab = random_model()
    config = SamplingConfig(temperature=0.9, top_k=10, top_p=0.95, repetition_penalty=1.5)
    runs = [
        generate(model, vocab, ["分开", "我"], 40, config, num_samples=3, seed=s) for s in (5, 5, 6)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    torch.manual_seed(11)
    first = generate(model, vocab, ["分开"], 40)
    torch.manual_seed(11)
    assert generate(model, vocab, ["分开"], 40) == first  # no seed: torch's global generator


def test_samples_follow_the_distribution():
    model, vocab = known_model(SIX)
    counts = sample_counts(model, vocab, SamplingConfig())
    total = sum(counts.values())
    for ch, p in SIX.items():
        assert counts[ch] / total == pytest.approx(p, abs=0.025)


def test_temperature_sharpens_the_distribution():
    model, vocab = known_model(SIX)
    counts = sample_counts(model, vocab, SamplingConfig(temperature=0.5))
    squared = {ch: p**2 for ch, p in SIX.items()}  # p^(1/T), renormalised
    for ch, weight in squared.items():
        expected = weight / sum(squared.values())
        assert counts[ch] / sum(counts.values()) == pytest.approx(expected, abs=0.025)


@pytest.mark.parametrize(
    ("config", "allowed"),
    [
        (SamplingConfig(top_k=1), "a"),
        (SamplingConfig(top_k=2), "ab"),
        (SamplingConfig(top_k=4, temperature=3.0), "abcd"),
        (SamplingConfig(top_p=0.5), "ab"),  # mass before c is 0.55 >= 0.5
        (SamplingConfig(top_p=0.7), "abc"),  # mass before d is 0.75
        (SamplingConfig(top_p=0.9, temperature=0.7), "abcd"),  # p^(1/0.7): d needed for 0.9
        (SamplingConfig(top_k=3, top_p=0.5), "ab"),
    ],
)
def test_top_k_and_top_p_never_leave_the_allowed_set(config, allowed):
    for backend in ("scratch", "torch"):
        model, vocab = known_model(SIX, backend)
        counts = sample_counts(model, vocab, config, draws=2000)
        assert set(counts) == set(allowed)  # nothing outside, and every allowed one occurs


def test_draw_never_picks_a_zero_probability_entry():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]).repeat(5000, 1)
    picked = draw(probs, torch.Generator().manual_seed(0))
    assert set(picked[0::2].tolist()) == {1, 3}
    assert set(picked[1::2].tolist()) == {4}


@pytest.mark.parametrize(
    ("penalty", "window", "expected"),
    [
        (1.0, 32, "aaaaaaaa"),  # off (a window alone is refused: nothing to apply it to)
        (100.0, 3, "abcdabcd"),  # every character seen in the last 3 is out of the running
        (100.0, 1, "abababab"),
        (1.3, 1, "aaaaaaaa"),  # 0.4 / 1.3 = 0.308 still beats b's 0.3
        (1.4, 1, "abababab"),  # 0.4 / 1.4 = 0.286 does not
    ],
)
def test_repetition_penalty_divides_the_probability_of_recent_characters(penalty, window, expected):
    model, vocab = known_model({"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1})
    config = SamplingConfig(greedy=True, repetition_penalty=penalty, penalty_window=window)
    assert generate(model, vocab, ["d"], 8, config) == [[expected]]


def test_stop_at_ends_each_sample_with_its_first_stop_character():
    model, vocab = known_model({"a": 0.5, "b": 0.3, "\n": 0.2})
    texts = generate(model, vocab, ["a"], 30, num_samples=60, seed=1, stop_at="\n")[0]
    for text in texts:
        assert text.count("\n") <= 1
        assert text.endswith("\n") or len(text) == 30
    assert sum(text.endswith("\n") for text in texts) > 50  # most stop early
    assert len({len(text) for text in texts}) > 5  # each row stops on its own


def test_lines_ends_each_sample_at_its_nth_newline():
    model, vocab = known_model({"a": 0.5, "b": 0.3, "\n": 0.2})
    texts = generate(model, vocab, ["a"], 40, num_samples=60, seed=2, lines=2)[0]
    for text in texts:
        assert text.count("\n") <= 2
        assert text.count("\n") == 2 and text.endswith("\n") or len(text) == 40
    both = generate(model, vocab, ["a"], 40, num_samples=60, seed=2, lines=2, stop_at="b")[0]
    for text in both:  # whichever comes first
        assert text.endswith("b") or text.count("\n") == 2 or len(text) == 40
        assert text.count("b") <= 1 and text.count("\n") <= 2


def test_streamed_characters_are_the_text():
    model, vocab = known_model({"a": 0.5, "b": 0.3, "\n": 0.2})
    steps: list[list[str]] = []
    texts = generate(
        model, vocab, ["a", "ba"], 25, num_samples=3, seed=4, lines=1, on_step=steps.append
    )
    streamed = ["".join(step[row] for step in steps) for row in range(6)]
    assert streamed == [t for group in texts for t in group]
    assert texts == generate(model, vocab, ["a", "ba"], 25, num_samples=3, seed=4, lines=1)


@pytest.mark.parametrize(
    "options",
    [
        {"backend": "scratch"},
        {"backend": "torch"},
        {"backend": "scratch", "num_layers": 2, "peephole": True},
    ],
)
def test_batched_greedy_equals_sequential_greedy(options):
    model, vocab = random_model(**options)
    prefixes = ["分开", "我", "你说的话"]
    for config in (
        SamplingConfig(greedy=True),
        SamplingConfig(greedy=True, repetition_penalty=2.0, penalty_window=4),
    ):
        batched = generate(model, vocab, prefixes, 40, config, num_samples=2)
        for prefix, samples in zip(prefixes, batched, strict=True):
            alone = generate(model, vocab, [prefix], 40, config)[0][0]
            assert samples == [alone, alone]


@pytest.mark.parametrize(
    "options",
    [
        {"backend": "scratch"},
        {"backend": "torch", "num_layers": 2},
        {"backend": "scratch", "num_layers": 2, "embedding_size": 8},
        {"backend": "scratch", "peephole": True},
    ],
)
@pytest.mark.parametrize("fold", [False, True])
def test_one_step_path_equals_the_model_forward(options, fold):
    model, vocab = random_model(**options)
    x = torch.randint(0, len(vocab), (9, 3))  # (T, N)
    with torch.no_grad():
        expected, (h, c) = model(x)
        table = model.step_table() if fold else None
        state = model.init_state(3)
        logits = []
        for t in range(9):
            step_logits, state = model.step(x[t], state, table)
            logits.append(step_logits)
    torch.testing.assert_close(torch.stack(logits), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[0], h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[1], c, rtol=1e-5, atol=1e-5)


def test_generate_restores_training_mode():
    model, vocab = random_model()
    model.train()
    generate(model, vocab, ["分"], 5, seed=0)
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lines": 0}, "--lines must be positive"),
        ({"stop_at": "ab"}, "--stop-at takes one character"),
        ({"stop_at": "x"}, "'x' is not in the model's vocabulary"),
        ({"prefixes": ["分开xy"]}, "not in the model's vocabulary: 'x' 'y'"),
        ({"prefixes": [""]}, "prefix is empty"),
        ({"length": -1}, "--length must be >= 0"),
        ({"num_samples": 0}, "--num-samples must be positive"),
        ({"config": SamplingConfig(top_k=200)}, "--top-k 200 is larger than the vocabulary"),
    ],
)
def test_bad_settings_raise_one_line_errors(kwargs, message):
    model, vocab = random_model()
    kwargs = {"prefixes": ["分开"], **kwargs}
    with pytest.raises(CharLSTMError, match="^[^\n]*$") as err:
        generate(model, vocab, **kwargs)
    assert message in shown(err.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SamplingConfig(top_p=0.0), "--top-p must be in (0, 1]"),
        (lambda: SamplingConfig(top_p=1.5), "--top-p must be in (0, 1]"),
        (lambda: SamplingConfig(top_k=0), "--top-k must be positive"),
        (lambda: SamplingConfig(temperature=0.0), "--temperature must be positive"),
        (lambda: SamplingConfig(repetition_penalty=0.5), "--repetition-penalty must be at"),
        (lambda: SamplingConfig(penalty_window=0), "--penalty-window must be positive"),
        (lambda: CacheConfig(mix=2.0), "--cache-mix must be in [0, 1)"),
        (lambda: CacheConfig(window=0), "--cache-window must be positive"),
        (lambda: DynamicConfig(lr=-1.0), "--dynamic-lr must be >= 0"),
        (lambda: DynamicConfig(segment=0), "--dynamic-segment must be positive"),
    ],
)
def test_bad_settings_are_refused_when_built(make, message):
    """A config is checked once, when it is made: a bad one never reaches the model."""
    with pytest.raises(SettingError, match="^[^\n]*$") as err:
        make()
    assert message in shown(err.value)


def test_library_errors_name_the_setting_and_the_cli_its_option():
    with pytest.raises(SettingError, match=r"^top_p must be in \(0, 1\], not 0.0$") as err:
        SamplingConfig(top_p=0.0)
    assert shown(err.value) == "--top-p must be in (0, 1], not 0.0"
    with pytest.raises(SettingError, match=r"^cache\.mix must be in \[0, 1\), not 2.0$") as err:
        CacheConfig(mix=2.0)
    assert shown(err.value) == "--cache-mix must be in [0, 1), not 2.0"


def test_lines_needs_a_newline_in_the_vocabulary():
    model, vocab = known_model({"a": 0.5, "b": 0.5})
    with pytest.raises(SettingError, match="trained with newlines space") as err:
        generate(model, vocab, ["a"], 5, lines=1)
    assert "--lines needs newlines" in shown(err.value)


def test_stop_character_escapes():
    assert parse_char("\\n") == "\n" and parse_char("\\t") == "\t" and parse_char("。") == "。"
    with pytest.raises(SettingError, match="stop_at takes one character"):
        parse_char("ab")


# -- adaptive generation ---------------------------------------------------------------------

CACHE = CacheConfig(window=12, flatness=3.0, mix=0.5)  # sharp: an untrained model's states
DYNAMIC = DynamicConfig(lr=1.0, segment=5)  # short segments: several updates in a test
ADAPTATIONS = [
    pytest.param({"cache": CACHE}, id="cache"),
    pytest.param({"dynamic": DYNAMIC}, id="dynamic"),
    pytest.param({"cache": CACHE, "dynamic": DYNAMIC}, id="both"),
]


@pytest.mark.parametrize("backend", ["scratch", "torch"])
@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(temperature=0.9, top_k=10, top_p=0.95, repetition_penalty=1.5),
        SamplingConfig(greedy=True),
    ],
)
def test_zero_mix_and_zero_learning_rate_give_the_plain_text(backend, config):
    """The adaptive path with nothing to add writes exactly what plain generation writes."""
    model, vocab = random_model(backend=backend)
    prefixes = ["分开", "我", "你说的话还在耳边"]
    plain = generate(model, vocab, prefixes, 40, config, num_samples=2, seed=7)
    for options in (
        {"cache": CacheConfig(mix=0.0)},
        {"dynamic": DynamicConfig(lr=0.0, segment=3)},
        {"cache": CacheConfig(mix=0.0), "dynamic": DynamicConfig(lr=0.0, segment=3)},
    ):
        assert generate(model, vocab, prefixes, 40, config, 2, seed=7, **options) == plain


@pytest.mark.parametrize("options", ADAPTATIONS)
def test_adaptive_streams_predict_what_score_adaptive_scores(options):
    """Read a text through the streams (prefix, then one character at a time, three rows
    of different prefix lengths side by side): each next-character distribution is the
    one ``score_adaptive`` scores for that text, the prefix in the cache and learnt from."""
    model, vocab = random_model()
    text = LYRICS * 2
    starts = [1, 4, 12]  # prefix lengths: segments of 5 end inside and after the prefixes
    streams = open_streams(model, len(starts), **options)
    encoded = vocab.encode(text)
    nll = [[] for _ in starts]
    with torch.no_grad():
        for row, start in enumerate(starts):
            _, log_p = streams.read(torch.tensor([row]), encoded[:start, None])
            nll[row].append(-log_p[0, encoded[start]])
        for step in range(40):
            chars = torch.stack([encoded[start + step] for start in starts])
            _, log_p = streams.step(chars)
            for row, start in enumerate(starts):
                nll[row].append(-log_p[row, encoded[start + step + 1]])
    for row, start in enumerate(starts):
        scored = score_adaptive(model, encoded[1 : start + 41], encoded[:1], **options)
        torch.testing.assert_close(torch.stack(nll[row]), scored.per_char[start - 1 :])


@pytest.mark.parametrize("options", ADAPTATIONS)
def test_adaptive_samples_are_draws_from_the_scored_distribution(options):
    """End to end: with a seed, each character is the draw that the same random number
    makes from the distribution ``score_adaptive`` gives every candidate character."""
    model, vocab = random_model()
    prefix = "我们说好不分开"
    text = prefix + generate(model, vocab, [prefix], 12, seed=3, **options)[0][0]
    generator = torch.Generator().manual_seed(3)
    for end in range(len(prefix), len(text)):
        nll = torch.stack(
            [
                score_adaptive(
                    model, vocab.encode(text[1:end] + ch), vocab.encode(text[0]), **options
                ).per_char[-1]
                for ch in vocab.idx_to_char
            ]
        )
        assert vocab.idx_to_char[int(draw((-nll).exp()[None], generator))] == text[end]


def test_the_cache_mixture_comes_before_temperature_and_filters():
    """Prefix "ad" puts one pair in the cache, (state after a, d): the first character is
    drawn from ``0.5 * p_model + 0.5 * [d]``, and temperature and top-k act on that."""
    model, vocab = known_model({"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1})
    cache = CacheConfig(mix=0.5)
    mixed = {"a": 0.2, "b": 0.15, "c": 0.1, "d": 0.55}

    def counts(config: SamplingConfig) -> Counter:
        texts = generate(model, vocab, ["ad"], 1, config, num_samples=4000, seed=0, cache=cache)
        return Counter(texts[0])

    for config, expected in (
        (SamplingConfig(), mixed),
        (SamplingConfig(temperature=0.5), {ch: p**2 for ch, p in mixed.items()}),
        (SamplingConfig(top_k=2), {"d": 0.55, "a": 0.2}),  # plain top-2 would be a and b
    ):
        got = counts(config)
        assert set(got) == set(expected)
        for ch, weight in expected.items():
            share = weight / sum(expected.values())
            assert got[ch] / 4000 == pytest.approx(share, abs=0.025)
    greedy = generate(model, vocab, ["ad"], 1, SamplingConfig(greedy=True), cache=cache)
    assert greedy == [["d"]]


@pytest.mark.parametrize("options", ADAPTATIONS)
def test_adaptive_rows_are_independent_and_seeded(options):
    """Batched rows equal each prefix alone (each row learns from its own text only)."""
    model, vocab = random_model()
    config = SamplingConfig(greedy=True, repetition_penalty=2.0, penalty_window=4)
    prefixes = ["分开", "我", "你说的话"]
    batched = generate(model, vocab, prefixes, 30, config, num_samples=2, **options)
    for prefix, samples in zip(prefixes, batched, strict=True):
        alone = generate(model, vocab, [prefix], 30, config, **options)[0][0]
        assert samples == [alone, alone]
    sampled = generate(model, vocab, prefixes, 30, num_samples=2, seed=5, **options)
    assert generate(model, vocab, prefixes, 30, num_samples=2, seed=5, **options) == sampled
    assert generate(model, vocab, prefixes, 30, num_samples=2, seed=5) != sampled


def test_dynamic_generation_leaves_the_model_unchanged():
    model, vocab = random_model()
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    generate(model, vocab, ["分开"], 30, seed=1, dynamic=DynamicConfig(lr=5.0, segment=4))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
