"""The adaptive softmax (``softmax="adaptive"``): a whole distribution, its loss, one step,
and everything that reads a distribution (generation, scoring, the cache, dynamic
evaluation, the n-gram mixture, conversion, saving and loading)."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path

import httpx
import pytest
import torch

from charlstm.api import load_model
from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.data.corpus import Vocab, read_text
from charlstm.errors import CharLSTMError
from charlstm.eval.scoring import score, score_adaptive, score_heldout
from charlstm.fields import SettingError
from charlstm.generation.adaptation import DynamicEvaluation, read_log_probs
from charlstm.generation.sample import generate
from charlstm.generation.settings import CacheConfig, DynamicConfig, SamplingConfig
from charlstm.generation.streams import open_streams
from charlstm.model import (
    CharLSTM,
    align_cutoffs,
    build_model,
    convert_state_dict,
    default_cutoffs,
)
from charlstm.ngram.mixture import NgramMixture
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from charlstm.training.start import prepare_training
from charlstm.training.vocab_growth import grow_vocab_weights, grown_config
from tests.helpers import FAST, ServerProcess, invoke, one_line_error, shared_file, write_zip

TEXT = "我们说好不分开\n分开以后的雨天\n窗外的风吹过\n你说的话还在耳边\n不分开的夜晚\n" * 4
VOCAB = Vocab.from_text(TEXT)
COUNTS = Counter(TEXT)


def adaptive_model(backend: str = "scratch", **options) -> CharLSTM:
    """A random adaptive-softmax model with two tail clusters (``cutoffs`` 4, 12 unless
    given) and the corpus's class order."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        dropout=0.0,
        backend=backend,
        softmax="adaptive",
        **{"cutoffs": [4, 12], **options},
    )
    model = build_model(config)
    model.set_class_order([COUNTS[ch] for ch in VOCAB.idx_to_char])
    return model.eval()


BACKENDS = [
    pytest.param({"backend": "scratch"}, id="scratch"),
    pytest.param({"backend": "torch", "num_layers": 2}, id="torch-2-layers"),
    pytest.param({"backend": "scratch", "peephole": True}, id="peephole"),
]


@pytest.mark.parametrize("options", BACKENDS)
def test_the_distribution_sums_to_one_and_its_log_prob_of_the_targets_is_the_nll(options):
    model = adaptive_model(**options)
    x = torch.randint(0, len(VOCAB), (7, 3))  # (T, N)
    y = torch.randint(0, len(VOCAB), (7, 3))
    with torch.no_grad():
        log_p, state = model.log_probs(x)  # (T, N, V)
        per_target, nll_state = model.nll(x, y, reduction="none")  # (T * N,)
        mean, _ = model.nll(x, y)
        logits, _ = model(x)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(7, 3))
    torch.testing.assert_close(per_target, -log_p.gather(2, y[..., None]).flatten())
    torch.testing.assert_close(mean, per_target.mean())
    torch.testing.assert_close(logits, log_p)  # its logits are its log-probabilities
    # cross-entropy on the logits is the loss, as it is for the full softmax
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    torch.testing.assert_close(ce, mean)
    torch.testing.assert_close(nll_state[0], state[0])


