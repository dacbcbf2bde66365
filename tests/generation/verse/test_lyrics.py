"""Free-length rhymed lyrics (``--rhyme`` without a form) on a real trained model: every
rhyming line ends in its stanza's class by the independent oracle (pypinyin's finals read
directly, ``oracle.py``), lines within their bounds, ``--rhyme-every``, the acrostic,
candidates, seeds, the bounds' defaults from the run, and bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlstm.api import load_model
from charlstm.generation.verse.forms import VerseSettings
from charlstm.generation.verse.lyrics import FILE_NAME, LineLengths
from tests.generation.verse.oracle import shisanzhe_of_line, stanzas
from tests.helpers import copy_run, invoke, one_line_error, save_known_model


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run: the bounds' defaults are stored beside its checkpoint."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("lyrics") / "run")


def lyric_lines(text: str) -> list[str]:
    """The lyric's complete lines (each ended by a newline), blank lines kept as ""."""
    assert text.endswith("\n"), text
    return text[:-1].split("\n")


def assert_rhymes(text: str, every: int = 1) -> None:
    """Every ``every``-th line of each stanza ends in one 十三辙 class, by the oracle."""
    for stanza in stanzas(text):
        rhyming = [line for i, line in enumerate(stanza) if (i + 1) % every == 0]
        if not rhyming:
            continue
        shared = frozenset.intersection(*(shisanzhe_of_line(line) for line in rhyming))
        assert shared, (rhyming, [shisanzhe_of_line(line) for line in rhyming])


@pytest.mark.parametrize("candidates", [1, 3])
def test_every_rhyming_line_ends_in_its_stanzas_class_within_bounds(
    run: Path, candidates: int
) -> None:
    model = load_model(run)
    settings = VerseSettings(rhyme="shisanzhe", min_line=3, max_line=9, candidates=candidates)
    texts = model.generate_many([""], num_samples=8, lines=6, verse=settings, seed=5)[0]
    assert len(set(texts)) > 1
    for text in texts:
        lines = [line for line in lyric_lines(text) if line]
        assert len(lines) >= 5, text  # six lines, a blank one counted among them
        assert all(3 <= len(line) <= 9 for line in lines), lines
        assert_rhymes(text)
    again = model.generate_many([""], num_samples=8, lines=6, verse=settings, seed=5)[0]
    assert again == texts  # a seed repeats


def test_rhyme_every_second_line_and_an_acrostic(run: Path) -> None:
    model = load_model(run)
    settings = VerseSettings(
        rhyme="shisanzhe", rhyme_every=2, acrostic="我分窗", min_line=2, max_line=8
    )
    texts = model.generate_many(["不分开"], num_samples=6, lines=4, verse=settings, seed=2)[0]
    odd_lines_rhyme = 0
    for text in texts:
        assert text.startswith("\n")  # the lyric starts on a new line after its title
        lines = lyric_lines(text[1:])
        assert [line[0] for line in lines[:3]] == list("我分窗"), lines
        assert_rhymes(text, every=2)
        odd_lines_rhyme += bool(shisanzhe_of_line(lines[0]) & shisanzhe_of_line(lines[2]))
    assert odd_lines_rhyme < len(texts)  # lines 1 and 3 are free, and not all rhyme


def test_the_bounds_default_to_the_runs_line_lengths_stored_beside_it(
    run: Path, small_corpus: Path
) -> None:
    model = load_model(run)
    texts = model.generate_many([""], num_samples=4, lines=5, verse=VerseSettings(rhyme="xinyun"))
    stored = json.loads((run / FILE_NAME).read_text(encoding="utf-8"))
    from charlstm.data.corpus import read_text

    text = read_text(small_corpus)
    found = LineLengths.of_text(text[: int(len(text) * 0.9)])
    assert (stored["low"], stored["high"], stored["median"]) == (
        found.low,
        found.high,
        found.median,
    )
    for lyric in texts[0]:
        assert all(found.low <= len(line) <= found.high for line in lyric_lines(lyric) if line)


def test_cli_streams_what_jsonl_records_with_the_settings(run: Path) -> None:
    options = ["generate", "--checkpoint", run, "--rhyme", "shisanzhe", "--lines", 4]
    options += ["--min-line", 3, "--max-line", 7, "--seed", 9, "--num-samples", 2]
    options += ["--candidates", 1]
    recorded = invoke(*options, "--format", "jsonl")
    assert recorded.exit_code == 0, recorded.output
    rows = [json.loads(line) for line in recorded.stdout.splitlines()]
    assert rows[0]["settings"]["verse"] == {
        "form": "free",
        "acrostic": None,
        "rhyme": "shisanzhe",
        "rhyme_every": 1,
        "min_line": 3,
        "max_line": 7,
        "candidates": 1,
    }
    streamed = invoke(*options)
    assert streamed.exit_code == 0, streamed.output
    assert streamed.stdout == "".join(row["text"] for row in rows)
    for row in rows:
        assert_rhymes(row["text"])


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--rhyme", "shisanzhe", "--min-line", 9, "--max-line", 4], "--min-line 9 is over"),
        (["--min-line", 3], "--min-line is a setting of free-length rhymed lyrics; add --rhyme"),
        (["--max-line", 3], "--max-line is a setting of free-length rhymed lyrics"),
        (["--rhyme-every", 2], "--rhyme-every is a setting of free-length rhymed lyrics"),
        (["--rhyme", "xinyun", "--acrostic", "我分", "--max-line", 1], "cannot hold an acrostic"),
        (["--rhyme", "xinyun", "--min-line", 20], "--min-line 20 is over --max-line"),
        (["--form", "jueju5", "--max-line", 5], "drop --form / --line-lengths"),
        (["--rhyme", "xinyun", "--tone"], "--tone is a setting of a verse form"),
        (["--rhyme", "xinyun", "--acrostic", "X"], "'X' is not in the model's vocabulary"),
    ],
)
def test_bad_input_is_one_line_before_any_sampling(
    run: Path, options: list[object], says: str
) -> None:
    one_line_error(invoke("generate", "--checkpoint", run, *options), says)


def test_a_vocabulary_without_a_rhyme_class_is_one_line(tmp_path: Path) -> None:
    model = save_known_model(tmp_path / "latin.pt", {"a": 0.4, "b": 0.4, "\n": 0.2})
    options = ["--rhyme", "shisanzhe", "--min-line", 2, "--max-line", 5]
    one_line_error(invoke("generate", "--checkpoint", model, *options), "no shisanzhe rhyme class")
