"""Sampling as the CLI sees it: its small parsing helpers, and the names it imports.

Generation itself is three modules: the decoding rules (:mod:`charlstm.decoding`), the
generation loop (:mod:`charlstm.generation`) and evaluation-time adaptation
(:mod:`charlstm.adaptation`). Their public names stay importable from here.
"""

from __future__ import annotations

import secrets

from charlstm.decoding import (
    DEFAULT_PENALTY_WINDOW,
    RepetitionPenalty,
    SamplingConfig,
    draw,
    filter_logits,
    next_chars,
)
from charlstm.errors import CharLSTMError
from charlstm.generation import check_request, check_stop, generate

__all__ = [
    "DEFAULT_PENALTY_WINDOW",
    "ESCAPES",
    "RepetitionPenalty",
    "SamplingConfig",
    "check_request",
    "check_stop",
    "draw",
    "filter_logits",
    "generate",
    "new_seed",
    "next_chars",
    "parse_char",
]


def new_seed() -> int:
    """A fresh random seed, to be reported so that a run can be repeated."""
    return secrets.randbelow(2**31)


ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def parse_char(text: str, option: str = "--stop-at") -> str:
    """One character from the command line, where ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` are
    accepted for a newline, a tab, a carriage return and a backslash."""
    char = ESCAPES.get(text, text)
    if len(char) != 1:
        raise CharLSTMError(f"{option} takes one character (or \\n, \\t), not {text!r}")
    return char
