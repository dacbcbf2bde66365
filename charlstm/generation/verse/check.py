"""The checker: how well poems keep a form, its rhyme and its tone pattern (any text).

``charlstm verse-check FILE --form 七言绝句`` reads poems separated by blank lines (or the
``text`` of each record of ``generate --format jsonl``, less its prefix). A poem's lines are
its runs of text characters between punctuation and newlines; a first row without the
form's punctuation followed by rows with it (or one row more than the form has) is a
title and is not counted. For each poem and overall it reports:

- form: the right number of lines, each of the right length (punctuation is not checked:
  poets end lines with ？ and ！ too);
- acrostic (when one is given): line i begins with its character;
- rhyme: the rhyming lines' last characters share a class of the system (pinyin systems
  read each line whole, so that the phrase dictionary picks the reading);
- tone: the share of the positions a regulated form constrains (2, 4, 6 and each line's
  last) where the character can have the tone asked for, under the best of the four
  standard patterns (平起/仄起, line 1 rhyming or not); a character unknown to the table
  does not count as kept;
- copied: the share of lines found verbatim in the training text (with a run or corpus);
- distinct-2: distinct pairs of neighbouring characters within lines over all pairs.

Of any text, with a form or without (:func:`adjacent_rhyme`), it also reports the
**adjacent-line rhyme share** under each of :data:`ADJACENT_SYSTEMS`: of the pairs of
neighbouring rows within a stanza (blank lines separate stanzas; a row is a line of the
file, punctuation and all, and a row without text characters is skipped; a title row, as
above, is left out), the share whose last characters share a rhyme class (the row's last
run of text characters read whole, as for rhyme). Lyrics rhyme at the ends of rows;
tang_poems' rows are couplets, so its pairs are the even lines.

No torch here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.verse.forms import Form, VerseSettings, text_characters, tone_pattern
from charlstm.generation.verse.rhyme import PING, ZE, rhyme_table

PUNCTUATION = "，。？！；、,.?!;"
#: The systems of the adjacent-line rhyme share, in the order reported.
ADJACENT_SYSTEMS: tuple[str, ...] = ("shisanzhe", "xinyun", "pingshui")


@dataclass
class PoemCheck:
    """One poem's results; ``None`` where the check does not apply."""

    lines: list[str]
    form: bool
    acrostic: bool | None = None
    rhyme: bool | None = None
    tone_kept: int = 0
    tone_positions: int = 0
    copied: int | None = None

    @property
    def tone(self) -> float | None:
        return self.tone_kept / self.tone_positions if self.tone_positions else None


@dataclass
class VerseReport:
    poems: list[PoemCheck] = field(default_factory=list)
    distinct_2: float = 0.0
    settings: dict[str, object] = field(default_factory=dict)
    #: system -> share of adjacent rows that rhyme (None: no pairs); see adjacent_rhyme
    adjacent_rhyme: dict[str, float | None] = field(default_factory=dict)
    adjacent_pairs: int = 0

    def summary(self) -> dict[str, object]:
        def share(values: Sequence[bool | None]) -> float | None:
            known = [v for v in values if v is not None]
            return sum(known) / len(known) if known else None

        kept = sum(p.tone_kept for p in self.poems)
        positions = sum(p.tone_positions for p in self.poems)
        lines = sum(len(p.lines) for p in self.poems)
        copied = [p.copied for p in self.poems if p.copied is not None]
        return {
            "poems": len(self.poems),
            "form": share([p.form for p in self.poems]),
            "acrostic": share([p.acrostic for p in self.poems]),
            "rhyme": share([p.rhyme for p in self.poems]),
            "tone": kept / positions if positions else None,
            "tone_positions": positions,
            "copied": sum(copied) / lines if copied and lines else None,
            "distinct_2": self.distinct_2,
            "adjacent_rhyme": self.adjacent_rhyme,
            "adjacent_pairs": self.adjacent_pairs,
            "settings": self.settings,
        }

    def as_json(self) -> str:
        poems = [{**asdict(p), "tone": p.tone} for p in self.poems]
        return json.dumps({"overall": self.summary(), "poems": poems}, ensure_ascii=False)


def _lines(row: str) -> list[str]:
    chars = sorted(set(row))
    keep = dict(zip(chars, text_characters(chars), strict=True))
    lines, current = [], ""
    for ch in row:
        if keep[ch]:
            current += ch
        elif current:
            lines.append(current)
            current = ""
    return [*lines, current] if current else lines


def _rows(block: str, form: Form | None) -> list[str]:
    """The non-empty rows of a block, its title row left out: a first row without
    punctuation followed by rows with it, or (with a form) a first row of rows without any
    when there is one row more than the form has lines."""
    rows = [row for row in block.split("\n") if row.strip()]
    if len(rows) > 1:
        punctuated = [any(p in row for p in PUNCTUATION) for row in rows]
        if (not punctuated[0] and any(punctuated[1:])) or (
            form is not None and not any(punctuated) and len(rows) == len(form.lines) + 1
        ):
            rows = rows[1:]
    return rows


def poem_lines(block: str, form: Form) -> list[str]:
    """The lines of one poem (a block of rows), its title row left out."""
    return [line for row in _rows(block, form) for line in _lines(row)]


