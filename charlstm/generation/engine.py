"""One generation engine under ``generate``, verse and ``serve``: requests become groups of
rows, and every group's rows step as one batch.

* A :class:`Request` says what to write: prefixes, ``n`` samples each, the length and where
  to stop, the sampling rules, OpenAI's penalties, the adaptation, a verse form, the seed.
  It is frozen: the CLI, the Python API and the HTTP server each build one, and nothing
  changes it after.
* A group holds one request's rows and everything that is theirs alone: its random
  generator, its list of logits rules (:mod:`charlstm.generation.rules`), where each row
  stops, what each row wrote. :class:`TextGroup` writes running text; a poem is a
  :class:`~charlstm.generation.verse.decoder.VerseGroup`, whose rows are each line's
  candidates and which keeps the best at each line end.
* The :class:`Engine` owns the model's streams (:mod:`charlstm.generation.streams`) for
  the rows of all its groups, each group's rows contiguous: :meth:`Engine.admit` reads
  the new groups' prefixes (all prefixes of one length in one pass, whatever group they
  belong to), :meth:`Engine.step` steps every row at once and hands each group its rows'
  logits, :meth:`Engine.drop` lets groups go. A group keeps, reorders or duplicates its
  rows through :meth:`Engine.select`.

:func:`write` is the engine with one group (``charlstm generate``, the Python API);
``charlstm serve``'s scheduler keeps one engine per model and adds only admission,
timeouts and draining. A group's draws depend only on its rows' logits and its own
generator, and a row's logits do not depend on the rows beside it
(:data:`~charlstm.generation.streams.ROW_MULTIPLE`), so a request writes the same text
alone or in a served batch.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field
from typing import Any, Protocol

import torch

from charlstm.data.corpus import Vocab
from charlstm.generation.decoding import uniforms
from charlstm.generation.rules import Temperature, TopK, TopP, apply, choose, logits_rules, pick
from charlstm.generation.settings import CacheConfig, DynamicConfig, LogitRules, SamplingConfig
from charlstm.generation.streams import MixedStreams, ModelStreams, open_streams
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture

#: One step's text: per row the character written (``""``: none, or the row has ended).
OnStep = Callable[[list[str]], None]

#: A character's log-probability and the likeliest characters with theirs.
Score = tuple[float, list[tuple[str, float]]]


@dataclass(frozen=True)
class Request:
    """What to write. ``prefixes`` each continued ``n`` times (rows ``p * n + s``) by up to
    ``length`` characters, ending early with (and including) the first ``stop_at``
    character or the ``lines``-th newline, or before (and without) the first of the
    ``stop`` strings (OpenAI's ``stop``). ``penalties``: OpenAI's frequency and presence
    penalties and ``logit_bias``; ``top_logprobs``: keep every character's score with its
    k likeliest alternatives. ``verse``: a poem in a form instead (the form sets the
    length). ``seed`` seeds the request's own generator (``None``: torch's global one)."""

    prefixes: tuple[str, ...]
    n: int = 1
    length: int = 100
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    stop_at: str | None = None
    lines: int | None = None
    stop: tuple[str, ...] = ()
    penalties: LogitRules | None = None
    top_logprobs: int | None = None
    cache: CacheConfig | None = None
    dynamic: DynamicConfig | None = None
    verse: Any = None  # a VerseSettings with a form or free rhyme (generation.verse.forms)

    @property
    def sequences(self) -> list[str]:
        """Each row's prefix."""
        return [p for p in self.prefixes for _ in range(self.n)]

    @property
    def samples(self) -> int:
        return len(self.prefixes) * self.n

    @property
    def rows(self) -> int:
        """Rows in the batch: each sample's candidates for a poem."""
        return self.samples * (self.verse.candidates if self.verse is not None else 1)

    @property
    def private(self) -> bool:
        """Whether the rows need streams of their own (adaptation to their own text)."""
        return self.cache is not None or self.dynamic is not None


