"""What the terminal shows: samples streamed as they are written, tables and sparklines."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TextIO

BOLD = "\x1b[1m"
RESET = "\x1b[0m"
SPARKS = "▁▂▃▄▅▆▇█"


def use_style(stream: TextIO) -> bool:
    """Whether to style ``stream``: a terminal, and neither ``NO_COLOR`` nor ``TERM=dumb``."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return False
    return "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class SampleStream:
    """Writes samples in order while they are generated, one after another.

    All sequences advance together, but a terminal shows one at a time: the stream follows
    sequence 0 as its characters arrive; when it ends, it writes what sequence 1 has so far
    and follows sequence 1, and so on. The text written is exactly what printing each
    finished sample in turn would give, only earlier: every sample is its prefix (bold on a
    terminal) and its continuation, ending with one newline (none added when the
    continuation already ends with one).

    ``on_step`` takes one string per sequence and step, ``""`` for a sequence that has
    ended (the ``on_step`` contract of :func:`charlstm.generation.sample.generate`);
    ``close`` writes what is left once generation is over.
    """

    def __init__(
        self, prefixes: Sequence[str], write: Callable[[str], None], style: bool = False
    ) -> None:
        self.prefixes = list(prefixes)  # one per sequence
        self.write = write
        self.style = style
        self.pending = [""] * len(self.prefixes)  # generated, not yet written
        self.ended = [False] * len(self.prefixes)
        self.current = 0  # the sequence being followed
        self.last_char = ["" for _ in self.prefixes]
        self.started = False  # nothing is written before the first step (errors come first)

    def _start(self, row: int) -> None:
        prefix = self.prefixes[row]
        self.write(f"{BOLD}{prefix}{RESET}" if self.style else prefix)
        self.last_char[row] = prefix[-1:]

    def _emit(self, row: int, text: str) -> None:
        if text:
            self.write(text)
            self.last_char[row] = text[-1]

    def _advance(self) -> None:
        """Finish the followed sequences that have ended and move to the next one."""
        while self.current < len(self.prefixes) and self.ended[self.current]:
            row = self.current
            self._emit(row, self.pending[row])
            self.pending[row] = ""
            if self.last_char[row] != "\n":
                self.write("\n")
            self.current += 1
            if self.current < len(self.prefixes):
                self._start(self.current)
                self._emit(self.current, self.pending[self.current])
                self.pending[self.current] = ""

    def on_step(self, chars: list[str]) -> None:
        if not self.started:
            self.started = True
            self._start(0)
        for row, ch in enumerate(chars):
            if ch == "":
                self.ended[row] = True
            elif row == self.current:
                self._emit(row, ch)
            else:
                self.pending[row] += ch
        self._advance()

    def close(self) -> None:
        if not self.started and self.prefixes:
            self.started = True
            self._start(0)
        self.ended = [True] * len(self.prefixes)
        self._advance()


def format_sample(prefix: str, text: str) -> str:
    """One sample as plain text, as :class:`SampleStream` writes it."""
    full = prefix + text
    return full if full.endswith("\n") else full + "\n"


def render_samples(
    prefixes: Sequence[str],
    texts: Sequence[Sequence[str]],
    output_format: str,
    settings: dict[str, Any],
    checkpoint: str,
    seed: int | None,
) -> str:
    """Samples ``texts[p][s]`` (continuations of ``prefixes[p]``) as ``text`` (one
    :func:`format_sample` each) or ``jsonl``: one JSON object per sample, with ``prefix``,
    ``sample`` (its number for that prefix), ``text`` (starting with the prefix),
    ``settings``, ``checkpoint`` and ``seed``."""
    samples = [
        (prefix, index, text)
        for prefix, group in zip(prefixes, texts, strict=True)
        for index, text in enumerate(group)
    ]
    if output_format != "jsonl":
        return "".join(format_sample(prefix, text) for prefix, _, text in samples)
    lines = []
    for prefix, index, text in samples:
        record = {
            "prefix": prefix,
            "sample": index,
            "text": prefix + text,
            "settings": settings,
            "checkpoint": checkpoint,
            "seed": seed,
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)


def sparkline(values: Sequence[float | None], low: float, high: float) -> str:
    """One block character per value, from ``low`` (▁) to ``high`` (█); a space for None."""
    span = high - low
    out = []
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(" ")
            continue
        level = 0 if span <= 0 else round((value - low) / span * (len(SPARKS) - 1))
        out.append(SPARKS[min(max(level, 0), len(SPARKS) - 1)])
    return "".join(out)


def squeeze(values: Sequence[float | None], width: int) -> list[float | None]:
    """At most ``width`` values: the means of equal runs when there are more."""
    if len(values) <= width:
        return list(values)
    out: list[float | None] = []
    for k in range(width):
        run = values[k * len(values) // width : (k + 1) * len(values) // width]
        known = [v for v in run if v is not None]
        out.append(sum(known) / len(known) if known else None)
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned columns under their headers, two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    return "\n".join(lines)