def adjacent_rhyme(blocks: Sequence[str], system: str) -> tuple[int, int]:
    """(pairs that rhyme, pairs) of neighbouring rows within each stanza of ``blocks``
    (blocks split further at blank lines) under ``system``: rows whose last runs of text
    characters share a class
    (:meth:`RhymeTable.line_classes`). Rows without text characters and the title row
    (as :func:`poem_lines` finds it without a form) are left out; a character unknown to
    the system rhymes with nothing."""
    table = rhyme_table(system)
    rhyming = pairs = 0
    for block in (stanza for text in blocks for stanza in split_blocks(text)):
        ends = [runs[-1] for row in _rows(block, None) if (runs := _lines(row))]
        classes = [table.line_classes(end) for end in ends]
        for first, second in zip(classes, classes[1:], strict=False):
            pairs += 1
            rhyming += bool(first & second)
    return rhyming, pairs


def split_blocks(text: str) -> list[str]:
    """The blocks of ``text``: its parts between blank lines (spaces only count as blank)."""
    return [b for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if b.strip()]


def read_blocks(path: Path) -> list[str]:
    """The blocks (poems, stanzas) of ``path``: text separated by blank lines, or the text of
    each record of ``generate --format jsonl``, less its prefix (one block each)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CharLSTMError(f"file not found: {path}") from None
    except UnicodeDecodeError:
        raise CharLSTMError(f"{path} is not UTF-8 text") from None
    if path.suffix == ".jsonl":
        blocks = []
        for number, row in enumerate(text.splitlines(), start=1):
            if not row.strip():
                continue
            try:
                record = json.loads(row)
                body = record["text"][len(record.get("prefix", "")) :]
            except (ValueError, KeyError, TypeError):
                raise CharLSTMError(
                    f"{path}:{number} is not a record of generate --format jsonl"
                ) from None
            blocks.append(body)
        return blocks
    return split_blocks(text)


def _tone(
    lines: list[str], form: Form, system: str, rhyme_lines: tuple[int, ...]
) -> tuple[int, int]:
    """(positions kept, positions) under the best of the four standard patterns."""
    table = rhyme_table(system)
    other = tuple(sorted({*rhyme_lines} ^ {0}))
    best = (0, 0)
    for start in (PING, ZE):
        for lines_rhyming in (rhyme_lines, other):
            kept = total = 0
            for line, wanted in zip(lines, tone_pattern(form, lines_rhyming, start), strict=False):
                for pos, tone in wanted.items():
                    if pos < len(line):
                        total += 1
                        kept += tone in table.tones(line[pos])
            if total and (best[1] == 0 or kept / total > best[0] / best[1]):
                best = (kept, total)
    return best


def check_poem(
    lines: list[str],
    settings: VerseSettings,
    contains: Callable[[str], bool] | None = None,
) -> PoemCheck:
    form = settings.template()
    shape = len(lines) == len(form.lines) and all(
        len(line) == want.length for line, want in zip(lines, form.lines, strict=False)
    )
    result = PoemCheck(lines, shape)
    if settings.acrostic:
        result.acrostic = all(
            i < len(lines) and lines[i][:1] == ch for i, ch in enumerate(settings.acrostic)
        )
    system = settings.rhyme_system()
    rhyme_lines = settings.rhyme_lines()
    if rhyme_lines and system != "none":
        table = rhyme_table(system)
        ends = [table.line_classes(lines[i]) for i in rhyme_lines if i < len(lines)]
        shared = frozenset.intersection(*ends) if len(ends) == len(rhyme_lines) else frozenset()
        result.rhyme = bool(shared)
    if settings.keeps_tone() and shape:
        result.tone_kept, result.tone_positions = _tone(lines, form, system, rhyme_lines)
    if contains is not None:
        result.copied = sum(contains(line) for line in lines if len(line) >= 2)
    return result


def distinct_2(poems: Sequence[Sequence[str]]) -> float:
    pairs = [line[i : i + 2] for poem in poems for line in poem for i in range(len(line) - 1)]
    return len(set(pairs)) / len(pairs) if pairs else 0.0


def check_poems(
    poems: Sequence[list[str]],
    settings: VerseSettings,
    contains: Callable[[str], bool] | None = None,
) -> VerseReport:
    """Check every poem (its lines) against ``settings``'s form and constraints."""
    if not settings.active:
        raise SettingError("verse-check needs a form: give {form} or {line_lengths}")
    checks = [check_poem(lines, settings, contains) for lines in poems]
    described = settings.describe()
    kept = {k: described[k] for k in ("form", "acrostic", "rhyme", "rhyme_lines", "tone")}
    return VerseReport(checks, distinct_2(poems), kept)


def check_text(
    blocks: Sequence[str],
    settings: VerseSettings | None = None,
    contains: Callable[[str], bool] | None = None,
) -> VerseReport:
    """``verse-check`` on text split into ``blocks`` (:func:`read_blocks`): the poems against
    ``settings``'s form when one is asked for (:func:`check_poems`), and always the
    adjacent-line rhyme share under each of :data:`ADJACENT_SYSTEMS`."""
    if settings is not None and settings.active:
        form = settings.template()
        report = check_poems([poem_lines(block, form) for block in blocks], settings, contains)
    else:
        report = VerseReport()
    for system in ADJACENT_SYSTEMS:
        rhyming, pairs = adjacent_rhyme(blocks, system)
        report.adjacent_rhyme[system] = rhyming / pairs if pairs else None
        report.adjacent_pairs = pairs
    return report
