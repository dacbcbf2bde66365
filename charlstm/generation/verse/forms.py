"""Verse forms as templates, and the settings of ``charlstm generate``'s verse options.

A :class:`Form` is a sequence of :class:`Line`: each a number of characters and the text that
ends it. The classical presets follow ``tang_poems``' own layout, one couplet a row
(``XXXXX，XXXXX。`` and a newline): odd lines end with ``，``, even lines with ``。`` and a
newline; a blank line ends the poem (``Form.end``, one more newline). A free form
(``--line-lengths 7,7,5,7``) ends every line with a newline, and the last line's newline
ends the lyric (the Jay Chou corpus has no blank lines between songs).

Which lines rhyme: the even ones (2, 4, ...), and line 1 where the form's custom has it
(七言: yes, 五言 and free forms: no) or the user asks. The regulated forms (绝句, 律诗) also
keep the tone pattern (平仄) at positions 2, 4, 6 and the last of each line (see
:func:`tone_pattern`).

This module imports no torch: the command line reads its settings without loading it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from charlstm.fields import (
    SettingError,
    build,
    check_fields,
    in_range,
    is_positive,
    optional,
    register,
    setting,
)
from charlstm.generation.verse.rhyme import PING, SYSTEMS, ZE


@dataclass(frozen=True)
class Line:
    """One line of a form: ``length`` text characters, then ``ending`` (punctuation and/or
    a newline)."""

    length: int
    ending: str


@dataclass(frozen=True)
class Form:
    name: str
    lines: tuple[Line, ...]
    regulated: bool = False  # a classical form with a tone pattern
    rhyme: str = "xinyun"  # the default rhyme system
    first_line_rhymes: bool = False  # the form's custom
    #: What follows the last line's ending where the poem ends: never written, but the
    #: decode scores it as part of the last line's break (the line-end score).
    end: str = ""

    def rhyme_lines(self, first_line: bool | None = None) -> tuple[int, ...]:
        """The (0-based) lines that rhyme: every second line, and line 0 if ``first_line``
        (``None``: the form's custom)."""
        first = self.first_line_rhymes if first_line is None else first_line
        return tuple(i for i in range(len(self.lines)) if i % 2 == 1 or (i == 0 and first))


def classical(name: str, lines: int, length: int) -> Form:
    shape = tuple(Line(length, "，" if i % 2 == 0 else "。\n") for i in range(lines))
    return Form(
        name, shape, regulated=True, rhyme="pingshui", first_line_rhymes=length == 7, end="\n"
    )


#: The classical presets, with their pinyin and English aliases.
PRESETS: dict[str, Form] = {
    "五言绝句": classical("五言绝句", 4, 5),
    "七言绝句": classical("七言绝句", 4, 7),
    "五言律诗": classical("五言律诗", 8, 5),
    "七言律诗": classical("七言律诗", 8, 7),
}
ALIASES: dict[str, str] = {
    "wuyan-jueju": "五言绝句",
    "qiyan-jueju": "七言绝句",
    "wuyan-lvshi": "五言律诗",
    "qiyan-lvshi": "七言律诗",
    "jueju5": "五言绝句",
    "jueju7": "七言绝句",
    "lushi5": "五言律诗",
    "lushi7": "七言律诗",
    "quatrain5": "五言绝句",
    "quatrain7": "七言绝句",
    "regulated5": "五言律诗",
    "regulated7": "七言律诗",
    "五言絕句": "五言绝句",
    "七言絕句": "七言绝句",
    "五言律詩": "五言律诗",
    "七言律詩": "七言律诗",
}
MAX_LINES = 64
MAX_LINE_LENGTH = 64


def _form_name(value: str) -> str | None:
    if value in PRESETS or value in ALIASES:
        return None
    shown = [*PRESETS, "jueju5", "jueju7", "lushi5", "lushi7"]
    return f"unknown {{}} {value!r}; choose one of: " + ", ".join(shown)


def parse_line_lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.replace("，", ",").split(",") if part.strip()]
    except ValueError:
        lengths = []
    if not lengths or not all(1 <= n <= MAX_LINE_LENGTH for n in lengths):
        raise SettingError(
            f"{{line_lengths}} takes characters per line separated by commas, each 1 to "
            f"{MAX_LINE_LENGTH}, e.g. 7,7,5,7; not {text!r}"
        )
    if len(lengths) > MAX_LINES:
        raise SettingError(f"{{line_lengths}} takes at most {MAX_LINES} lines")
    return lengths