def test_the_class_order_maps_vocabulary_indices_to_frequency_ranks():
    model = adaptive_model()
    frequent = VOCAB.char_to_idx[COUNTS.most_common(1)[0][0]]
    assert int(model.head_order[frequent]) == 0
    assert sorted(model.head_order.tolist()) == list(range(len(VOCAB)))
    features = torch.randn(5, 16)
    ranked = model.head.log_prob(features)  # (5, V) by rank
    torch.testing.assert_close(model.logits(features)[:, frequent], ranked[:, 0])
    fresh = build_model(model.config)
    assert fresh.head_order.tolist() == list(range(len(VOCAB)))  # identity by default
    with pytest.raises(CharLSTMError, match="one count per character"):
        model.set_class_order([1, 2, 3])
    full = build_model(ModelConfig(vocab_size=len(VOCAB), hidden_size=8))
    with pytest.raises(CharLSTMError, match="adaptive softmax"):
        full.set_class_order([1] * len(VOCAB))
    assert "head_order" not in full.state_dict()  # full-softmax checkpoints are unchanged


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (9700, [2303]),  # Zipf's law: 85 % needs 2,300 (head 2,304 wide); 99.9 % nearly all
        (65, [39]),  # 32 cover 85 %; moved up to a head 40 wide
        (2, [1]),  # too small to move
        ([1000] * 10 + [1] * 90, [14, 94]),  # 9 hold 89.2 %, 90 reach 99.9 %; head 16, tail 80
        ([5, 1, 1, 1], [3]),
    ],
)
def test_default_cutoffs_cover_85_and_99_9_percent_of_the_text(counts, expected):
    cutoffs = default_cutoffs(counts)
    assert cutoffs == expected
    size = counts if isinstance(counts, int) else len(counts)
    ModelConfig(vocab_size=size, softmax="adaptive", cutoffs=cutoffs)  # checked when made
    if isinstance(counts, int):  # a config without cutoffs builds Zipf's default
        model = build_model(ModelConfig(vocab_size=size, hidden_size=8, softmax="adaptive"))
        assert model.head.cutoffs == [*expected, size]


@pytest.mark.parametrize(
    ("cutoffs", "vocab_size", "expected"),
    [
        ([980, 6800], 9700, [982, 6806]),  # head 984 = 982 + 2 clusters; tail 5,824
        ([982, 6806], 9700, [982, 6806]),  # already aligned: unchanged
        ([20, 24], 100, [22, 30]),  # head 24 = 22 + 2; first tail 2 -> 8
        ([20, 24, 26], 100, [21, 24, 32]),  # head 24; the first tail cannot pass 26
        ([97], 100, [97]),  # the last cluster would shrink to one character: kept
    ],
)
def test_align_cutoffs_rounds_head_and_tail_widths_to_multiples_of_8(cutoffs, vocab_size, expected):
    aligned = align_cutoffs(cutoffs, vocab_size)
    assert aligned == expected
    assert aligned == sorted(set(aligned)) and aligned[-1] < vocab_size - 1


def test_default_cutoffs_of_the_tang_poems():
    # The real case they were chosen on (docs/benchmarks.md): 9,700 distinct characters,
    # of which the 980 most frequent cover 85 % of the text and 6,800 cover 99.9 %; the
    # head is then 984 outputs wide (982 + 2 clusters) and the first tail 5,824.
    text = read_text(shared_file("tang_poems.txt.zip"))
    vocab = Vocab.from_text(text)
    counts = Counter(text)
    assert default_cutoffs([counts[ch] for ch in vocab.idx_to_char]) == [982, 6806]


def test_default_cutoffs_refuse_a_single_character():
    with pytest.raises(CharLSTMError, match="at least 2 characters"):
        default_cutoffs([7])


@pytest.mark.parametrize("options", BACKENDS)
@pytest.mark.parametrize("fold", [False, True])
def test_one_step_at_a_time_equals_the_whole_sequence(options, fold):
    model = adaptive_model(**options)
    x = torch.randint(0, len(VOCAB), (9, 3))
    with torch.no_grad():
        expected, (h, c) = model.log_probs(x)
        table = model.step_table() if fold else None
        state = model.init_state(3)
        steps = []
        for t in range(9):
            logits, state = model.step(x[t], state, table)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[0], h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[1], c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(),
        SamplingConfig(temperature=0.8, top_k=5, top_p=0.9, repetition_penalty=1.5),
        SamplingConfig(greedy=True, repetition_penalty=2.0, penalty_window=4),
    ],
)
def test_generation_runs_every_control_and_repeats_with_a_seed(config):
    model = adaptive_model()
    first = generate(model, VOCAB, ["分开", "我"], 30, config, num_samples=2, seed=3)
    assert first == generate(model, VOCAB, ["分开", "我"], 30, config, num_samples=2, seed=3)
    assert all(len(text) == 30 and not VOCAB.missing(text) for row in first for text in row)


def test_greedy_text_is_the_arg_max_of_the_whole_sequence_pass():
    model = adaptive_model(backend="torch")
    text = "分开" + generate(model, VOCAB, ["分开"], 15, SamplingConfig(greedy=True))[0][0]
    with torch.no_grad():
        log_p, _ = model.log_probs(VOCAB.encode(text[:-1]).view(-1, 1))
    assert VOCAB.decode(log_p[1:, 0].argmax(-1)) == text[2:]


