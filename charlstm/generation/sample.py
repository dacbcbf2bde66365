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
from charlstm.generation.decoding import (
    CountPenalty,
    RepetitionPenalty,
    draw,
    filter_logits,
    next_chars,
    scored_next_chars,
    uniforms,
)
from charlstm.generation.settings import (
    CacheConfig,
    DynamicConfig,
    GenerateRequest,
    LogitRules,
    SamplingConfig,
)
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
    check_prefixes(vocab, prefixes)
    check_stop(vocab, stop_at, lines)
    was_training = model.training
    model.eval()
    sequences = [p for p in prefixes for _ in range(num_samples)]
    # Dynamic evaluation needs gradients; otherwise nothing here does.
    with torch.no_grad() if dynamic is not None else torch.inference_mode():
        try:
            group = RowGroup(vocab, sequences, length, config, seed, stop_at, lines, model.device)
            fold = folds(len(sequences), length, len(vocab))
            streams = open_streams(model, len(sequences), cache, dynamic, mixture, fold)
            rows = _run(streams, group, on_step)
        finally:
            model.train(was_training)
    texts = [vocab.decode(row) for row in rows]
    return [texts[p * num_samples : (p + 1) * num_samples] for p in range(len(prefixes))]


def check_prefixes(vocab: Vocab, prefixes: Sequence[str]) -> None:
    """Every prefix has at least one character, and only characters the model knows."""
    if not prefixes or any(p == "" for p in prefixes):
        raise SettingError("the prefix is empty; give at least one character with {prefixes}")
    unknown = list(dict.fromkeys(ch for p in prefixes for ch in vocab.missing(p)))
    if unknown:
        raise CharLSTMError(
            f"prefix has characters not in the model's vocabulary: {show_chars(unknown)}"
        )


def folds(batch: int, length: int, vocab_size: int) -> bool:
    """Whether the steps of ``batch`` rows of ``length`` characters use the model's
    :meth:`~charlstm.model.CharLSTM.step_table`: when they compute at least V rows."""
    return batch * length >= vocab_size


def _run(
    streams: ModelStreams | MixedStreams,
    group: RowGroup,
    on_step: Callable[[list[str]], None] | None,
) -> list[list[int]]:
    """The generation loop: every row of ``group`` in ``streams``, rows 0..N-1; returns the
    generated indices of every row."""
    if group.length == 0:
        return group.rows()
    for rows, x in group.prefix_reads():
        index = torch.tensor(rows, device=streams.device)
        group.choose_first(rows, streams.read(index, x.to(streams.device))[1])
    while True:
        shown = group.accept(on_step is not None)
        if on_step is not None:
            on_step(shown)
        if group.finished:
            return group.rows()
        group.choose(streams.step(group.last)[1])