class Group(Protocol):
    """The rows of one request inside an :class:`Engine` (see the module docstring)."""

    request: Request
    size: int  # rows in the batch
    last: torch.Tensor  # (size,) what the rows read at the next step
    finished: bool

    def reads(self) -> list[tuple[list[int], torch.Tensor]]: ...

    def read(self, rows: list[int], logits: torch.Tensor) -> None: ...

    def start(self, engine: Engine) -> None: ...

    def choose(self, logits: torch.Tensor, engine: Engine) -> None: ...

    def shown(self) -> list[list[str]]: ...

    def texts(self) -> list[str]: ...


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


class Engine:
    """The rows of ``groups`` stepped together by one streams object, each group's rows
    contiguous, in the order the groups were admitted. ``private``: the streams adapt to
    one request's text (cache, dynamic evaluation), so no other group joins."""

    def __init__(
        self,
        streams: ModelStreams | MixedStreams,
        device: torch.device,
        dynamic: bool = False,
    ) -> None:
        self.streams = streams
        self.device = device
        self.dynamic = dynamic
        self.groups: list[Any] = []
        self.plan: list[tuple[list[Any], slice | torch.Tensor | None]] | None = None

    def mode(self) -> contextlib.AbstractContextManager[Any]:
        return grad_mode(self.dynamic)

    @property
    def size(self) -> int:
        return sum(group.size for group in self.groups)

    def rows(self, group: Any) -> slice:
        start = 0
        for other in self.groups:
            if other is group:
                return slice(start, start + group.size)
            start += other.size
        raise KeyError("the group is not in this engine")

    def admit(self, groups: Sequence[Any]) -> None:
        """Add the rows of ``groups`` after the others and read their prefixes: all rows of
        one prefix length in one pass (shortest first); then each group starts."""
        base = self.size
        new = sum(group.size for group in groups)
        fresh = torch.full((new,), -1, dtype=torch.long, device=self.device)
        self.streams.select(torch.cat([torch.arange(base, device=self.device), fresh]))
        reads: dict[int, list[tuple[Any, list[int], torch.Tensor, int]]] = collections.defaultdict(
            list
        )
        offset = base
        for group in groups:
            for rows, x in group.reads():
                reads[x.shape[0]].append((group, rows, x, offset))
            offset += group.size
        self.groups += list(groups)
        self.plan = None
        for length in sorted(reads):
            parts = reads[length]
            index = torch.tensor(
                [at + row for _, rows, _, at in parts for row in rows], device=self.device
            )
            x = torch.cat([x for _, _, x, _ in parts], dim=1).to(self.device)  # (T, R)
            logits = self.streams.read(index, x)[1]  # (R, V)
            start = 0
            for group, rows, _, _ in parts:
                group.read(rows, logits[start : start + len(rows)])
                start += len(rows)
        for group in groups:
            group.start(self)

    def step(self) -> None:
        """One step of every row; each group chooses from its own rows' logits, plain
        groups with the same sampling settings together (one filter and draw for all)."""
        last = torch.cat([group.last for group in self.groups])  # (N,)
        logits = self.streams.step(last)[1]  # (N, V)
        for groups, rows in self._plan():
            part = logits if rows is None else logits[rows]
            if len(groups) == 1:
                groups[0].choose(part, self)
            else:
                _choose_together(groups, part)

    def _plan(self) -> list[tuple[list[Any], slice | torch.Tensor | None]]:
        """Who chooses how, once per set of groups (not per step)."""
        if self.plan is not None:
            return self.plan
        plan: list[tuple[list[Any], slice | torch.Tensor | None]] = []
        together: dict[Any, list[Any]] = collections.defaultdict(list)
        for group in self.groups:
            if getattr(group, "plain", False):
                together[astuple(group.request.sampling)].append(group)
            else:
                plan.append(([group], self.rows(group)))
        for groups in together.values():
            if len(groups) == 1:
                plan.append((groups, self.rows(groups[0])))
                continue
            rows = [r for g in groups for r in range(*self.rows(g).indices(self.size))]
            index = None if rows == list(range(self.size)) else torch.tensor(rows)
            plan.append((groups, index.to(self.device) if index is not None else None))
        self.plan = plan
        return plan

    def drop(self, leaving: Sequence[Any]) -> None:
        """Remove the rows of ``leaving`` (between steps)."""
        gone = {id(group) for group in leaving}
        keep = [
            r
            for group in self.groups
            if id(group) not in gone
            for r in range(*self.rows(group).indices(self.size))
        ]
        self.groups = [group for group in self.groups if id(group) not in gone]
        self.plan = None
        self.streams.select(torch.tensor(keep, dtype=torch.long, device=self.device))

    def select(self, group: Any, index: torch.Tensor, source: Any = None) -> None:
        """``group``'s rows become its rows ``index`` (or, with ``source``, a
        :meth:`snapshot`'s rows ``index``); every other row stays."""
        rows = self.rows(group)
        full = torch.arange(self.size, device=self.device)
        full[rows] = index + (self.size if source is not None else rows.start)
        self.streams.select(full, source)

    def snapshot(self, group: Any, index: torch.Tensor | None = None) -> Any:
        """A copy of the streams' rows of ``group`` (its rows ``index``, all by default)."""
        from charlstm.generation.rules import take

        rows = torch.arange(self.size, device=self.device)[self.rows(group)]
        return take(self.streams, rows if index is None else rows[index])


