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
from charlstm.generation.rules import take
from charlstm.generation.settings import CacheConfig, DynamicConfig, LogitRules, SamplingConfig
from charlstm.generation.streams import MixedStreams, ModelStreams, open_streams
from charlstm.generation.text import TextGroup, choose_together
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture

#: One step's text: per row the character written (``""``: none, or the row has ended).
OnStep = Callable[[list[str]], None]


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
                choose_together(groups, part)

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
        rows = torch.arange(self.size, device=self.device)[self.rows(group)]
        return take(self.streams, rows if index is None else rows[index])


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