def test_top_k_keeps_the_k_likeliest_of_the_adaptive_distribution():
    model = adaptive_model()
    with torch.no_grad():
        log_p, _ = model.log_probs(VOCAB.encode("分").view(1, 1))
    allowed = {VOCAB.idx_to_char[i] for i in log_p[0, 0].topk(3).indices.tolist()}
    texts = generate(model, VOCAB, ["分"], 1, SamplingConfig(top_k=3), num_samples=300, seed=0)
    assert set(texts[0]) == allowed


def test_scores_are_the_log_probs_of_each_character():
    model = adaptive_model()
    indices = VOCAB.encode(TEXT)
    result = score(model, indices[1:], indices[:1], columns=1)  # one pass: one state
    with torch.no_grad():
        log_p, _ = model.log_probs(indices[:-1].view(-1, 1))
    direct = -log_p[:, 0].gather(1, indices[1:, None])[:, 0]
    torch.testing.assert_close(result.per_char.float(), direct, rtol=1e-5, atol=1e-5)
    held = score_heldout(model, indices[:100], indices[100:])
    assert held.chars == len(indices) - 100 and math.isfinite(held.loss)
    alone = score_adaptive(model, indices[1:], indices[:1])
    assert alone.loss == pytest.approx(result.loss, rel=1e-5)


def test_the_cache_and_dynamic_evaluation_score_and_write_with_the_adaptive_head():
    model = adaptive_model()
    indices = VOCAB.encode(TEXT)
    plain = score(model, indices[1:], indices[:1]).loss
    cache, dynamic = CacheConfig(window=50, flatness=3.0), DynamicConfig(lr=0.5, segment=20)
    both = score_adaptive(model, indices[1:], indices[:1], cache, dynamic)
    assert math.isfinite(both.loss) and both.loss != pytest.approx(plain)
    frozen = score_adaptive(model, indices[1:], indices[:1], dynamic=DynamicConfig(lr=0.0))
    assert frozen.loss == pytest.approx(plain, rel=1e-5)
    texts = generate(model, VOCAB, ["分开"], 30, None, 2, seed=1, cache=cache, dynamic=dynamic)
    assert all(len(text) == 30 for text in texts[0])


def test_dynamic_evaluation_learns_through_the_adaptive_head():
    model = adaptive_model()
    learner = DynamicEvaluation(model, DynamicConfig(lr=0.5))
    x = VOCAB.encode(TEXT[:30])
    _, log_p, _ = read_log_probs(learner.model, x[:-1], learner.model.init_state(1))
    learner.learn(torch.nn.functional.nll_loss(log_p, x[1:]))
    for name in ("head.head.weight", "head.tail.0.1.weight"):
        before, after = model.state_dict()[name], learner.model.state_dict()[name]
        assert not torch.equal(before, after), name


def test_adaptive_streams_predict_what_score_adaptive_scores():
    model = adaptive_model()
    options = {"cache": CacheConfig(window=12, flatness=3.0, mix=0.5)}
    encoded = VOCAB.encode(TEXT)
    streams = open_streams(model, 1, **options)
    nll = []
    with torch.no_grad():
        _, log_p = streams.read(torch.tensor([0]), encoded[:4, None])
        nll.append(-log_p[0, encoded[4]])
        for step in range(20):
            _, log_p = streams.step(encoded[4 + step : 5 + step])
            nll.append(-log_p[0, encoded[5 + step]])
    scored = score_adaptive(model, encoded[1:25], encoded[:1], **options)
    torch.testing.assert_close(torch.stack(nll), scored.per_char[3:], rtol=1e-5, atol=1e-5)


def test_the_ngram_mixture_mixes_the_adaptive_distribution():
    model = adaptive_model()
    mixture = NgramMixture(TEXT, VOCAB, order=3, weight=0.3)
    indices = VOCAB.encode(TEXT)
    mixed = score(model, indices[1:], indices[:1], mixture=mixture)
    alone = score(model, indices[1:], indices[:1])
    log_q = mixture.target_log_probs(indices[1:], indices[:1])
    expected = -torch.logaddexp(-alone.per_char + math.log(0.7), log_q + math.log(0.3))
    torch.testing.assert_close(mixed.per_char, expected)
    texts = generate(model, VOCAB, ["分开"], 20, SamplingConfig(top_p=0.9), seed=2, mixture=mixture)
    assert len(texts[0][0]) == 20


