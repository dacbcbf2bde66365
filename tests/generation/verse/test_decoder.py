"""Verse through the Python API and ``charlstm generate``, on a model whose distribution is
known (``save_verse_model``): every form kept exactly at any temperature, the acrostic, the
rhyme (one class, no character twice), the tone pattern, the copy filter, and every
refused combination as one line."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from charlstm.api import LanguageModel, load_model
from charlstm.generation.settings import CacheConfig
from charlstm.generation.verse.check import check_poems
from charlstm.generation.verse.forms import PRESETS, VerseSettings, tone_pattern
from charlstm.generation.verse.rhyme import PING, ZE, rhyme_table
from tests.helpers import (
    FAST,
    VERSE_CHARS,
    invoke,
    one_line_error,
    save_known_model,
    save_verse_model,
    shared_file,
)

TEXT = "".join(ch for ch in VERSE_CHARS if ch not in "\n，。")


@pytest.fixture(scope="module")
def verse_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_verse_model(tmp_path_factory.mktemp("verse") / "model.pt")


def poem_lines(text: str, form_name: str) -> list[str]:
    """The lines of a classical poem, asserting its exact layout (XXXXX，XXXXX。\\n rows)."""
    form = PRESETS[form_name]
    n = form.lines[0].length
    row = f"[{TEXT}]{{{n}}}，[{TEXT}]{{{n}}}。\n"
    assert re.fullmatch(f"(?:{row}){{{len(form.lines) // 2}}}", text), text
    return re.findall(f"[{TEXT}]{{{n}}}", text)


def assert_rhymes(lines: list[str], rhyme_lines: tuple[int, ...], system: str) -> None:
    table = rhyme_table(system)
    ends = [lines[i][-1] for i in rhyme_lines]
    assert len(set(ends)) == len(ends), f"a rhyme used twice: {ends}"
    assert frozenset.intersection(*(table.classes(ch) for ch in ends)), ends


def assert_tone(lines: list[str], settings: VerseSettings) -> None:
    table = rhyme_table("pingshui")
    start = table.tones(lines[0][1])
    assert len(start) == 1, "line 1's second character must choose the pattern"
    pattern = tone_pattern(settings.template(), settings.rhyme_lines(), next(iter(start)))
    for line, wanted in zip(lines, pattern, strict=True):
        for pos, tone in wanted.items():
            other = ZE if tone == PING else PING
            assert table.tones(line[pos]) != {other}, (line, pos, tone)


@pytest.mark.parametrize("form", list(PRESETS))
@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
def test_every_form_is_kept_exactly_with_acrostic_rhyme_and_tone(
    verse_model: Path, form: str, temperature: float
) -> None:
    model = load_model(verse_model)
    settings = VerseSettings(form=form, acrostic="春夏秋冬", copy_filter=False)
    texts = model.generate_many(
        [""], num_samples=6, verse=settings, seed=7, temperature=temperature
    )[0]
    assert len(set(texts)) > 1  # every row has a state machine of its own
    for text in texts:
        lines = poem_lines(text, form)
        assert [line[0] for line in lines[:4]] == list("春夏秋冬")
        assert_rhymes(lines, settings.rhyme_lines(), "pingshui")
        assert_tone(lines, settings)


def test_a_classical_form_under_a_modern_rhyme(verse_model: Path) -> None:
    model = load_model(verse_model)
    settings = VerseSettings(form="七言绝句", rhyme="xinyun", copy_filter=False)
    for text in model.generate_many([""], num_samples=6, verse=settings, seed=2)[0]:
        lines = poem_lines(text, "七言绝句")
        assert_rhymes(lines, (0, 1, 3), "xinyun")
        table = rhyme_table("xinyun")  # its tones are today's: 1, 2 平; 3, 4 仄
        assert all(table.tones(lines[i][-1]) != {ZE} for i in (0, 1, 3))


def test_the_mask_wins_over_a_model_that_wants_punctuation(tmp_path: Path) -> None:
    weights = {"，": 500.0, "。": 500.0, "\n": 500.0, "月": 200.0}
    model = load_model(save_verse_model(tmp_path / "m.pt", weights=weights))
    settings = VerseSettings(form="五言律诗", copy_filter=False, candidates=2)
    for text in model.generate_many([""], num_samples=8, verse=settings, seed=1)[0]:
        lines = poem_lines(text, "五言律诗")
        assert_rhymes(lines, settings.rhyme_lines(), "pingshui")


def test_free_form_lines_end_with_newlines_and_rhyme_under_shisanzhe(verse_model: Path) -> None:
    model = load_model(verse_model)
    settings = VerseSettings(
        line_lengths=[7, 7, 5, 7], acrostic="春秋", rhyme="shisanzhe", copy_filter=False
    )
    texts = model.generate_many([""], num_samples=8, verse=settings, seed=3)[0]
    for text in texts:
        lines = text.split("\n")
        assert lines[-1] == "" and [len(line) for line in lines[:-1]] == [7, 7, 5, 7], text
        assert lines[0][0] == "春" and lines[1][0] == "秋"
        assert_rhymes(lines, (1, 3), "shisanzhe")
    # the lines read whole (the reading in context) rhyme too: the checker agrees
    report = check_poems([t.split("\n")[:-1] for t in texts], settings).summary()
    assert report["form"] == report["acrostic"] == report["rhyme"] == 1.0


def test_prefix_is_the_title_and_the_seed_repeats(verse_model: Path) -> None:
    model = load_model(verse_model)
    settings = VerseSettings(form="七言绝句", copy_filter=False)
    first = model.generate("春日", seed=5, verse=settings)
    assert first.startswith("春日\n") and first == model.generate("春日", seed=5, verse=settings)
    poem_lines(first[len("春日\n") :], "七言绝句")
    assert model.generate("春日", seed=6, verse=settings) != first


def test_cache_and_one_candidate(verse_model: Path) -> None:
    model = load_model(verse_model)
    settings = VerseSettings(form="五言绝句", candidates=1, copy_filter=False)
    texts = model.generate_many(
        ["春"], num_samples=4, verse=settings, seed=2, cache=CacheConfig.for_generation()
    )[0]
    for text in texts:
        poem_lines(text[1:], "五言绝句")


def test_cli_streams_and_records_the_form(verse_model: Path, tmp_path: Path) -> None:
    args = ["generate", "--checkpoint", verse_model, "--form", "jueju7", "--seed", "4"]
    args += ["--num-samples", "3", "--acrostic", "冬秋", "--no-copy-filter"]
    shown = invoke(*args)
    assert shown.exit_code == 0, shown.output
    recorded = invoke(*args, "--format", "jsonl")
    records = [json.loads(row) for row in recorded.stdout.splitlines()]
    assert "".join(r["text"] for r in records) == shown.stdout
    verse = records[0]["settings"]["verse"]
    assert verse["form"] == "七言绝句" and verse["acrostic"] == "冬秋"
    assert verse["rhyme"] == "pingshui" and verse["rhyme_lines"] == [1, 2, 4] and verse["tone"]


def write_corpus(path: Path, lines: list[str]) -> Path:
    path.write_text(
        "\n".join(f"{a}，{b}。" for a, b in zip(lines[::2], lines[1::2], strict=True)) + "\n"
    )
    return path


def test_copy_filter_redraws_lines_of_the_training_text(tmp_path: Path) -> None:
    # The model writes 春 or 夏 nearly two times in three; the training text has the lines 秋春 and
    # 秋夏 (in its first 90 %), so after the acrostic's 秋 the filter must find another.
    corpus = write_corpus(tmp_path / "corpus.txt", ["秋春", "秋夏"] * 10 + ["冬冬", "冬冬"])
    weights = {"春": 30.0, "夏": 30.0}
    model_path = save_verse_model(tmp_path / "run" / "model.pt", corpus, weights)
    model = load_model(model_path)
    settings = VerseSettings(line_lengths=[2], rhyme="none", acrostic="秋", candidates=2)
    texts = model.generate_many([""], num_samples=8, verse=settings, seed=0)[0]
    assert all(t[:2] not in ("秋春", "秋夏") and t[0] == "秋" for t in texts), texts
    assert (model_path.parent / "verse-lines.npz").is_file()  # built once, stored beside it
    unfiltered = VerseSettings(line_lengths=[2], rhyme="none", acrostic="秋", copy_filter=False)
    copies = model.generate_many([""], num_samples=8, verse=unfiltered, seed=0)[0]
    assert any(t[:2] in ("秋春", "秋夏") for t in copies), copies


def test_every_candidate_failing_is_one_line(tmp_path: Path) -> None:
    pairs = [a + b for a in TEXT for b in TEXT]
    corpus = write_corpus(tmp_path / "corpus.txt", pairs + pairs)  # all in the training part
    model_path = save_verse_model(tmp_path / "run" / "model.pt", corpus)
    result = invoke(
        "generate", "--checkpoint", model_path, "--line-lengths", "2,2", "--rhyme", "none"
    )
    one_line_error(result, "could not write line 1 of sample 1: all 8 x 4 candidates were")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--form", "jueju5", "--stop-at", "。"], "--stop-at cannot be used with a verse form"),
        (["--form", "jueju5", "--lines", "2"], "--lines cannot be used with a verse form"),
        (["--form", "jueju5", "--length", "9"], "--length cannot be used with a verse form"),
        (["--form", "jueju5", "--acrostic", "春夏秋冬春"], "has 5 characters, but 五言绝句 has 4"),
        (["--form", "jueju5", "--acrostic", "春花"], "character '花' is not in the model's"),
        (["--form", "sonnet"], "unknown --form 'sonnet'"),
        (["--form", "jueju5", "--line-lengths", "5,5"], "give --form or --line-lengths, not both"),
        (["--acrostic", "春"], "--acrostic is a setting of a verse form"),
        (["--prefix", "春", "--candidates", "2"], "--candidates is a setting of a verse form"),
        (["--line-lengths", "5,0"], "--line-lengths takes characters per line"),
        (["--line-lengths", "5,5", "--tone"], "--tone keeps the pattern of a classical form"),
        (["--form", "jueju5"], "the copy filter reads the run's training text"),
    ],
)
def test_refused_combinations_are_one_line(
    verse_model: Path, extra: list[str], message: str
) -> None:
    no_filter = [] if "copy filter" in message else ["--no-copy-filter"]
    result = invoke("generate", "--checkpoint", verse_model, *extra, *no_filter)
    one_line_error(result, message)


def test_rhyme_needs_chinese_characters(tmp_path: Path) -> None:
    probs = dict.fromkeys("abc \n", 1 / 5)
    path = save_known_model(tmp_path / "latin.pt", probs)
    args = ["generate", "--checkpoint", path, "--line-lengths", "3,3", "--no-copy-filter"]
    one_line_error(invoke(*args), "--rhyme xinyun rhymes Chinese characters")
    assert invoke(*args, "--rhyme", "none").stdout.count("\n") == 2


def test_several_titles_in_one_batch(verse_model: Path) -> None:
    model = load_model(verse_model)
    settings = VerseSettings(form="五言绝句", acrostic="冬", copy_filter=False)
    texts = model.generate_many(["春", "秋日\n", "夏日"], num_samples=2, verse=settings, seed=1)
    for prefix, group in zip(["春", "秋日\n", "夏日"], texts, strict=True):
        for text in group:
            poem = text if prefix.endswith("\n") else text.removeprefix("\n")
            assert text.startswith("\n") != prefix.endswith("\n")
            assert poem_lines(poem, "五言绝句")[0][0] == "冬"


@pytest.mark.parametrize("cache", [None, CacheConfig.for_generation()])
def test_unbinding_constraints_write_what_plain_decoding_writes(
    tiny_run: Path, cache: CacheConfig | None
) -> None:
    """A trained model (its state matters), greedy: a form whose lines have the lengths the
    model writes anyway changes nothing, with one candidate or three (the state of the kept
    candidate, the model's and the cache's, is copied to every copy between lines)."""
    model = load_model(tiny_run)
    plain = model.generate_many(["\n"], 40, greedy=True, cache=cache)[0][0]
    lines = plain.split("\n")[:3]
    assert all(lines), plain
    for candidates in (1, 3):
        settings = VerseSettings(
            line_lengths=[len(line) for line in lines],
            rhyme="none",
            candidates=candidates,
            copy_filter=False,
        )
        poem = model.generate_many([""], verse=settings, greedy=True, cache=cache)[0][0]
        assert poem == "".join(line + "\n" for line in lines)


def test_a_snapshot_survives_changes_in_place(tiny_run: Path) -> None:
    """A line drawn again starts from the state at the line's start: the rhymes used, the
    cache's ring and the penalty's window, which the decode changes in place, included.
    Every holder of rows is snapshot with ``take`` and restored with ``select``."""
    from charlstm.generation.rules import At, RepetitionPenalty, take
    from charlstm.generation.settings import SamplingConfig
    from charlstm.generation.streams import open_streams
    from charlstm.generation.verse.constraints import build_rules

    model = load_model(tiny_run)
    settings = VerseSettings(line_lengths=[1, 1], rhyme="xinyun", copy_filter=False)
    rules = build_rules(settings, model.vocab, 2, model.device)
    penalty = RepetitionPenalty(SamplingConfig(repetition_penalty=2), 2, len(model.vocab), "cpu")
    streams = open_streams(model.model, 0, CacheConfig.for_generation())
    streams.select(torch.tensor([-1, -1]))  # two fresh rows
    x = model.vocab.encode("我们\n").view(-1, 1).repeat(1, 2)
    streams.read(torch.arange(2), x)
    holders = [streams, *rules, penalty]

    def state() -> list[torch.Tensor]:
        cache = streams.cache
        return [
            *streams.streams.state,
            streams.query,
            cache.keys,
            cache.key_next,
            cache.filled,
            cache.slot,
            rules[1].classes,
            rules[1].used,
            penalty.recent,
            torch.tensor(penalty.count),
        ]

    every = torch.arange(2)
    snapshots = [take(holder, every) for holder in holders]
    before = [part.clone() for part in state()]
    chosen = torch.tensor([model.vocab.char_to_idx["开"]] * 2)
    for rule in rules:
        rule.push(chosen, At(1, 0))  # line 2's rhyme
    penalty.push(chosen)
    streams.step(chosen)
    assert bool(rules[1].used.any())
    for holder, snapshot in zip(holders, snapshots, strict=True):
        holder.select(every + 2, snapshot)  # rows 2, 3: the snapshot's
    for old, new in zip(before, state(), strict=True):
        assert torch.equal(old, new)


# -- the line-end score (issue 34): a line's break counts ------------------------------------


@pytest.fixture(scope="module")
def poem_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained for seconds on tang_poems' first 6,000 characters (one couplet a
    row, a blank line between poems): its break probabilities depend on the line."""
    run = tmp_path_factory.mktemp("poems") / "run"
    corpus = shared_file("tang_poems.txt.zip")
    result = invoke(
        "train", corpus, "--run-dir", run, "--epochs", "1", "--max-chars", "6000", *FAST
    )
    assert result.exit_code == 0, result.output
    return run


