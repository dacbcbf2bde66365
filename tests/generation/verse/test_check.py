"""``charlstm verse-check`` on human poems from tang_poems, and the training lines it and
the copy filter use (:mod:`charlstm.generation.verse.check`, ``copies``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlstm.api import load_model
from charlstm.generation.verse.check import (
    adjacent_rhyme,
    check_poems,
    check_text,
    distinct_2,
    poem_lines,
    read_blocks,
)
from charlstm.generation.verse.copies import FILE_NAME, LineSet, split_lines
from charlstm.generation.verse.forms import PRESETS, VerseSettings
from tests.helpers import copy_run, invoke, one_line_error, save_verse_model, shared_file

#: Three 七言绝句 from tang_poems as the corpus has them (title row, then the poem), and
#: one that 王昌齡 did not write: its line 3 is a character short and nothing rhymes.
QUATRAINS = """橫吹曲辭 出塞 一
秦時明月漢時關，萬里長征人未還。
但使龍城飛將在，不教胡馬度陰山。

早發白帝城
朝辭白帝彩雲間，千里江陵一日還。
兩岸猨聲啼不盡，輕舟已過萬重山。

春望
國破山河在城中，春草木深花濺淚。
感時恨別鳥驚，烽火連三月家書。
"""
#: Two 五言 poems: a 绝句 that keeps the pattern, and the 律诗 春望 read as a 绝句 (eight lines).
FIVE = """登樓
白日依山盡，黃河入海流。
欲窮千里目，更上一層樓。

春望
國破山河在，城春草木深。
感時花濺淚，恨別鳥驚心。
烽火連三月，家書抵萬金。
白頭搔更短，渾欲不勝簪。
"""


def test_checker_on_real_quatrains(tmp_path: Path) -> None:
    poems = tmp_path / "poems.txt"
    poems.write_text(QUATRAINS, encoding="utf-8")
    result = invoke("verse-check", poems, "--form", "七言绝句", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    checks = report["poems"]
    assert [p["form"] for p in checks] == [True, True, False]
    assert [p["rhyme"] for p in checks] == [True, True, False]  # 關 還 山 / 間 還 山
    assert checks[0]["lines"][0] == "秦時明月漢時關"  # the title row is not a line
    assert checks[0]["tone"] >= 0.9 and checks[2]["tone"] is None
    assert report["overall"]["form"] == pytest.approx(2 / 3)
    assert report["overall"]["settings"]["rhyme"] == "pingshui"


def test_checker_counts_lines_of_the_corpus_and_prints_a_table(tmp_path: Path) -> None:
    poems = tmp_path / "poems.txt"
    poems.write_text(FIVE, encoding="utf-8")
    corpus = shared_file("tang_poems.txt.zip")
    result = invoke("verse-check", poems, "--form", "wuyan-jueju", "--corpus", corpus)
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[1].split() == ["1", "yes", "-", "yes", "100.0%", "4/4"]  # 登樓 keeps it all
    assert rows[2].split()[1] == "no" and rows[2].split()[-1] == "8/8"
    assert "2 poems: form 50.0%" in rows[-2] and "lines copied 100.0%" in rows[-2]
    # rows, not lines: 流 樓 (尤; 油求), 深 心 金 簪 (侵; the title rows are left out); 簪
    # (zān) no longer rhymes with 金 (jīn) in Mandarin
    assert rows[-1] == (
        "adjacent lines rhyme: shisanzhe 75.0%, xinyun 75.0%, pingshui 100.0% of 4 pairs"
    )


def test_checker_reads_generate_jsonl_and_agrees_with_the_decoder(tmp_path: Path) -> None:
    model = save_verse_model(tmp_path / "model.pt")
    out = tmp_path / "poems.jsonl"
    args = ["--form", "七言律诗", "--acrostic", "春夏秋冬", "--num-samples", "5"]
    result = invoke(
        "generate",
        "--checkpoint",
        model,
        *args,
        "--seed",
        "1",
        "--no-copy-filter",
        "--prefix",
        "春日",
        "--format",
        "jsonl",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(invoke("verse-check", out, *args[:4], "--json").stdout)["overall"]
    assert report["poems"] == 5
    assert report["form"] == report["acrostic"] == report["rhyme"] == report["tone"] == 1.0


def test_checker_errors_are_one_line(tmp_path: Path) -> None:
    poems = tmp_path / "poems.txt"
    poems.write_text(QUATRAINS, encoding="utf-8")
    one_line_error(invoke("verse-check", poems, "--acrostic", "春"), "--acrostic is a setting of")
    corpus_alone = invoke("verse-check", poems, "--corpus", poems)
    one_line_error(corpus_alone, "--checkpoint and --corpus count the copied lines of poems in a")
    one_line_error(invoke("verse-check", tmp_path / "none.txt", "--form", "jueju7"), "not found")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    one_line_error(invoke("verse-check", empty, "--form", "jueju7"), "no poems in")


#: Lyrics in two stanzas, then a poem with its title: six pairs of neighbouring rows.
LYRICS = """我们说好不分开
窗外的风吹来
你说的话还在耳边

