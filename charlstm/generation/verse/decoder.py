"""Writing verse: a poem is a group of rows in the generation engine
(:mod:`charlstm.generation.engine`), its distribution masked by the form's rules.

Every sample runs ``candidates`` copies (C) side by side, N = R * C rows in all, stepped
with every other row of the engine's batch (in ``charlstm serve``, beside running text).
All rows of a poem stand at the same position of the same form; what differs between rows
(the rhyme class, the tone pattern, the rhymes used) is the rules' per-row state in tensors
(:mod:`~charlstm.generation.verse.constraints`). A character is drawn through the one list
of logits rules (:mod:`charlstm.generation.rules`): the penalties, the temperature, the
form's rules, then top-k / top-p.

At the end of each line, each sample keeps the candidate the model scores best (the
line-end score, :func:`line_scores`): the mean log-probability, under the model's own
distribution (before penalty, temperature and mask), of the line's characters and of its
break, the break counted as one more position. The break is the line's ending (``，``, or
``。`` and a newline, or a newline: forced, but its probability after the line's characters
is the model's judgement that the line ends there) and, on the last line, what ends the
poem (``Form.end``: the blank line after a classical poem; nothing more after a free
form's last newline). A candidate that a rule left without a character, or, with the copy
filter, whose line is found verbatim in the training text, is not kept; when none of a
sample's candidates is kept, its line is drawn again from the line's start, at most
:data:`MAX_ROUNDS` times, then one error names the constraint that could not be met. The
kept candidate's state (the model's, the rules', the penalty's) is copied to all C copies
before the next line. After the last line the sample ends.

The prefix is the poem's title (or any text before it): the poem starts on a new line, so
the model reads a newline after a prefix that does not end with one (the newline is part of
the sample), and a newline alone when there is no prefix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from charlstm.data.corpus import Vocab
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.engine import Engine, Request
from charlstm.generation.rules import At, apply, choose, logits_rules, take
from charlstm.generation.text import prefix_reads
from charlstm.generation.verse.constraints import FormRule, build_rules
from charlstm.generation.verse.copies import LineSet
from charlstm.generation.verse.forms import VerseSettings

#: How many times a line is drawn again (all C candidates each time) before giving up.
MAX_ROUNDS = 8

#: The least log-probability a break counts with: a break the distribution rules out
#: (a mixture's zero) ranks last without making its candidate look failed (-inf).
MIN_BREAK_LOG_PROB = -1e4


def line_scores(chars: torch.Tensor, breaks: torch.Tensor, length: int) -> torch.Tensor:
    """The line-end score of N candidate lines of ``length`` characters: the mean over the
    line's ``length + 1`` positions, its characters and its break.

    ``chars`` (N,): the sum of the characters' log-probabilities; ``breaks`` (N,): the
    log-probability of the break that ends the line (the sum over its characters: the
    ending, and on the last line the poem's end), floored at :data:`MIN_BREAK_LOG_PROB`.

    Why one more position: the score ranks the candidates of one line, all of the same
    length, so the mean ranks them as ``log P(line, break)`` does, the probability the model
    gives the line followed by its break: among the lines of this length, the one the model
    would most likely write and end there (the break weighted as one character, as the
    model reads it). Weighting the break more (the characters' mean plus the whole break)
    overrides the model's own judgement: on Jay Chou lyrics it made the line breaks as
    natural as real lyrics' but raised the whole text's perplexity under a Kneser-Ney judge
    by about a third, and 五言 poems' slightly (docs/verse.md, "The line-end score").
    Leaving it out (before issue 34) keeps lines the model would not end there
    ("我想就想没有孤").
    """
    return (chars + breaks.clamp(min=MIN_BREAK_LOG_PROB)) / (length + 1)


def _contexts(prefixes: Sequence[str], vocab: Vocab) -> list[tuple[str, str]]:
    """For each prefix, (what the model reads, what the sample starts with)."""
    newline = "\n" in vocab
    out = []
    for prefix in prefixes:
        if prefix == "":
            if not newline:
                raise SettingError(
                    "this model's vocabulary has no newline to start a poem from; give a "
                    "title with {prefixes}"
                )
            out.append(("\n", ""))
        elif prefix.endswith("\n") or not newline:
            out.append((prefix, ""))
        else:
            out.append((prefix + "\n", "\n"))
    return out


def _failure(
    reasons: Counter[str], line: int, sample: int, settings: VerseSettings
) -> CharLSTMError:
    """The one line that says which constraint could not be met."""
    reason = reasons.most_common(1)[0][0] if reasons else "form"
    tries = f"{MAX_ROUNDS} x {settings.candidates} candidates"
    where = f"line {line + 1} of sample {sample + 1}"
    if reason == "copy":
        return SettingError(
            f"could not write {where}: all {tries} were lines of the training text; give "
            "more {candidates}, a higher {temperature}, or turn {copy_filter} off"
        )
    what = {
        "form": "no character of the vocabulary can stand in the line",
        "acrostic": "the acrostic character cannot stand there",
        "rhyme": f"no unused character rhymes under {settings.rhyme_system()}",
        "tone": "no character has the tone the pattern asks for",
    }[reason]
    return CharLSTMError(f"could not write {where} ({tries}): {reason}: {what}")


def poem_steps(settings: VerseSettings) -> int:
    """The characters a poem of ``settings`` writes, endings included."""
    return sum(line.length + len(line.ending) for line in settings.template().lines)


class VerseGroup:
    """One poem request's rows in the engine: R samples times C candidates.

    A state machine over the engine's steps: each step's logits draw the next character of
    every candidate (phase ``line``); after a line's last character one more step gives the
    logits after it (``close``), or, on the last line, the poem's end is scored (``end``);
    then :meth:`_line_end` keeps each sample's best candidate and copies it to all C rows,
    or draws the line again from its start (the rows restored from a snapshot).
    """

    def __init__(
        self, request: Request, vocab: Vocab, device: torch.device, copies: LineSet | None
    ) -> None:
        settings: VerseSettings = request.verse
        if settings.copy_filter and copies is None:
            raise SettingError(
                "the copy filter needs the training text's lines; or turn {copy_filter} off"
            )
        self.request, self.vocab, self.device, self.copies = request, vocab, device, copies
        self.contexts = _contexts(request.prefixes or ("",), vocab)
        self.n = request.n
        self.samples = len(self.contexts) * self.n
        self.width = settings.candidates
        self.size = self.samples * self.width
        self.settings = settings
        self.generator = None
        if request.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(request.seed)
        form_rules = build_rules(settings, vocab, self.size, device)
        form = form_rules[0]
        assert isinstance(form, FormRule)  # build_rules puts the form first
        self.form = form
        self.rules = logits_rules(
            request.sampling, request.penalties, self.size, len(vocab), device, form_rules
        )
        self.names = ["none"] + [rule.name for rule in self.rules] + ["copy"]
        self.greedy = request.sampling.greedy
        self.ranks = self.width > 1  # one candidate is plain sampling under the masks
        self.n_lines = len(form.lengths)
        self.line = self.pos = self.round = 0
        self.phase = "line"
        self.logits = torch.empty((self.size, len(vocab)), device=device)
        self.last = torch.empty(self.size, dtype=torch.long, device=device)
        self.poems: list[list[str]] = [[] for _ in range(self.samples)]
        self.pending: list[list[str]] = []
        self.finished = False

    # -- the engine's interface ------------------------------------------------------------

    def reads(self) -> list[tuple[list[int], torch.Tensor]]:
        per_sample = self.n * self.width
        sequences = [self.contexts[row // per_sample][0] for row in range(self.size)]
        return prefix_reads(self.vocab, sequences)

    def read(self, rows: list[int], logits: torch.Tensor) -> None:
        self.logits[torch.tensor(rows, device=self.device)] = logits.float()

    def start(self, engine: Engine) -> None:
        self._begin_line(self.logits, engine)

    def choose(self, logits: torch.Tensor, engine: Engine) -> None:
        logits = logits.float()
        if self.phase == "line":
            self._draw(logits, engine)
        elif self.phase == "close":
            self._line_end(logits, engine)
        else:  # the poem's end, scored after the last line
            end = self.form.end
            self.breaks += torch.log_softmax(logits, dim=-1)[:, end[self.end_at]]
            self.end_at += 1
            if self.end_at < len(end):
                self.last = torch.full_like(self.last, end[self.end_at - 1])
            else:
                self._line_end(logits, engine)

    def shown(self) -> list[list[str]]:
        """Each line once settled (one string per sample), then ``""`` for every sample."""
        shown, self.pending = self.pending, []
        return shown

    def texts(self) -> list[str]:
        return [self.contexts[r // self.n][1] + "".join(p) for r, p in enumerate(self.poems)]

    # -- one line ----------------------------------------------------------------------------

    def _begin_line(self, logits: torch.Tensor, engine: Engine) -> None:
        """Keep the line's start (to draw it again), then draw its first character."""
        every = torch.arange(self.size, device=self.device)
        first = every[:: self.width]  # each sample's first candidate
        self.start_logits, self.start_streams = logits, engine.snapshot(self)
        self.start_rules = [take(rule, every) for rule in self.rules]
        self.kept_logits = logits[first].clone()
        self.kept_streams = engine.snapshot(self, first)
        self.kept_rules = [take(rule, first) for rule in self.rules]
        self.found = torch.zeros(self.samples, dtype=torch.bool, device=self.device)
        self.chosen = torch.zeros((self.samples, self.steps), dtype=torch.long, device=self.device)
        self.reasons: list[Counter[str]] = [Counter() for _ in range(self.samples)]
        self.round = 0
        self._begin_round(logits, engine)

    @property
    def steps(self) -> int:
        return self.form.steps(self.line)

    def _begin_round(self, logits: torch.Tensor, engine: Engine) -> None:
        self.pos = 0
        self.phase = "line"
        self.chars = torch.empty((self.size, self.steps), dtype=torch.long, device=self.device)
        self.score = torch.zeros(self.size, device=self.device)  # the characters' log-probs
        self.breaks = torch.zeros(self.size, device=self.device)  # the break's
        self.failed = torch.zeros(self.size, dtype=torch.long, device=self.device)
        self._draw(logits, engine)

    def _draw(self, logits: torch.Tensor, engine: Engine) -> None:
        """Draw every candidate's character at this position; what to read next."""
        at = At(self.line, self.pos)
        nxt = choose(apply(self.rules, logits, at, self.failed), self.greedy, self.generator)
        length = self.form.lengths[self.line]
        if self.pos < length or self.ranks:
            taken = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None]).squeeze(1)
            if self.pos < length:
                self.score += taken
            else:
                self.breaks += taken
        for rule in self.rules:
            rule.push(nxt, at)
        self.chars[:, self.pos] = nxt
        self.pos += 1
        self.last = nxt
        if self.pos < self.steps:
            return
        if self.line < self.n_lines - 1:
            self.phase = "close"
        elif self.ranks and self.form.end:
            self.phase, self.end_at = "end", 0
        else:
            self._line_end(logits, engine)

    def _line_failures(self) -> list[str]:
        """Mark the candidates the rules refuse once the line is read whole (a pinyin
        rhyme in context), or that copy the training text; returns the line's texts."""
        length = self.form.lengths[self.line]
        texts = [self.vocab.decode(row) for row in self.chars[:, :length].tolist()]
        for k, rule in enumerate(self.rules, start=1):
            accept = getattr(rule, "accept", None)
            if accept is not None:
                wrong = ~accept(texts, self.line)
                self.failed = torch.where(wrong & (self.failed == 0), k, self.failed)
        if self.copies is not None:
            copied = torch.tensor([t in self.copies for t in texts], device=self.device)
            copy_code = len(self.names) - 1
            self.failed = torch.where(copied & (self.failed == 0), copy_code, self.failed)
        return texts

    def _line_end(self, logits: torch.Tensor, engine: Engine) -> None:
        """Keep each sample's best candidate; when every sample has one, copy it to all C
        rows and begin the next line; otherwise draw the line again."""
        self._line_failures()
        length = self.form.lengths[self.line]
        mean = line_scores(self.score, self.breaks, length) if self.ranks else self.score
        mean = torch.where(self.failed == 0, mean, float("-inf"))
        best_score, best = mean.view(self.samples, self.width).max(dim=1)  # (R,)
        newly = (best_score > float("-inf")) & ~self.found
        if bool(newly.any()):
            self._keep(newly, best, logits, engine)
        for row in (~self.found).nonzero().squeeze(1).tolist():
            codes = self.failed[row * self.width : (row + 1) * self.width].tolist()
            self.reasons[row].update(self.names[c] for c in codes if c)
        if not bool(self.found.all()):
            self._redraw(engine)
            return
        spread = torch.arange(self.samples, device=self.device).repeat_interleave(self.width)
        engine.select(self, spread, self.kept_streams)
        for rule, kept in zip(self.rules, self.kept_rules, strict=True):
            rule.select(spread + self.size, kept)
        self._settle()
        if not self.finished:
            self._begin_line(self.kept_logits[spread], engine)

    def _keep(
        self, newly: torch.Tensor, best: torch.Tensor, logits: torch.Tensor, engine: Engine
    ) -> None:
        """The samples ``newly`` found keep their best candidate ``best``."""
        rows = newly.nonzero().squeeze(1)
        source = rows * self.width + best[rows]
        index = torch.arange(self.samples, device=self.device)
        index[rows] = self.samples + source  # into (kept rows, then this line's rows)
        self.kept_streams.select(index, engine.snapshot(self))
        for kept, rule in zip(self.kept_rules, self.rules, strict=True):
            kept.select(index, rule)
        self.kept_logits[rows] = logits[source]
        self.chosen[rows] = self.chars[source]
        self.found |= newly

    def _redraw(self, engine: Engine) -> None:
        """Every candidate draws the line again from its start."""
        self.round += 1
        if self.round == MAX_ROUNDS:
            sample = int((~self.found).nonzero()[0])
            raise _failure(self.reasons[sample], self.line, sample, self.settings)
        every = torch.arange(self.size, device=self.device)
        engine.select(self, every, self.start_streams)
        for rule, start in zip(self.rules, self.start_rules, strict=True):
            rule.select(every + self.size, start)
        self._begin_round(self.start_logits, engine)

    def _settle(self) -> None:
        """The line is written: show it; after the last line the poem is done."""
        written = [self.vocab.decode(row) for row in self.chosen.tolist()]
        shown = []
        for r, (poem, text) in enumerate(zip(self.poems, written, strict=True)):
            poem.append(text)
            shown.append((self.contexts[r // self.n][1] if self.line == 0 else "") + text)
        self.pending.append(shown)
        self.line += 1
        if self.line == self.n_lines:
            self.finished = True
            self.pending.append([""] * self.samples)