def scored(model: LanguageModel, lines: list[str], ending: str) -> tuple[list[float], list[float]]:
    """Each line's log-probability after a newline, and its ``ending``'s after it, under the
    model's own distribution (its n-gram mix included), read as the decode reads it."""
    from charlstm.generation.streams import open_streams

    with torch.inference_mode():
        streams = open_streams(model.model, len(lines), None, None, model.mixture)
        x = model.vocab.encode("\n").view(-1, 1).repeat(1, len(lines))  # (T, N)
        logits = streams.read(torch.arange(len(lines)), x)[1]
        sums = torch.zeros(2, len(lines))
        texts = [line + ending for line in lines]
        for pos in range(len(texts[0])):
            chars = torch.tensor([model.vocab.char_to_idx[t[pos]] for t in texts])
            log_p = torch.log_softmax(logits.float(), dim=-1)
            sums[int(pos >= len(lines[0]))] += log_p.gather(1, chars[:, None]).squeeze(1)
            logits = streams.step(chars)[1]
    return sums[0].tolist(), sums[1].tolist()


@pytest.mark.parametrize(
    ("which", "settings"),
    [
        ("lyrics", VerseSettings(line_lengths=[4], rhyme="none", copy_filter=False)),
        ("poems", VerseSettings(form="五言绝句", rhyme="none", tone=False, copy_filter=False)),
    ],
)
def test_the_kept_line_is_the_likeliest_with_its_break(
    tiny_run: Path, poem_run: Path, which: str, settings: VerseSettings
) -> None:
    """Each sample keeps, of its candidates, the line whose characters and break (the newline
    of a free line; the forced ``，`` of a poem's line 1) are likeliest together: the mean
    log-probability over the line's characters and its break. The candidates are seen
    through ``--candidates 1``: its rows draw exactly what the candidates draw on line 1.
    The break changes the choice: some samples keep a line the characters alone rank
    lower, and the kept lines' breaks are likelier than the characters alone would pick."""
    model = load_model(tiny_run if which == "lyrics" else poem_run)
    width, samples, length = 4, 12, settings.template().lines[0].length
    ending = settings.template().lines[0].ending
    texts = model.generate_many([""], num_samples=samples, verse=settings, seed=3, temperature=1.5)[
        0
    ]
    one = dataclasses.replace(settings, candidates=1)
    drawn = model.generate_many(
        [""], num_samples=samples * width, verse=one, seed=3, temperature=1.5
    )[0]
    kept = [t[:length] for t in texts]
    candidates = [t[:length] for t in drawn]
    chars, breaks = scored(model, candidates, ending)
    with_break = [c + b for c, b in zip(chars, breaks, strict=True)]
    changed, gain = 0, 0.0
    for sample in range(samples):
        rows = range(sample * width, (sample + 1) * width)
        best = max(rows, key=lambda r: with_break[r])
        assert kept[sample] == candidates[best], (sample, kept, candidates)
        by_chars = max(rows, key=lambda r: chars[r])
        changed += candidates[by_chars] != kept[sample]
        gain += breaks[best] - breaks[by_chars]
    assert changed > 0 and gain > 0, (changed, gain)


def test_the_poem_end_is_what_follows_the_last_line() -> None:
    """A classical poem ends with a blank line (tang_poems' layout); a free form's last
    newline ends it; a vocabulary without newlines scores a space, or nothing."""
    from charlstm.data.corpus import Vocab
    from charlstm.generation.verse.constraints import FormRule

    cpu = torch.device("cpu")
    vocab = Vocab(list(VERSE_CHARS))
    assert FormRule(PRESETS["七言绝句"], vocab, cpu).end == [vocab.char_to_idx["\n"]]
    free = VerseSettings(line_lengths=[3, 3]).template()
    assert FormRule(free, vocab, cpu).end == []
    spaced = Vocab([*VERSE_CHARS.replace("\n", ""), " "])
    assert FormRule(PRESETS["五言绝句"], spaced, cpu).end == [spaced.char_to_idx[" "]]
    bare = Vocab(list(VERSE_CHARS.replace("\n", "")))
    assert FormRule(PRESETS["五言绝句"], bare, cpu).end == []
