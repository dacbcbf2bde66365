"""Writing text: warm the state on a prefix, then feed back one character at a time.

The distribution each step draws from is the model's; for a run trained with
``--ngram-mix``, the LSTM interpolated with its n-gram (:mod:`charlstm.ngram.mixture`); with
``cache`` / ``dynamic``, from weights that have learnt from this sequence's text so far
(dynamic evaluation), and mixed with the continuous cache of that text
(:mod:`charlstm.generation.adaptation`; the streams that read it:
:mod:`charlstm.generation.streams`). ``log p`` then takes the place of the logits in the
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

import torch

from charlstm.data.corpus import Vocab, show_chars
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError, check_value
from charlstm.generation.decoding import RepetitionPenalty, next_chars
from charlstm.generation.settings import CacheConfig, DynamicConfig, GenerateRequest, SamplingConfig
from charlstm.generation.streams import MixedStreams, ModelStreams, open_streams
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture


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
    config = config or SamplingConfig()
    config.check_vocab(len(vocab))
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
    streams: ModelStreams | MixedStreams,
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
    streams: ModelStreams | MixedStreams,
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