def _rhyme(value: str) -> str | None:
    return (
        None
        if value in SYSTEMS
        else f"unknown {{}} {value!r}; choose one of: " + ", ".join(SYSTEMS)
    )


@register
@dataclass
class VerseSettings:
    """A poem or lyric in a fixed form (``charlstm generate --form``/``--line-lengths``):
    what :class:`charlstm.generation.verse.decoder.VerseGroup` keeps."""

    form: str | None = setting(
        None,
        "Write a poem of this form, kept exactly: 五言绝句, 七言绝句, 五言律诗, 七言律诗 "
        "(or jueju5, jueju7, lushi5, lushi7). The prefix is its title.",
        "Verse",
        check=optional(_form_name),
        metavar="FORM",
    )
    line_lengths: list[int] | None = setting(
        None,
        "A free form: characters per line, e.g. 7,7,5,7; each line ends with a newline.",
        "Verse",
        parse=parse_line_lengths,
        metavar="N,N,...",
    )
    acrostic: str | None = setting(
        None, "藏头: line i begins with the i-th character, e.g. 春夏秋冬.", "Verse"
    )
    rhyme: str | None = setting(
        None,
        "Rhyme system: pingshui (平水韵), xinyun (中华新韵), shisanzhe (十三辙) or none.",
        "Verse",
        check=optional(_rhyme),
        default_text="pingshui for the classical forms, xinyun for --line-lengths",
    )
    first_line_rhyme: bool | None = setting(
        None,
        "Line 1 rhymes too.",
        "Verse",
        flag=True,
        default_text="on for 七言, off for 五言 and --line-lengths",
    )
    tone: bool | None = setting(
        None,
        "Keep the tone pattern (平仄) at positions 2, 4, 6 and each line's last.",
        "Verse",
        flag=True,
        default_text="on for the classical forms",
    )
    candidates: int = setting(
        4,
        "Write each line this many times and keep the one the model scores best "
        "(1: plain sampling).",
        "Verse",
        check=is_positive,
    )
    copy_filter: bool = setting(
        True,
        "Redraw a line found verbatim in the training text (needs the run's corpus).",
        "Verse",
        flag=True,
    )
    # free-length rhymed lyrics (--rhyme without a form): charlstm.generation.verse.lyrics
    min_line: int | None = setting(
        None,
        "Free-length lyrics (--rhyme without a form): no line shorter than this.",
        "Verse",
        check=optional(in_range(1, MAX_LINE_LENGTH, "[]")),
        default_text="the run's corpus's 5th percentile",
    )
    max_line: int | None = setting(
        None,
        "Free-length lyrics: no line longer than this (its last character rhymes).",
        "Verse",
        check=optional(in_range(1, MAX_LINE_LENGTH, "[]")),
        default_text="the run's corpus's 95th percentile",
    )
    rhyme_every: int | None = setting(
        None,
        "Free-length lyrics: every N-th line of a stanza rhymes (2: lines 2, 4, ...).",
        "Verse",
        check=optional(in_range(1, 8, "[]")),
        default_text="1",
    )

    @property
    def active(self) -> bool:
        """Whether a form was asked for (the other settings refine one)."""
        return self.form is not None or self.line_lengths is not None

    @property
    def free_rhyme(self) -> bool:
        """Free-length rhymed lyrics: a rhyme system and no form (the model ends the lines)."""
        return not self.active and self.rhyme not in (None, "none")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.form is not None and self.line_lengths is not None:
            raise SettingError("give {form} or {line_lengths}, not both")
        lyric = [k for k in ("min_line", "max_line", "rhyme_every") if getattr(self, k) is not None]
        if lyric and not self.free_rhyme:
            where = "drop {form} / {line_lengths}" if self.active else "add {rhyme}"
            raise SettingError(f"{{{lyric[0]}}} is a setting of free-length rhymed lyrics; {where}")
        if self.free_rhyme:
            check_lyrics(self)
            return
        if not self.active:
            refining = [
                name
                for name, value in (
                    ("acrostic", self.acrostic),
                    ("rhyme", self.rhyme),
                    ("first_line_rhyme", self.first_line_rhyme),
                    ("tone", self.tone),
                )
                if value is not None
            ]
            if refining:
                raise SettingError(
                    f"{{{refining[0]}}} is a setting of a verse form; add {{form}} or "
                    "{line_lengths}"
                )
            return
        form = self.template()
        if self.acrostic is not None:
            if self.acrostic == "":
                raise SettingError("{acrostic} is empty")
            if len(self.acrostic) > len(form.lines):
                raise SettingError(
                    f"{{acrostic}} {self.acrostic!r} has {len(self.acrostic)} characters, "
                    f"but {form.name} has {len(form.lines)} lines"
                )
        if self.tone and not form.regulated:
            raise SettingError(
                "{tone} keeps the pattern of a classical form; give {form} (五言绝句, 七言绝句, "
                "五言律诗 or 七言律诗)"
            )
        if self.tone and self.rhyme_system() == "none":
            raise SettingError("{tone} needs a rhyme system for its tones; drop {rhyme} none")

    def template(self) -> Form:
        """The form asked for (``form`` or ``line_lengths``)."""
        if self.form is not None:
            return PRESETS[ALIASES.get(self.form, self.form)]
        if self.line_lengths is None:
            raise SettingError("no verse form: give {form} or {line_lengths}")
        lengths = self.line_lengths
        name = ",".join(str(n) for n in lengths)
        return Form(name, tuple(Line(n, "\n") for n in lengths))

    def rhyme_system(self) -> str:
        return self.rhyme if self.rhyme is not None else self.template().rhyme

    def keeps_tone(self) -> bool:
        if self.tone is None:
            return self.template().regulated and self.rhyme_system() != "none"
        return self.tone

    def rhyme_lines(self) -> tuple[int, ...]:
        if self.rhyme_system() == "none":
            return ()
        return self.template().rhyme_lines(self.first_line_rhyme)

    def describe(self) -> dict[str, object]:
        """What ``--format jsonl`` records: the form and every constraint kept."""
        if self.free_rhyme:
            return describe_lyrics(self)
        form = self.template()
        return {
            "form": form.name,
            "line_lengths": [line.length for line in form.lines],
            "acrostic": self.acrostic,
            "rhyme": self.rhyme_system(),
            "rhyme_lines": [i + 1 for i in self.rhyme_lines()],
            "tone": self.keeps_tone(),
            "candidates": self.candidates,
            "copy_filter": self.copy_filter,
        }