天边
一片云
春日
我的衣

春望
國破山河在，城春草木深。
感時花濺淚，恨別鳥驚心。
"""


def test_adjacent_line_rhymes_of_any_text(tmp_path: Path) -> None:
    """开 来 rhyme under every system, 日 衣 under 十三辙 only (中华新韵: 支 and 齐), 深 心
    under all three; 来 边, 边 云 and 云 日 under none. Without a form that is all
    ``verse-check`` reports; with one, it follows the poems' summary."""
    path = tmp_path / "lyrics.txt"
    path.write_text(LYRICS, encoding="utf-8")
    shown = invoke("verse-check", path)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == (
        "adjacent lines rhyme: shisanzhe 50.0%, xinyun 33.3%, pingshui 33.3% of 6 pairs\n"
    )
    overall = json.loads(invoke("verse-check", path, "--json").stdout)["overall"]
    assert overall["adjacent_rhyme"] == pytest.approx(
        {"shisanzhe": 1 / 2, "xinyun": 1 / 3, "pingshui": 1 / 3}
    )
    assert overall["adjacent_pairs"] == 6 and overall["poems"] == 0
    report = check_text(read_blocks(path), VerseSettings(line_lengths=[7, 6, 8]))
    assert report.summary()["form"] == pytest.approx(1 / 3)  # the first stanza
    assert report.adjacent_rhyme["shisanzhe"] == 0.5
    assert adjacent_rhyme(["oh yeah\n开\n来"], "xinyun") == (1, 2)  # letters rhyme with nothing
    assert adjacent_rhyme(["开\n\n来"], "xinyun") == (0, 0)  # a stanza apart


def test_poem_lines_and_distinct_2() -> None:
    assert poem_lines("春曉\n春眠不覺曉，處處聞啼鳥。", PRESETS["五言绝句"]) == [
        "春眠不覺曉",
        "處處聞啼鳥",
    ]
    assert distinct_2([["春春春"], ["春夏"]]) == pytest.approx(2 / 3)
    settings = VerseSettings(line_lengths=[2, 2], rhyme="none")
    assert check_poems([["春夏", "秋冬"]], settings).summary()["rhyme"] is None


def test_training_lines_are_built_once_and_stored_beside_the_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("春眠不覺曉，處處聞啼鳥。\n" * 9 + "夜來風雨聲，花落知多少。\n")
    model = load_model(save_verse_model(tmp_path / "run" / "model.pt", corpus))
    from charlstm.generation.verse.copies import training_lines

    lines = training_lines(model.checkpoint)
    assert "春眠不覺曉" in lines and "處處聞啼鳥" in lines
    assert "夜來風雨聲" not in lines  # the held-out 10 % is not training text
    stored = tmp_path / "run" / FILE_NAME
    before = stored.stat().st_mtime_ns
    assert len(training_lines(model.checkpoint)) == 2 and stored.stat().st_mtime_ns == before
    assert list(split_lines("a b，春天。\n夏")) == ["春天"]
    assert "春天" in LineSet.from_text("春天，秋天") and "冬天" not in LineSet.from_text("春天")


def test_a_trained_run_writes_and_checks_lyrics(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    form = ["--line-lengths", "4,4,4,4", "--acrostic", "我分", "--rhyme", "shisanzhe"]
    out = tmp_path / "lyrics.jsonl"
    args = ["--checkpoint", run, *form, "--num-samples", "6", "--seed", "1"]
    result = invoke("generate", *args, "--format", "jsonl", "--out", out)
    assert result.exit_code == 0, result.output
    assert (run / FILE_NAME).is_file()  # the copy filter's lines, beside the checkpoint
    texts = [json.loads(row)["text"] for row in out.read_text().splitlines()]
    assert all([len(line) for line in t.split("\n")] == [4, 4, 4, 4, 0] for t in texts), texts
    report = json.loads(invoke("verse-check", out, *form, "--checkpoint", run, "--json").stdout)
    overall = report["overall"]
    assert overall["form"] == overall["acrostic"] == overall["rhyme"] == 1.0
    assert overall["copied"] is not None  # counted against the run's training text
