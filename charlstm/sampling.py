"""Sampling's public names in one place, and :func:`new_seed`.

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
from charlstm.generation import (
    ESCAPES,
    GenerateRequest,
    check_request,
    check_stop,
    generate,
    parse_char,
    read_prefix_file,
)

__all__ = [
    "DEFAULT_PENALTY_WINDOW",
    "ESCAPES",
    "GenerateRequest",
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
    "read_prefix_file",
]


def new_seed() -> int:
    """A fresh random seed, to be reported so that a run can be repeated."""
    return secrets.randbelow(2**31)