def verse_from(given: dict[str, Any]) -> VerseSettings:
    """The verse settings ``given`` by key (``charlstm generate``'s options, a request body's
    fields); ``active`` False when they ask for no form (``free_rhyme``: lyrics). The settings
    that only refine a form
    are refused without one: those whose default cannot tell given from not given
    (``candidates``, ``copy_filter``) here, the others by :class:`VerseSettings` itself."""
    verse = build(VerseSettings, given)
    if verse.free_rhyme and "copy_filter" in given:  # lyrics: candidates, but no copy filter
        raise SettingError(
            "{copy_filter} is a setting of a verse form; add {form} or {line_lengths}"
        )
    if not verse.active and not verse.free_rhyme:
        for key in ("candidates", "copy_filter"):
            if key in given:
                raise SettingError(
                    f"{{{key}}} is a setting of a verse form; add {{form}} or {{line_lengths}}"
                )
    return verse


def refuse_poem_ends(**used: object) -> None:
    """The form sets a poem's length and where it ends: each setting in ``used`` that was
    given (not None), by key (``length``, ``stop_at``, ``lines``; a body's ``stop``), is
    refused. The one place of this rule, for the command line, the API and the server."""
    for key, value in used.items():
        if value is not None:
            raise SettingError(
                f"{{{key}}} cannot be used with a verse form: the form ({{form}} / "
                "{line_lengths}) sets the length and where the poem ends",
                arguments=(key,),
            )