@pytest.mark.parametrize("source", ["scratch", "torch"])
def test_convert_keeps_the_head_and_the_outputs(source):
    model = adaptive_model(backend=source)
    target = "torch" if source == "scratch" else "scratch"
    weights = convert_state_dict(model.state_dict(), model.config, target)
    other = build_model(ModelConfig(**{**model.config.__dict__, "backend": target}))
    other.load_state_dict(weights)
    other.eval()
    x = torch.randint(0, len(VOCAB), (8, 2))
    with torch.no_grad():
        torch.testing.assert_close(other.log_probs(x)[0], model.log_probs(x)[0])
    assert torch.equal(other.head_order, model.head_order)


def test_the_class_order_survives_a_state_dict_and_a_checkpoint(tmp_path):
    model = adaptive_model()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_model(model.config)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.head_order, model.head_order)
    checkpoint = ckpt.Checkpoint(
        model_config=model.config,
        vocab=VOCAB,
        model=model.state_dict(),
        train_config=TrainConfig(epochs=1),
        data_config=DataConfig("corpus.txt"),
        epoch=1,
    )
    loaded = load_model(ckpt.save(checkpoint, tmp_path / "best.pt"))
    assert torch.equal(loaded.model.head_order, model.head_order)
    x = VOCAB.encode("我们说好").view(-1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.log_probs(x)[0], model.log_probs(x)[0])
    assert loaded.perplexity("我们说好不分开") == pytest.approx(
        math.exp(score(model, VOCAB.encode("们说好不分开"), VOCAB.encode("我")).loss)
    )


# ---------------------------------------------------------------------- --softmax auto


@pytest.mark.parametrize(
    ("vocab_size", "chosen"), [(65, "full"), (4_000, "full"), (4_001, "adaptive")]
)
def test_softmax_auto_is_adaptive_only_for_thousands_of_characters(vocab_size, chosen):
    config = ModelConfig(vocab_size=vocab_size, hidden_size=8, softmax="auto").resolved()
    assert config.softmax == chosen == build_model(config).config.softmax


def test_softmax_auto_with_cutoffs_for_a_small_alphabet_is_refused():
    with pytest.raises(SettingError, match="auto chose the full one for this vocabulary of 65"):
        ModelConfig(vocab_size=65, softmax="auto", cutoffs=[10])


def test_the_large_corpus_preset_chooses_by_the_vocabulary(small_corpus, tmp_path):
    """--preset large-corpus: full softmax for the 38 characters of small_corpus, adaptive for
    a corpus of 4,100 distinct characters; the run records the softmax it chose."""
    many = "".join(chr(0x4E00 + i) for i in range(4_100))
    wide = write_zip(tmp_path / "wide.zip", {"wide.txt": (many + "\n").encode("utf-8") * 3})
    options = [*FAST, "--max-steps", "1", "--eval-chars", "50", "--time-limit", "0"]
    for corpus, chosen in ((small_corpus, "full"), (wide, "adaptive")):
        run = tmp_path / chosen
        result = invoke("train", corpus, "--preset", "large-corpus", "--run-dir", run, *options)
        assert result.exit_code == 0, result.output
        assert ckpt.load(run / "last.pt").model_config.softmax == chosen
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        assert config["model"]["softmax"] == chosen
        assert (config["model"]["cutoffs"] is None) == (chosen == "full")


# ---------------------------------------------------------------------- --init-from --extend-vocab

#: Two tail clusters over small_corpus's 38 characters: the last holds the 18 rarest.
ADAPTIVE = ["--softmax", "adaptive", "--cutoffs", "8,20"]
#: A corpus with 9 characters small_corpus lacks (' ', 'a', 'i', 'n', 'r', 下, 个, 停, 晴).
GROWN_TEXT = "晴天的雨 rain 下个不停\n我们说好不分开\n" * 150


