"""Running text, the engine's plain group: :class:`TextGroup` writes every row until its
length or its stop (a stop character, ``lines`` newlines, OpenAI's stop strings), keeps
each choice's scores for ``logprobs``, and shows each step's characters as they may be
shown (:class:`StopStrings` holds back what may begin a stop string). Groups that only
sample (:attr:`TextGroup.plain`) are chosen for together (:func:`choose_together`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from charlstm.data.corpus import Vocab
from charlstm.generation.decoding import uniforms
from charlstm.generation.rules import Temperature, TopK, TopP, apply, choose, logits_rules, pick

if TYPE_CHECKING:
    from charlstm.generation.engine import Engine, Request

#: A character's log-probability and the likeliest characters with theirs.
Score = tuple[float, list[tuple[str, float]]]


def prefix_reads(vocab: Vocab, sequences: Sequence[str]) -> list[tuple[list[int], torch.Tensor]]:
    """The rows of each prefix length, shortest first, and their prefixes ``x`` (T, R)."""
    reads = []
    for length in sorted({len(s) for s in sequences}):
        rows = [i for i, s in enumerate(sequences) if len(s) == length]
        reads.append((rows, torch.stack([vocab.encode(sequences[i]) for i in rows], dim=1)))
    return reads


class TextGroup:
    """Running text: every row writes until ``length`` characters or its stop.

    The rows' first characters are drawn from the logits after their prefixes, a
    prefix length at a time (shortest first, as they are read); then each step draws one
    character per row. Rows that have ended still draw, so that the generator advances
    exactly as when no row has ended. With ``top_logprobs`` every choice also keeps each
    row's score (:meth:`scores`); keeping them changes no character."""

    def __init__(
        self,
        request: Request,
        vocab: Vocab,
        device: torch.device,
        constraints: list[Any] | None = None,
    ) -> None:
        self.request, self.vocab, self.device = request, vocab, device
        self.sequences = request.sequences
        self.size = len(self.sequences)
        self.length = request.length
        self.generator = None
        if request.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(request.seed)
        self.greedy = request.sampling.greedy
        self.rules = logits_rules(
            request.sampling, request.penalties, self.size, len(vocab), device, constraints
        )
        self.stop = None
        if request.stop_at is not None or request.lines is not None:
            self.stop = Stop(vocab, request.stop_at, request.lines, self.size, self.length, device)
        self.strings = StopStrings(request.stop, self.size) if request.stop else None
        self.out = torch.empty((self.size, self.length), dtype=torch.long, device=device)
        self.last = torch.empty(self.size, dtype=torch.long, device=device)
        self.top_logprobs = request.top_logprobs
        self.logprob = torch.zeros(self.size, device=device)  # (N,) of the last choice
        self.top: tuple[torch.Tensor, torch.Tensor] | None = None  # (N, k) values, indices
        self.first = torch.empty((self.size, len(vocab)), device=device)
        self.order: list[int] = []  # rows in the order their prefixes were read
        self.steps = 0
        self.finished = self.length == 0

    @property
    def plain(self) -> bool:
        """Whether its rows choose by the sampling settings alone (no state per row,
        nothing kept): then :class:`Engine` may choose for it beside other plain groups."""
        return self.top_logprobs is None and all(isinstance(r, _SHARED) for r in self.rules)

    def reads(self) -> list[tuple[list[int], torch.Tensor]]:
        return [] if self.finished else prefix_reads(self.vocab, self.sequences)

    def read(self, rows: list[int], logits: torch.Tensor) -> None:
        self.first[torch.tensor(rows, device=self.device)] = logits.float()
        self.order += rows

    def start(self, engine: Engine) -> None:
        """Draw every row's first character, the uniform numbers in reading order."""
        if self.finished:
            return
        u = None
        if not self.greedy:
            u = torch.empty((self.size, 1), device=self.device)
            u[torch.tensor(self.order, device=self.device)] = uniforms(
                self.size, self.generator, self.device
            )
        self.last = self._next(self.first, u)
        del self.first
        self._accept()

    def choose(self, logits: torch.Tensor, engine: Engine) -> None:
        for rule in self.rules:
            rule.push(self.last, None)
        self.last = self._next(logits)
        self._accept()

    def _next(self, logits: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        filtered = apply(self.rules, logits)
        chosen = choose(filtered, self.greedy, self.generator, u)
        if self.top_logprobs is not None:
            source = logits.float() if self.greedy else filtered
            self.keep_scores(chosen, torch.log_softmax(source, dim=-1))
        return chosen

    def keep_scores(self, chosen: torch.Tensor, log_p: torch.Tensor) -> None:
        self.logprob = log_p.gather(1, chosen[:, None])[:, 0]
        self.top = log_p.topk(self.top_logprobs or 0, dim=-1)

    def _accept(self, chosen: list[int] | None = None) -> None:
        """Record ``last`` as every row's next character (``chosen``: the same as a list,
        when the caller has it); :attr:`finished` once every row has ended or has
        ``length`` characters."""
        self.last_list = chosen
        t = self.steps
        self.out[:, t] = self.last
        self.steps = t + 1
        ended = self.stop is not None and self.stop.update(self.last, t)
        self.finished = ended or self.steps == self.length
        self.shown_now: tuple[list[str], list[list[Score]] | None] | None = None
        if self.strings is not None:  # a row's end depends on its text
            self.visible()

    def visible(self) -> tuple[list[str], list[list[Score]] | None]:
        """What each row shows of the last step (and, with ``top_logprobs``, the scores of
        the characters shown): its character, ``""`` once it has ended; with stop strings,
        text that may be the start of one waits until it is known not to be."""
        if self.shown_now is not None:
            return self.shown_now
        chars, last = self.vocab.idx_to_char, self.last_list
        if last is None:
            last = self.out[:, self.steps - 1].tolist()
        if self.stop is not None:
            texts = self.stop.shown(last, chars)
        else:
            texts = [chars[i] for i in last]
        scores = None
        if self.top_logprobs is not None:
            scores = [[s] if c else [] for c, s in zip(texts, self.scores(), strict=True)]
        if self.strings is not None:
            texts, scores = self.strings.hold(texts, scores)
            self.finished = self.finished or self.strings.all_done
        self.shown_now = (texts, scores)
        return self.shown_now

    def held(self) -> tuple[list[str], list[list[Score]] | None] | None:
        """Once finished: the text stop strings still hold back (rows that ended by length
        while it could have begun one), or ``None``."""
        if self.strings is None or not any(self.strings.pending):
            return None
        scores = self.strings.pending_scores if self.top_logprobs is not None else None
        return list(self.strings.pending), scores

    def shown(self) -> list[list[str]]:
        """What the last step wrote, one string per row (none before the first step;
        once finished, what stop strings held back)."""
        if self.steps == 0:
            return []
        shown = [self.visible()[0]]
        held = self.held() if self.finished else None
        return shown + ([held[0]] if held is not None else [])

    def scores(self) -> list[Score]:
        """Per row, the last choice's log-probability and the ``top_logprobs`` likeliest
        characters with theirs (characters that could not be drawn left out)."""
        assert self.top is not None
        chars = self.vocab.idx_to_char
        values, indices = self.top[0].tolist(), self.top[1].tolist()
        return [
            (lp, [(chars[i], v) for v, i in zip(vs, ix, strict=True) if v != float("-inf")])
            for lp, vs, ix in zip(self.logprob.tolist(), values, indices, strict=True)
        ]

    def reasons(self) -> list[str]:
        """Why each row ended: ``stop`` (a stop character, ``lines`` or a stop string) or
        ``length``."""
        done = self.stop.done.tolist() if self.stop is not None else [False] * self.size
        if self.strings is not None:
            done = [d or hit for d, hit in zip(done, self.strings.done, strict=True)]
        return ["stop" if d else "length" for d in done]

    def texts(self) -> list[str]:
        """What each row wrote (cut where it stopped; before a stop string)."""
        rows = self.out[:, : self.steps].tolist()
        if self.stop is not None:
            rows = self.stop.cut(rows)
        texts = [self.vocab.decode(row) for row in rows]
        if self.strings is not None:
            cuts = self.strings.cuts
            texts = [t if cut is None else t[:cut] for t, cut in zip(texts, cuts, strict=True)]
        return texts


#: The rules that are the same for every row of the same sampling settings: groups with
#: only these choose together (:func:`_choose_together`).
_SHARED = (Temperature, TopK, TopP)


class StopStrings:
    """OpenAI's ``stop``: a row ends before the first of ``strings`` it writes (the string
    is not written). What a row writes is shown once it cannot be the start of a stop
    string; ``pending`` holds the rest (and ``pending_scores`` its scores)."""

    def __init__(self, strings: Sequence[str], rows: int) -> None:
        self.strings = list(strings)
        self.done = [False] * rows
        self.pending = [""] * rows
        self.pending_scores: list[list[Score]] = [[] for _ in range(rows)]
        self.written = [0] * rows  # characters shown per row
        self.cuts: list[int | None] = [None] * rows  # where a row's text ends, once hit

    @property
    def all_done(self) -> bool:
        return all(self.done)

    def hold(
        self, chars: list[str], scores: list[list[Score]] | None
    ) -> tuple[list[str], list[list[Score]] | None]:
        """Each row's text to show now (and its scores), given the step's characters."""
        texts: list[str] = []
        shown_scores: list[list[Score]] = []
        for row, char in enumerate(chars):
            if self.done[row]:
                texts.append("")
                shown_scores.append([])
                continue
            pending = self.pending[row] + char
            held = self.pending_scores[row] + (scores[row] if scores is not None else [])
            hits = [pending.find(s) for s in self.strings if s in pending]
            if hits:
                cut = min(hits)
                self.done[row] = True
                self.cuts[row] = self.written[row] + cut
            else:
                cut = len(pending) - max(
                    (k for s in self.strings for k in range(1, len(s)) if pending.endswith(s[:k])),
                    default=0,
                )
            self.pending[row] = "" if hits else pending[cut:]
            self.pending_scores[row] = [] if hits else held[cut:]
            self.written[row] += cut
            texts.append(pending[:cut])
            shown_scores.append(held[:cut])
        return texts, (shown_scores if scores is not None else None)


class Stop:
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
        self.was_done = self.done.clone()

    def shown(self, last: list[int], chars: list[str]) -> list[str]:
        """Each row's character of this step, ``""`` for a row that had ended before it."""
        ended = self.was_done.tolist()
        return ["" if end else chars[i] for i, end in zip(last, ended, strict=True)]

    def update(self, last: torch.Tensor, t: int) -> bool:
        """Account for step ``t``'s characters (N,); whether every row has now ended."""
        self.was_done = self.done.clone()
        hit = last == self.stop_index
        if self.lines is not None:
            self.newlines += last == self.newline
            hit |= self.newlines >= self.lines
        self.ends = torch.where(hit & ~self.done, t + 1, self.ends)
        self.done |= hit
        return bool(self.done.all())

    def cut(self, rows: list[list[int]]) -> list[list[int]]:
        return [row[:end] for row, end in zip(rows, self.ends.tolist(), strict=True)]

    def select(self, index: torch.Tensor, source: Stop | None = None) -> None:
        for name in ("newlines", "done", "ends", "was_done"):
            other = getattr(source, name) if source is not None else None
            setattr(self, name, pick(getattr(self, name), index, other))


def choose_together(groups: list[TextGroup], logits: torch.Tensor) -> None:
    """What each plain group's :meth:`TextGroup.choose` does, with the filtering and the
    draw done once for all their rows (consecutive in ``logits``): each group still
    draws its own uniform numbers from its own generator."""
    first = groups[0]
    filtered = apply(first.rules, logits)
    u = None
    if not first.greedy:
        u = torch.cat([uniforms(g.size, g.generator, logits.device) for g in groups])
    chosen = choose(filtered, first.greedy, None, u)
    as_list = chosen.tolist()  # once for all groups, not once a group
    start = 0
    for group in groups:
        group.last = chosen[start : start + group.size]
        group._accept(as_list[start : start + group.size])
        start += group.size