def check_lyrics(settings: VerseSettings) -> None:
    """The checks of free-length rhymed lyrics that need no model: what a form alone
    refines is refused, and the bounds must leave room for a line (the vocabulary's own
    checks are :class:`~charlstm.generation.verse.lyrics.FreeRhyme`'s)."""
    for name in ("first_line_rhyme", "tone"):
        if getattr(settings, name) is not None:
            raise SettingError(
                f"{{{name}}} is a setting of a verse form; add {{form}} or {{line_lengths}}"
            )
    if settings.acrostic == "":
        raise SettingError("{acrostic} is empty")
    low, high = settings.min_line, settings.max_line
    if low is not None and high is not None and low > high:
        raise SettingError(f"{{min_line}} {low} is over {{max_line}} {high}")
    if settings.acrostic and high is not None and high < 2:
        raise SettingError(
            f"{{max_line}} {high} cannot hold an acrostic line: its first character is the "
            "acrostic's and its last one rhymes (give at least 2)"
        )


def describe_lyrics(settings: VerseSettings) -> dict[str, object]:
    """What ``--format jsonl`` records for free-length rhymed lyrics."""
    return {
        "form": "free",
        "acrostic": settings.acrostic,
        "rhyme": settings.rhyme,
        "rhyme_every": settings.rhyme_every or 1,
        "min_line": settings.min_line,
        "max_line": settings.max_line,
        "candidates": settings.candidates,
    }


def tone_pattern(form: Form, rhyme_lines: tuple[int, ...], start: str) -> list[dict[int, str]]:
    """The tones a regulated form asks for, per line: {position (0-based): 平 or 仄}.

    ``start`` is the tone of line 1's second character (平起 or 仄起). Position 2 (1-based)
    alternates by 对 within a couplet and 粘 across couplets (s, not s, not s, s, s, ...);
    position 4 is the opposite of 2, position 6 the same as 2; the last character is 平 on
    a rhyming line and 仄 on the others. The four standard patterns of the quatrains and
    regulated poems (平起/仄起, line 1 rhyming or not) are exactly these.
    """
    other = {PING: ZE, ZE: PING}
    pattern = []
    for i, line in enumerate(form.lines):
        second = start if (i + 1) // 2 % 2 == 0 else other[start]
        tones = {1: second}
        if line.length > 4:
            tones[3] = other[second]
        if line.length > 6:
            tones[5] = second
        tones[line.length - 1] = PING if i in rhyme_lines else ZE
        pattern.append(tones)
    return pattern


def is_ideograph(char: str) -> bool:
    """A CJK ideograph (a Chinese character)."""
    return unicodedata.name(char, "").startswith(("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH"))


def text_characters(chars: list[str]) -> list[bool]:
    """Which of ``chars`` may stand inside a line: the Chinese characters when there are
    any, else the letters (never punctuation, digits, spaces or newlines)."""
    if any(is_ideograph(ch) for ch in chars):
        return [is_ideograph(ch) for ch in chars]
    return [unicodedata.category(ch).startswith("L") for ch in chars]