def grow(model: CharLSTM, new_size: int) -> CharLSTM:
    """``model`` with its vocabulary grown to ``new_size``, as --extend-vocab grows it."""
    config = grown_config(model.config, new_size)
    torch.manual_seed(1)
    grown = build_model(config)
    grown.load_state_dict(grow_vocab_weights(model.state_dict(), model.config, grown.state_dict()))
    return grown.eval()


def disturbance(before: CharLSTM, after: CharLSTM, indices: torch.Tensor) -> dict[str, float]:
    """How a grown model moves the old characters' log-probabilities after each prefix of
    ``indices`` (T,), old characters only: the largest change of any old character's
    log-probability, KL(before || after) over the old characters (nats, per position),
    and the mean change of the text's own next characters' log-probabilities (the change
    of its loss, negated)."""
    with torch.no_grad():
        old = before.eval().log_probs(indices.view(-1, 1))[0][:, 0]  # (T, V)
        new = after.eval().log_probs(indices.view(-1, 1))[0][:, 0, : old.shape[1]]  # (T, V)
    change = new - old
    targets = indices[1:].view(-1, 1)
    return {
        "max_abs": float(change.abs().max()),
        "kl": float((old.exp() * -change).sum(-1).mean()),
        "targets": float(change[:-1].gather(1, targets).mean()),
    }


@pytest.mark.parametrize("cutoffs", [[4, 12], None])
def test_grown_weights_keep_every_old_weight_and_the_shortlists_probabilities(cutoffs):
    """The new characters take the last ranks, in the last tail cluster; their output rows
    are the mean of its old rows. So, in any state, a shortlist character's log-probability
    is unchanged and a tail character's drops by at most log(1 + k / n) (Jensen); default
    cutoffs (None) are written out, the old model's."""
    model = adaptive_model(cutoffs=cutoffs)
    old, k = len(VOCAB), 5
    grown = grow(model, old + k)
    kept = cutoffs or default_cutoffs(old)
    assert grown.config.cutoffs == kept and grown.config.vocab_size == old + k
    before, after = model.state_dict(), grown.state_dict()
    last = f"head.tail.{len(kept) - 1}.1.weight"
    for key, value in before.items():
        if key in ("embedding.weight", "head_order", last):
            assert torch.equal(after[key][: len(value)], value)
        else:
            assert torch.equal(after[key], value)
    assert after["head_order"][old:].tolist() == list(range(old, old + k))  # the last ranks
    assert torch.equal(after[last][-k:], before[last].mean(0).expand(k, -1))

    x = torch.randint(0, old, (40, 3))  # (T, N), old characters
    with torch.no_grad():
        was = model.log_probs(x)[0]  # (T, N, V)
        now = grown.log_probs(x)[0]  # (T, N, V + k)
    shortlist = model.head_order < kept[0]
    assert torch.equal(now[..., :old][..., shortlist], was[..., shortlist])
    n = old - kept[-1]  # old characters in the last cluster
    in_last = model.head_order >= kept[-1]
    drop = (was - now[..., :old])[..., in_last]
    assert drop.min() >= -1e-6 and drop.max() <= math.log(1 + k / n) + 1e-6
    torch.testing.assert_close(now.exp().sum(-1), torch.ones(40, 3))


@pytest.fixture(scope="module")
def base_runs(small_corpus, tmp_path_factory) -> dict[str, Path]:
    """small_corpus trained one epoch FAST with each output layer, same seed."""
    root = tmp_path_factory.mktemp("base")
    made = {}
    for softmax, options in (("full", []), ("adaptive", ADAPTIVE)):
        made[softmax] = root / softmax
        result = invoke("train", small_corpus, "--run-dir", made[softmax], "--epochs", "1", *FAST,
                        *options)  # fmt: skip
        assert result.exit_code == 0, result.output
    return made