def _choose_together(groups: list[TextGroup], logits: torch.Tensor) -> None:
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


def open_group(
    request: Request, vocab: Vocab, device: torch.device, copies: Any = None
) -> TextGroup | Any:
    """The group that writes ``request``: running text, free-length rhymed lyrics (running
    text with their rule), or a poem."""
    if request.verse is not None and request.verse.free_rhyme:
        from charlstm.generation.verse.lyrics import LyricGroup

        return LyricGroup(request, vocab, device)
    if request.verse is not None:
        from charlstm.generation.verse.decoder import VerseGroup

        return VerseGroup(request, vocab, device, copies)
    return TextGroup(request, vocab, device)


def steps_of(request: Request) -> int:
    """How many characters a row of ``request`` reads at most."""
    if request.verse is None:
        return request.length
    if request.verse.free_rhyme:
        from charlstm.generation.verse.lyrics import lyric_steps

        return lyric_steps(request)
    from charlstm.generation.verse.decoder import poem_steps

    return poem_steps(request.verse)


def grad_mode(dynamic: bool) -> contextlib.AbstractContextManager[Any]:
    """Dynamic evaluation needs gradients; otherwise nothing in generation does."""
    return torch.no_grad() if dynamic else torch.inference_mode()


def folds(batch: int, length: int, vocab_size: int) -> bool:
    """Whether the steps of ``batch`` rows of ``length`` characters use the model's
    :meth:`~charlstm.model.CharLSTM.step_table`: when they compute at least V rows."""
    return batch * length >= vocab_size


def write(
    model: CharLSTM,
    vocab: Vocab,
    request: Request,
    on_step: OnStep | None = None,
    *,
    mixture: NgramMixture | None = None,
    copies: Any = None,
) -> list[list[str]]:
    """Write ``request`` with the engine alone: ``texts[p][s]``, the continuation (without
    the prefix) of prefix ``p``, sample ``s``. ``on_step`` receives, whenever the rows
    show something, one string per sample (running text: every step, ``""`` for a row
    that has ended; a poem: each line once settled). ``model`` is never changed."""
    group = open_group(request, vocab, model.device, copies)
    was_training = model.training
    model.eval()
    try:
        engine = Engine(None, model.device, request.dynamic is not None)  # type: ignore[arg-type]
        with engine.mode():
            fold = folds(group.size, steps_of(request), len(vocab))
            engine.streams = open_streams(model, 0, request.cache, request.dynamic, mixture, fold)
            run(engine, [group], on_step)
    finally:
        model.train(was_training)
    texts = group.texts()
    n = request.n
    return [texts[p * n : (p + 1) * n] for p in range(len(request.prefixes))]


def run(engine: Engine, groups: list[Any], on_step: OnStep | None = None) -> None:
    """Admit ``groups`` and step until every one has finished (a finished group leaves
    the batch; the others' rows are computed as before)."""
    engine.admit(groups)
    while True:
        if on_step is not None:
            for group in groups:
                for shown in group.shown():
                    on_step(shown)
        finished = [group for group in engine.groups if group.finished]
        if finished:
            engine.drop(finished)
        if not engine.groups:
            return
        engine.step()
