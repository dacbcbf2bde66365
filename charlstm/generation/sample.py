"""Writing text: warm the state on a prefix, then feed back one character at a time.

The distribution each step draws from is the model's; for a run trained with
``--ngram-mix``, the LSTM interpolated with its n-gram (:mod:`charlstm.ngram.mixture`); with
``cache`` / ``dynamic``, from weights that have learnt from this sequence's text so far
(dynamic evaluation), and mixed with the continuous cache of that text
(:mod:`charlstm.generation.adaptation`). ``log p`` then takes the place of the logits in the
decoding rules (:mod:`charlstm.generation.decoding`). At temperature 1 without filters, a
character is drawn from exactly the distribution ``charlstm eval`` (with the same options) scores.

A sequence ends after ``length`` characters, or earlier with (and including) the first
``stop_at`` character it generates, or its ``lines``-th newline, whichever comes first.

All samples of all prefixes advance together as one batch of ``N = P * S`` rows (P
prefixes, S samples each). Prefixes are read in one pass per prefix length; the steps after
that are :meth:`CharLSTM.step <charlstm.model.CharLSTM.step>` for all rows at once, and the
chosen indices stay in tensors until the end: nothing per character goes through Python
lists unless a streaming callback asks for the characters. With dynamic evaluation every
row has weights of its own, so each step loops over the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from charlstm.config import (
    SettingError,
    at_least_zero,
    check_fields,
    check_value,
    is_positive,
    optional,
    register,
    seed_range,
    setting,
)
from charlstm.data.corpus import Vocab, show_chars
from charlstm.errors import CharLSTMError
from charlstm.generation.adaptation import (
    AdaptiveStreams,
    CacheConfig,
    DynamicConfig,
    LearningStreams,
    Streams,
)
from charlstm.generation.decoding import RepetitionPenalty, SamplingConfig, next_chars
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture


class ModelStreams:
    """N sequences read by the model as it is: each prefix in one pass, then one
    :meth:`~charlstm.model.CharLSTM.step` per character for all rows at once.

    With ``fold`` the steps use the model's :meth:`~charlstm.model.CharLSTM.step_table`
    (built once, after the prefixes): worth it when the run computes at least V rows.
    """

    def __init__(self, model: CharLSTM, batch: int, fold: bool = False) -> None:
        self.model = model
        self.device = model.device
        self.fold = fold
        self.state = model.init_state(batch)  # (L, N, H) each
        self.table: torch.Tensor | None = None

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = self.state[0][:, rows], self.state[1][:, rows]
        features, (h, c) = self.model.features(x, (h, c))  # (T, R, H)
        self.state[0][:, rows], self.state[1][:, rows] = h, c
        return features, self.model.logits(features[-1])

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fold and self.table is None:
            self.table = self.model.step_table()  # (V, 4H)
        logits, self.state = self.model.step(x, self.state, self.table)
        return self.state[0][-1], logits


def open_streams(
    model: CharLSTM,
    batch: int,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    mixture: NgramMixture | None = None,
    fold: bool = False,
) -> ModelStreams | AdaptiveStreams:
    """The streams that give each row's next-character distribution: the model's own
    (logits), or with ``cache`` / ``dynamic`` / ``mixture`` the adapted one (log-probs)."""
    if cache is None and dynamic is None and mixture is None:
        return ModelStreams(model, batch, fold)
    streams: Streams = ModelStreams(model, batch, fold)
    if dynamic is not None:
        streams = LearningStreams(model, batch, dynamic)
    return AdaptiveStreams(streams, model, batch, cache, mixture)


ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def parse_char(text: str) -> str:
    """One character from the command line, where ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` are
    accepted for a newline, a tab, a carriage return and a backslash."""
    char = ESCAPES.get(text, text)
    if len(char) != 1:
        raise SettingError(f"{{stop_at}} takes one character (or \\n, \\t), not {text!r}")
    return char


def _format(value: str) -> str | None:
    return None if value in ("text", "jsonl") else f"unknown {{}} {value!r}; choose text or jsonl"


@register
@dataclass
class GenerateRequest:
    """What ``charlstm generate`` writes, from what, and where (the sampling controls are a
    :class:`~charlstm.generation.decoding.SamplingConfig`, the adaptation a
    :class:`~charlstm.generation.adaptation.CacheConfig` /
    :class:`~charlstm.generation.adaptation.DynamicConfig`)."""

    prefixes: list[str] = setting(
        [], "Text to continue (repeatable).", "Input", option="--prefix", repeat=True
    )
    prefix_file: Path | None = setting(
        None, "A UTF-8 file of prefixes, one per line (after any --prefix).", "Input"
    )
    length: int = setting(
        100,
        "Characters to generate after the prefix (at most, with --stop-at/--lines).",
        "Length",
        check=at_least_zero(),
    )
    stop_at: str | None = setting(
        None,
        "End each sample with the first CHAR it generates ('\\n' for a newline).",
        "Length",
        parse=parse_char,
        metavar="CHAR",
    )
    lines: int | None = setting(
        None,
        "End each sample at its N-th newline.",
        "Length",
        check=optional(is_positive),
        metavar="N",
    )
    num_samples: int = setting(
        1, "Samples per prefix (all generated as one batch).", "Sampling", check=is_positive
    )
    seed: int | None = setting(
        None,
        "Seed: the same seed gives the same text.",
        "Sampling",
        check=optional(seed_range),
        default_text="a random one, recorded by --format jsonl",
    )
    out: Path | None = setting(None, "Write the samples to FILE instead of the terminal.", "Output")
    output_format: str = setting(
        "text",
        "text, or jsonl: one JSON object per sample (prefix, text, settings, checkpoint, seed).",
        "Output",
        option="--format",
        check=_format,
    )

    def validate(self) -> GenerateRequest:
        check_fields(self)
        if not self.prefixes and self.prefix_file is None:
            raise SettingError("give a prefix to continue, e.g. {prefixes} 分开, or {prefix_file}")
        return self

    def all_prefixes(self) -> list[str]:
        """The ``prefixes``, then those of ``prefix_file``."""
        from_file = read_prefix_file(self.prefix_file) if self.prefix_file is not None else []
        return list(self.prefixes) + from_file


def read_prefix_file(path: str | Path) -> list[str]:
    """Prefixes from a UTF-8 text file, one per line; empty lines are skipped."""
    path = Path(path)
    if path.is_dir():
        raise CharLSTMError(f"prefix file is a directory: {path}")
    if not path.is_file():
        raise CharLSTMError(f"prefix file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CharLSTMError(f"prefix file {path} is not UTF-8 text") from err
    except OSError as err:
        raise CharLSTMError(f"cannot read prefix file {path}: {err.strerror}") from err
    prefixes = [line for line in text.splitlines() if line.strip()]
    if not prefixes:
        raise CharLSTMError(f"prefix file {path} has no prefixes (one per line)")
    return prefixes


def check_request(length: int, num_samples: int, seed: int | None) -> None:
    """How much to generate, and from which seed: errors before any work is done."""
    for name, value in (("length", length), ("num_samples", num_samples), ("seed", seed)):
        check_value(GenerateRequest, name, value)


def check_stop(vocab: Vocab, stop_at: str | None, lines: int | None) -> None:
    if stop_at is not None:
        if len(stop_at) != 1:
            raise SettingError(f"{{stop_at}} takes one character, not {stop_at!r}")
        if stop_at not in vocab:
            raise SettingError(
                f"{{stop_at}} {stop_at!r} is not in the model's vocabulary, so it never appears"
            )
    if lines is not None:
        check_value(GenerateRequest, "lines", lines)
        if "\n" not in vocab:
            raise SettingError(
                "{lines} needs newlines, but this model's vocabulary has none "
                "(it was trained with {newlines} space)"
            )


def generate(
    model: CharLSTM,
    vocab: Vocab,
    prefixes: Sequence[str],
    length: int = 100,
    config: SamplingConfig | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    on_step: Callable[[list[str]], None] | None = None,
    stop_at: str | None = None,
    lines: int | None = None,
    *,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    mixture: NgramMixture | None = None,
) -> list[list[str]]:
    """Continue each prefix ``num_samples`` times by up to ``length`` characters.

    Returns ``texts[p][s]``: the continuation (without the prefix) of prefix ``p``, sample
    ``s``. All ``P * S`` sequences run as one batch, row ``p * S + s``. ``seed`` seeds a
    generator of its own (``None``: torch's global one); the same seed gives the same text
    for the same prefixes, settings, backend and device. ``on_step`` receives, at each step,
    one string per row: the character chosen, or ``""`` for a row that has already ended.
    ``cache`` / ``dynamic`` adapt each row to its own text as it is written (see the module
    docstring); ``model`` itself is never changed. ``mixture`` interpolates the LSTM with
    the run's n-gram (:mod:`charlstm.ngram.mixture`) before anything else.
    """
    config = (config or SamplingConfig()).validate(len(vocab))
    cache = cache.validate() if cache is not None else None
    dynamic = dynamic.validate() if dynamic is not None else None
    check_request(length, num_samples, seed)
    if not prefixes or any(p == "" for p in prefixes):
        raise SettingError("the prefix is empty; give at least one character with {prefixes}")
    unknown = list(dict.fromkeys(ch for p in prefixes for ch in vocab.missing(p)))
    if unknown:
        raise CharLSTMError(
            f"prefix has characters not in the model's vocabulary: {show_chars(unknown)}"
        )
    check_stop(vocab, stop_at, lines)
    was_training = model.training
    model.eval()
    batch = len(prefixes) * num_samples
    fold = batch * length >= len(vocab)  # the fold pays for itself (see CharLSTM.step_table)
    # Dynamic evaluation needs gradients; otherwise nothing here does.
    with torch.no_grad() if dynamic is not None else torch.inference_mode():
        try:
            streams = open_streams(model, batch, cache, dynamic, mixture, fold)
            rows = _run(
                streams, vocab, prefixes, length, config, num_samples, seed, on_step, stop_at, lines
            )
        finally:
            model.train(was_training)
    texts = [vocab.decode(row) for row in rows]
    return [texts[p * num_samples : (p + 1) * num_samples] for p in range(len(prefixes))]


def _run(
    streams: ModelStreams | AdaptiveStreams,
    vocab: Vocab,
    prefixes: Sequence[str],
    length: int,
    config: SamplingConfig,
    num_samples: int,
    seed: int | None,
    on_step: Callable[[list[str]], None] | None,
    stop_at: str | None,
    lines: int | None,
) -> list[list[int]]:
    """The generation loop; returns the generated indices of every row."""
    device = streams.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    batch = len(prefixes) * num_samples
    if length == 0:
        return [[] for _ in range(batch)]
    penalty = None
    if config.repetition_penalty != 1.0:
        penalty = RepetitionPenalty(config, batch, len(vocab), device)
    sequences = [p for p in prefixes for _ in range(num_samples)]
    last = _read_prefixes(streams, vocab, sequences, config, generator)  # (N,)
    out = torch.empty((batch, length), dtype=torch.long, device=device)  # (N, length)
    stop = None
    if stop_at is not None or lines is not None:
        stop = _Stop(vocab, stop_at, lines, batch, length, device)
    chars = vocab.idx_to_char
    steps = length
    for t in range(length):
        out[:, t] = last
        if on_step is not None:
            on_step(stop.shown(last, chars) if stop else [chars[i] for i in last.tolist()])
        if stop is not None and stop.update(last, t):
            steps = t + 1
            break
        if t == length - 1:
            break
        logits = streams.step(last)[1]
        if penalty is not None:
            penalty.push(last)
            logits = penalty(logits)
        last = next_chars(logits, config, generator)
    rows = out[:, :steps].tolist()
    return stop.cut(rows) if stop is not None else rows


def _read_prefixes(
    streams: ModelStreams | AdaptiveStreams,
    vocab: Vocab,
    sequences: list[str],
    config: SamplingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Read each row's prefix in one pass (rows of different lengths one group each) and
    choose every row's first character (N,)."""
    device = streams.device
    first = torch.empty(len(sequences), dtype=torch.long, device=device)
    for group_length in sorted({len(p) for p in sequences}):
        rows = [i for i, p in enumerate(sequences) if len(p) == group_length]
        x = torch.stack([vocab.encode(sequences[i]) for i in rows], dim=1).to(device)  # (T, N')
        index = torch.tensor(rows, device=device)
        _, logits = streams.read(index, x)
        first[index] = next_chars(logits, config, generator)  # nothing to penalise yet
    return first


class _Stop:
    """Where each row ends: after (and with) its first ``stop_at`` character or its
    ``lines``-th newline; ``ends`` (N,) holds each row's length once it has ended."""

    def __init__(
        self,
        vocab: Vocab,
        stop_at: str | None,
        lines: int | None,
        batch: int,
        length: int,
        device: torch.device,
    ) -> None:
        self.stop_index = vocab.char_to_idx[stop_at] if stop_at is not None else -1
        self.newline = vocab.char_to_idx["\n"] if lines is not None else -1
        self.lines = lines
        self.newlines = torch.zeros(batch, dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.ends = torch.full((batch,), length, dtype=torch.long, device=device)

    def shown(self, last: torch.Tensor, chars: list[str]) -> list[str]:
        """Each row's character of this step, ``""`` for a row that has already ended."""
        ended = self.done.tolist()
        return ["" if end else chars[i] for i, end in zip(last.tolist(), ended, strict=True)]

    def update(self, last: torch.Tensor, t: int) -> bool:
        """Account for step ``t``'s characters (N,); whether every row has now ended."""
        hit = last == self.stop_index
        if self.lines is not None:
            self.newlines += last == self.newline
            hit |= self.newlines >= self.lines
        self.ends = torch.where(hit & ~self.done, t + 1, self.ends)
        self.done |= hit
        return bool(self.done.all())

    def cut(self, rows: list[list[int]]) -> list[list[int]]:
        return [row[:end] for row, end in zip(rows, self.ends.tolist(), strict=True)]