class RowGroup:
    """The rows of one :func:`generate` call and everything that is theirs alone: the
    random generator (seeded with ``seed``), the repetition penalty, OpenAI's ``rules``
    (frequency and presence penalties with each row's counts, ``logit_bias``), where each
    row stops, and the characters written so far.

    The caller owns the model's streams and drives the group: it reads the prefixes in
    :meth:`prefix_reads`'s order and hands each read's logits to :meth:`choose_first`;
    then, step by step, :meth:`accept` records the characters just chosen (``last``,
    (N,)) and, unless the group has :attr:`finished`, the caller steps the streams with
    ``last`` and hands the logits (N, V) to :meth:`choose`. The draws depend only on these
    logits and on the group's own generator, so the group writes the same text whether
    its rows are the whole batch (:func:`generate`) or a part of a larger one
    (``charlstm serve``). Rows that have ended still draw, so that the generator advances
    exactly as when no row has ended.

    With ``top_logprobs`` (an int k, 0 or more) every choice also keeps, per row, the
    log-probability of the character chosen and the k likeliest characters with theirs,
    in the distribution it was drawn from (:func:`~charlstm.generation.decoding.scored_next_chars`);
    :meth:`scores` reads those of the last choice. Keeping them changes no character.
    """

    def __init__(
        self,
        vocab: Vocab,
        sequences: Sequence[str],
        length: int,
        config: SamplingConfig,
        seed: int | None,
        stop_at: str | None,
        lines: int | None,
        device: torch.device,
        *,
        rules: LogitRules | None = None,
        top_logprobs: int | None = None,
    ) -> None:
        self.vocab, self.sequences, self.config = vocab, list(sequences), config
        self.length = length
        self.device = device
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(seed)
        batch = len(self.sequences)
        self.penalty = None
        if config.repetition_penalty != 1.0:
            self.penalty = RepetitionPenalty(config, batch, len(vocab), device)
        self.counts = self.bias = None
        if rules is not None and rules.penalizes:
            self.counts = CountPenalty(
                rules.frequency_penalty, rules.presence_penalty, batch, len(vocab), device
            )
        if rules is not None and rules.logit_bias:
            self.bias = torch.zeros(len(vocab), device=device)  # (V,)
            for index, value in rules.logit_bias.items():
                self.bias[index] = value
        self.top_logprobs = top_logprobs
        self.logprob = torch.zeros(batch, device=device)  # (N,) of the last choice
        self.top: tuple[torch.Tensor, torch.Tensor] | None = None  # (N, k) values, indices
        self.stop = None
        if stop_at is not None or lines is not None:
            self.stop = _Stop(vocab, stop_at, lines, batch, length, device)
        self.out = torch.empty((batch, length), dtype=torch.long, device=device)  # (N, length)
        self.last = torch.empty(batch, dtype=torch.long, device=device)  # (N,)
        self.steps = 0  # characters accepted per row
        self.finished = length == 0

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def plain(self) -> bool:
        """Whether its rows choose by the shared settings alone (no state per row, nothing
        kept): then :func:`choose_together` may choose for it beside other groups."""
        return (
            self.penalty is None
            and self.counts is None
            and self.bias is None
            and self.top_logprobs is None
        )

    def prefix_reads(self) -> list[tuple[list[int], torch.Tensor]]:
        """The rows of each prefix length, shortest first, and their prefixes ``x`` (T, R)."""
        reads = []
        for group_length in sorted({len(p) for p in self.sequences}):
            rows = [i for i, p in enumerate(self.sequences) if len(p) == group_length]
            x = torch.stack([self.vocab.encode(self.sequences[i]) for i in rows], dim=1)
            reads.append((rows, x))
        return reads

    def choose_first(self, rows: list[int], logits: torch.Tensor) -> None:
        """Choose the first character of ``rows`` from the logits (R, V) after their prefix."""
        index = torch.tensor(rows, device=self.device)
        if self.bias is not None:  # (the penalties have counted nothing yet)
            logits = logits + self.bias
        self.last[index] = self._next(logits, index)

    def accept(self, show: bool = True) -> list[str]:
        """Record ``last`` as every row's next character; with ``show``, return each row's
        character, ``""`` for a row that had already ended. Sets :attr:`finished` when
        every row has ended or has ``length`` characters."""
        t = self.steps
        self.out[:, t] = self.last
        shown: list[str] = []
        if show:
            chars = self.vocab.idx_to_char
            last = self.last
            shown = self.stop.shown(last, chars) if self.stop else [chars[i] for i in last.tolist()]
        self.steps = t + 1
        ended = self.stop is not None and self.stop.update(self.last, t)
        self.finished = ended or self.steps == self.length
        return shown

    def choose(self, logits: torch.Tensor) -> None:
        """Choose every row's next character from its logits (N, V) after ``last``."""
        if self.penalty is not None:
            self.penalty.push(self.last)
            logits = self.penalty(logits)
        if self.counts is not None:
            self.counts.push(self.last)
            logits = self.counts(logits)
        if self.bias is not None:
            logits = logits + self.bias
        self.last = self._next(logits)

    def _next(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The characters chosen from ``logits`` (R, V) for ``rows`` (all rows: None),
        keeping their scores when asked to."""
        if self.top_logprobs is None:
            return next_chars(logits, self.config, self.generator)
        chosen, log_p = scored_next_chars(logits, self.config, self.generator)
        logprob = log_p.gather(1, chosen[:, None])[:, 0]
        values, indices = log_p.topk(self.top_logprobs, dim=-1)  # (R, k)
        if rows is None:
            self.logprob, self.top = logprob, (values, indices)
        else:
            if self.top is None:
                k, n = self.top_logprobs, len(self)
                self.top = (log_p.new_zeros(n, k), indices.new_zeros(n, k))
            self.logprob[rows] = logprob
            self.top[0][rows], self.top[1][rows] = values, indices
        return chosen

    def scores(self) -> list[tuple[float, list[tuple[str, float]]]]:
        """Per row, the last choice's log-probability and the ``top_logprobs`` likeliest
        characters with theirs (characters that could not be drawn left out)."""
        assert self.top is not None
        chars = self.vocab.idx_to_char
        values, indices = self.top[0].tolist(), self.top[1].tolist()
        return [
            (lp, [(chars[i], v) for v, i in zip(vs, ix, strict=True) if v != float("-inf")])
            for lp, vs, ix in zip(self.logprob.tolist(), values, indices, strict=True)
        ]

    def rows(self) -> list[list[int]]:
        """The indices each row has generated (cut where it stopped)."""
        rows = self.out[:, : self.steps].tolist()
        return self.stop.cut(rows) if self.stop is not None else rows


def choose_together(groups: Sequence[RowGroup], logits: torch.Tensor) -> None:
    """What ``group.choose(part)`` does for each of ``groups``, whose rows are consecutive
    in ``logits`` (N, V) in that order, with the filtering and the draw done once for all
    rows: each group still draws its own uniform numbers from its own generator. The
    groups share one :class:`SamplingConfig` without repetition penalty (the rules are
    row by row, so a row's character is the one ``choose`` would give it)."""
    config = groups[0].config
    if config.greedy:
        chosen = logits.argmax(dim=-1)
    else:
        probs = torch.softmax(filter_logits(logits.float(), config), dim=-1)
        u = torch.cat([uniforms(len(g), g.generator, logits.device) for g in groups])
        chosen = draw(probs, u=u)
    start = 0
    for group in groups:
        group.last = chosen[start : start + len(group)]
        start += len(group)


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