def test_extend_vocab_disturbs_the_old_characters_no_more_than_the_full_softmax(
    base_runs, small_corpus, tmp_path
):
    """Fine-tuning onto a corpus with 9 new characters: the same vocabulary for both output
    layers (old characters in order, then the new ones sorted); at step 0, on small_corpus's
    text, the adaptive path leaves the shortlist's log-probabilities as they were, moves the
    tail's by at most log(1 + 9 / 18), and costs the text less (KL, loss) than the full one."""
    corpus = tmp_path / "grown.txt"
    corpus.write_text(GROWN_TEXT, encoding="utf-8")
    text = read_text(small_corpus)[:2000]
    measured = {}
    for softmax, run in base_runs.items():
        base = load_model(run / "best.pt")
        trainer = prepare_training(
            corpus,
            {},
            {"batch_size": 8, "num_steps": 20, "sample_every": 0, "epochs": 1},
            {},
            run_dir=tmp_path / f"ft-{softmax}",
            init_from=run,
            extend_vocab=True,
            log=lambda _: None,
            progress_bar=False,
        )
        old = len(base.vocab)
        new_chars = sorted(base.vocab.missing(GROWN_TEXT))
        assert trainer.vocab.idx_to_char == base.vocab.idx_to_char + new_chars
        assert trainer.model_config.vocab_size == old + len(new_chars) == old + 9
        assert trainer.model_config.cutoffs == (None if softmax == "full" else [8, 20])
        measured[softmax] = disturbance(base.model, trainer.model, base.vocab.encode(text))
    adaptive, full = measured["adaptive"], measured["full"]
    assert adaptive["max_abs"] <= math.log(1 + 9 / 18) + 1e-5
    assert adaptive["kl"] <= full["kl"] and adaptive["targets"] >= full["targets"]


def test_an_adaptive_run_fine_tuned_with_new_characters_resumes_generates_and_evaluates(
    base_runs, tmp_path
):
    """train GROWN --init-from ADAPTIVE_RUN --extend-vocab, then --resume, generate with a new
    character in the prefix, eval and load_model; bad input stays one error line."""
    corpus = tmp_path / "grown.txt"
    corpus.write_text(GROWN_TEXT, encoding="utf-8")
    base, run = base_runs["adaptive"], tmp_path / "ft"
    start = ["train", corpus, "--init-from", base, *FAST]
    one_line_error(invoke(*start, "--run-dir", run), "pass --extend-vocab to add them")
    one_line_error(
        invoke(*start, "--extend-vocab", "--cutoffs", "4,12", "--run-dir", run),
        "fine-tuning keeps the architecture",
    )
    assert not run.exists()

    result = invoke(*start, "--extend-vocab", "--run-dir", run, "--epochs", "1")
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["cutoffs"] == [8, 20] and config["model"]["vocab_size"] == 47
    resumed = invoke("train", "--resume", run, "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    assert [row["epoch"] for row in runs.read_metrics(run)] == [1, 2]
    last = ckpt.load(run / "last.pt")
    assert (last.epoch, last.model_config.vocab_size, len(last.vocab)) == (2, 47, 47)

    generated = invoke(
        "generate", "--checkpoint", run, "--prefix", "晴天", "--length", "5", "--format", "jsonl"
    )
    assert generated.exit_code == 0, generated.output
    text = json.loads(generated.stdout)["text"]
    assert text.startswith("晴天") and len(text) == 7
    one_line_error(
        invoke("generate", "--checkpoint", run, "--prefix", "雪", "--length", "5"),
        "not in the",
    )
    scored = invoke("eval", corpus, "--checkpoint", run, "--json")
    assert scored.exit_code == 0, scored.output
    report = json.loads(scored.stdout)
    model = load_model(run / "best.pt")
    assert report["loss"] == pytest.approx(ckpt.load(run / "best.pt").best_val_loss, rel=1e-5)
    assert math.isfinite(model.perplexity("晴天的雨 rain"))

    # ... and exports and serves like any other run
    exported = tmp_path / "export"
    assert invoke("export", run, exported).exit_code == 0
    seeded = ["generate", "--prefix", "晴天", "--length", "30", "--seed", "5"]
    from_run = invoke(*seeded, "--checkpoint", run)
    assert from_run.exit_code == 0 and invoke(*seeded, "--checkpoint", exported).stdout == (
        from_run.stdout
    )
    server = ServerProcess(exported)
    try:
        body = {"prompt": "晴天", "max_tokens": 30, "seed": 5}
        reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    finally:
        assert server.stop() == 0
    assert "晴天" + reply["choices"][0]["text"] == model.generate("晴天", length=30, seed=5)
