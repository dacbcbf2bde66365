"""Free-length rhymed lyrics (``charlstm generate --rhyme shisanzhe`` with no form): running
text in which the model ends each line where it likes, within bounds, and every rhyming
line ends in its stanza's rhyme class.

:class:`FreeRhyme` is one constraint in the one list of logits rules
(:mod:`charlstm.generation.rules`, after the temperature, before top-k / top-p). Its state
per row, in tensors: ``pos`` (N,) the characters since the line began, ``classes`` (N, K)
the stanza's rhyme classes (every open class until the stanza's first rhyme), ``line`` (N,)
the line's number in its stanza, ``lines`` (N,) the lines written, ``rhymes_here`` (N,)
whether the last character may end the line. Its mask, row by row:

- inside a line: a Chinese character (a space or an ideographic space between them);
- a newline only at a length in ``[min_line, max_line]`` and right after a character that
  may end the line: on a rhyming line (every ``rhyme_every``-th line of a stanza), a
  character of the stanza's class; at ``max_line`` characters the newline is forced, so
  the character before it must rhyme;
- a newline at the start of a line (a blank line) starts a new stanza, whose class the next
  rhyme chooses;
- with an acrostic, line i begins with the i-th character.

Which characters rhyme: under 平水韵 a character has every class of its readings, and the
stanza's classes narrow to those its rhymes share (as :class:`~charlstm.generation.verse.
constraints.RhymeRule`). Under a pinyin system (中华新韵, 十三辙) a line is read in context
(pypinyin's phrase dictionary picks one reading of its last character), so a rhyme is only
a character all of whose readings are of one class: whatever reading the context picks,
the line rhymes.

:class:`LyricGroup` is the engine's :class:`~charlstm.generation.text.TextGroup` with
this rule in its list: C candidates per sample (``--candidates``), of which it keeps the
one with the highest mean log-probability of its characters under the model's own
distribution (OpenAI's ``best_of``). The lyric starts on a new line (after the prefix, as a
poem does). ``--lines N`` ends each lyric after its N-th line; ``--length`` alone may cut
the last line, as it cuts running text.

The bounds' defaults are the run's own (:func:`line_bounds`): the 5th and 95th percentiles
of the training text's line lengths, computed once and stored beside the checkpoint as
``lyric-lines.json`` (as :mod:`~charlstm.generation.verse.copies` stores the lines).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from charlstm.data.corpus import Vocab
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.engine import Request
from charlstm.generation.rules import At, pick
from charlstm.generation.text import TextGroup, prefix_reads
from charlstm.generation.verse.constraints import (
    _membership,
    acrostic_heads,
    masked,
    text_mask,
)
from charlstm.generation.verse.forms import VerseSettings
from charlstm.generation.verse.rhyme import rhyme_table

FILE_NAME = "lyric-lines.json"
#: Characters that may stand between a line's characters (never first or last).
SPACES = (" ", "\u3000")


class FreeRhyme:
    """The constraint of free-length rhymed lyrics (see the module docstring)."""

    name = "rhyme"
    constrains = True

    def __init__(
        self, settings: VerseSettings, vocab: Vocab, batch: int, device: torch.device
    ) -> None:
        if "\n" not in vocab:
            raise SettingError(
                "free-length lyrics end lines with newlines, and this model's vocabulary has "
                "none (it was trained with {newlines} space); give {line_lengths}"
            )
        assert settings.min_line is not None and settings.max_line is not None  # resolved
        self.min, self.max = settings.min_line, settings.max_line
        self.every = settings.rhyme_every or 1
        text = text_mask(vocab, device)
        table = rhyme_table(str(settings.rhyme))
        member = _membership(table, vocab, device) & text[:, None]  # (V, K)
        if table.system != "pingshui":  # one class whatever the reading in context
            member &= member.sum(dim=1, keepdim=True) == 1
        self.open = member.sum(dim=0) >= 2  # (K,) classes with two characters to rhyme
        if not self.open.any():
            raise SettingError(
                f"no {table.system} rhyme class has two characters in the model's vocabulary "
                "to rhyme with; give another {rhyme}"
            )
        self.member = member & self.open  # (V, K)
        self.text = text
        self.space = torch.tensor([ch in SPACES for ch in vocab.idx_to_char], device=device)
        self.newline = vocab.char_to_idx["\n"]
        self.heads = torch.tensor(_heads(settings.acrostic, vocab), dtype=torch.long, device=device)
        self.vocab_size = len(vocab)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)  # (N,)
        self.classes = self.open.expand(batch, -1).clone()  # (N, K)
        self.line = torch.zeros(batch, dtype=torch.long, device=device)  # (N,) in the stanza
        self.lines = torch.zeros(batch, dtype=torch.long, device=device)  # (N,) in all
        self.rhymes_here = torch.zeros(batch, dtype=torch.bool, device=device)  # (N,)
        self.after_text = torch.zeros(batch, dtype=torch.bool, device=device)  # (N,)
        self.last = torch.zeros(batch, dtype=torch.long, device=device)  # (N,)
        # (N,): the rhyme just drawn took a break's place, so the newline comes next
        self.closing = torch.zeros(batch, dtype=torch.bool, device=device)
        self.ends_next = torch.zeros(batch, dtype=torch.bool, device=device)
        self.only_newline = torch.zeros(len(vocab), dtype=torch.bool, device=device)
        self.only_newline[self.newline] = True

    def rhymes(self) -> torch.Tensor:
        """(N, V): the characters that end each row's rhyming line in its stanza's class."""
        return (self.classes.float() @ self.member.T.float()) > 0

    def rhyming(self) -> torch.Tensor:
        """(N,): whether each row's current line rhymes."""
        return (self.line + 1) % self.every == 0

    def __call__(self, logits: torch.Tensor, at: At | None = None) -> torch.Tensor:
        pos, rhyming = self.pos[:, None], self.rhyming()[:, None]  # (N, 1)
        last = pos == self.max - 1
        inside = self.text[None, :] & (pos < self.max - 1)
        spaced = self.space[None, :] & (pos >= 1) & (pos < self.max - 2) & self.after_text[:, None]
        ending = self.text[None, :] & last & (~rhyming | self.rhymes())
        allowed = inside | spaced | ending  # (N, V)
        breaks = (pos[:, 0] >= self.min) & (pos[:, 0] <= self.max) & self.rhymes_here
        blank = (pos[:, 0] == 0) & (self.line > 0)
        allowed[:, self.newline] = breaks | blank
        allowed = torch.where(self.closing[:, None], self.only_newline, allowed)
        if len(self.heads):
            head = (self.pos == 0) & (self.lines < len(self.heads))  # (N,)
            only = torch.zeros_like(allowed)
            index = self.heads[self.lines.clamp(max=len(self.heads) - 1)]
            only[torch.arange(len(only), device=only.device), index] = True
            allowed = torch.where(head[:, None], only, allowed)
        return self._end_on_a_rhyme(logits, allowed)

    def _end_on_a_rhyme(self, logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``logits`` masked to ``allowed``; on a rhyming line whose last character does not
        rhyme, where the model would break the line (bounds permitting), the newline's
        probability goes to the rhymes instead (in proportion to theirs): the line ends one
        character later, on a rhyme, rather than running on to ``max_line``."""
        pos = self.pos
        self.ends_next = torch.zeros_like(pos, dtype=torch.bool)
        wants = (pos >= self.min) & (pos <= self.max - 2) & self.rhyming() & ~self.rhymes_here
        out = masked(logits, allowed)
        if not bool(wants.any()):
            return out
        probs = torch.softmax(logits.float(), dim=-1)  # the distribution before the mask
        targets = allowed & self.rhymes()  # (N, V)
        mass = (probs * targets).sum(dim=1)  # (N,)
        moved = torch.log1p(probs[:, self.newline] / mass.clamp(min=1e-30))
        moved = torch.where(wants & (mass > 0), moved, 0.0)
        # where breaking outweighs rhyming on here, the rhyme drawn is the line's last
        self.ends_next = wants & (mass > 0) & (probs[:, self.newline] >= mass)
        return torch.where(targets, out + moved[:, None], out)

    def push(self, chosen: torch.Tensor, at: At | None = None) -> None:
        newline = chosen == self.newline
        blank = newline & (self.pos == 0)
        ends = newline & ~blank
        narrow = ends & self.rhyming()  # a rhyming line ended: its stanza's classes narrow
        self.classes = torch.where(
            narrow[:, None], self.classes & self.member[self.last], self.classes
        )
        self.classes = torch.where(blank[:, None], self.open[None, :], self.classes)
        self.line = torch.where(ends, self.line + 1, torch.where(blank, 0, self.line))
        self.lines = self.lines + ends.long()
        self.pos = torch.where(newline, 0, self.pos + 1)
        rows = torch.arange(len(chosen), device=chosen.device)
        self.after_text = self.text[chosen]
        self.rhymes_here = self.after_text & (~self.rhyming() | self.rhymes()[rows, chosen])
        self.closing = self.ends_next & self.rhymes_here & ~newline
        self.last = chosen

    def select(self, index: torch.Tensor, source: FreeRhyme | None = None) -> None:
        names = ("pos", "classes", "line", "lines", "rhymes_here", "after_text", "last")
        names += ("closing", "ends_next")
        for name in names:
            other = getattr(source, name) if source is not None else None
            setattr(self, name, pick(getattr(self, name), index, other))


def _heads(acrostic: str | None, vocab: Vocab) -> list[int]:
    """The acrostic's characters as indices, each one that can begin a line."""
    return acrostic_heads(acrostic, vocab) if acrostic else []


class LyricGroup(TextGroup):
    """A free-rhyme request's rows in the engine: R samples times C candidates, running
    text with :class:`FreeRhyme` in the list of rules (see the module docstring).

    Shows each character as it is written with one candidate, the whole lyric at the end
    with several (the best is known only then)."""

    def __init__(self, request: Request, vocab: Vocab, device: torch.device) -> None:
        from charlstm.generation.verse.decoder import _contexts

        settings: VerseSettings = request.verse
        self.contexts = _contexts(request.prefixes, vocab)
        self.width = settings.candidates
        self.samples = request.samples
        rows = replace(
            request,
            prefixes=tuple(read for read, _ in self.contexts),
            n=request.n * self.width,
            length=lyric_steps(request),
            verse=None,
        )
        constraint = FreeRhyme(settings, vocab, rows.samples, device)
        super().__init__(rows, vocab, device, [constraint])
        self.request = request
        self.rhyme = constraint
        self.log_probs = torch.zeros((self.size, self.length), device=device)  # (N, T)
        self.pending: list[list[str]] = []
        self.best: list[int] | None = None
        self.sent = False  # the server has been shown the kept lyrics (several candidates)

    def reads(self) -> list[tuple[list[int], torch.Tensor]]:
        return [] if self.finished else prefix_reads(self.vocab, self.sequences)

    def _next(self, logits: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        chosen = super()._next(logits, u)
        taken = torch.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None])[:, 0]
        self.log_probs[:, self.steps] = taken
        return chosen

    def _accept(self, chosen: list[int] | None = None) -> None:
        super()._accept(chosen)
        if self.width > 1 and self.finished:
            self.pending += [self.texts(), [""] * self.samples]

    def shown(self) -> list[list[str]]:
        """One candidate: every step's characters, as running text (the lyric's start
        before its first); several: the kept lyrics once written."""
        if self.width > 1:
            shown, self.pending = self.pending, []
            return shown
        return super().shown()

    def visible(self) -> tuple[list[str], Any]:
        """What each sample shows of the last step (the server reads this): one candidate,
        its character (the start before the first); several, nothing until the kept
        lyrics, all at once at the end."""
        if self.width > 1:
            if self.finished and not self.sent:
                self.sent = True
                return self.texts(), None
            return [""] * self.samples, None
        texts, scores = super().visible()
        if self.steps == 1:
            n = self.request.n
            texts = [self.contexts[r // n][1] + text for r, text in enumerate(texts)]
        return texts, scores

    def held(self) -> Any:
        return super().held() if self.width == 1 else None  # the kept texts are cut already

    def choices(self) -> list[int]:
        """Each sample's kept row: the candidate with the highest mean log-probability of
        what it kept (cut where it stopped)."""
        if self.best is None:
            lengths = [len(text) for text in super().texts()]
            means = [
                float(self.log_probs[r, :n].mean()) if n else float("-inf")
                for r, n in enumerate(lengths)
            ]
            self.best = [
                max(range(s * self.width, (s + 1) * self.width), key=means.__getitem__)
                for s in range(self.samples)
            ]
        return self.best

    def texts(self) -> list[str]:
        texts, n = super().texts(), self.request.n
        return [self.contexts[s // n][1] + texts[row] for s, row in enumerate(self.choices())]

    def reasons(self) -> list[str]:
        ended = super().reasons()
        return [ended[row] for row in self.choices()]


def lyric_steps(request: Request) -> int:
    """How many characters a lyric row writes at most: ``length``, or with ``lines`` enough
    for that many lines of the longest length (``lines`` then sets where it ends)."""
    settings: VerseSettings = request.verse
    if request.lines is None or settings.max_line is None:
        return request.length
    return max(request.length, request.lines * (settings.max_line + 1))


# -- the bounds' defaults: the run's own line lengths --------------------------------------


@dataclass(frozen=True)
class LineLengths:
    """The line lengths of a training text (characters per non-blank line)."""

    low: int  # 5th percentile
    high: int  # 95th percentile
    median: float
    lines: int

    @classmethod
    def of_text(cls, text: str) -> LineLengths:
        lengths = sorted(len(line.strip()) for line in text.split("\n") if line.strip())
        if not lengths:
            raise SettingError(
                "the run's training text has no lines to take {min_line} and {max_line} from; "
                "give both"
            )
        at = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
        return cls(at(0.05), at(0.95), float(statistics.median(lengths)), len(lengths))


def run_line_lengths(checkpoint: Any) -> LineLengths:
    """The run's line lengths: read from ``lyric-lines.json`` beside the checkpoint, or
    computed (once) from its training text and stored there."""
    from charlstm.generation.verse.copies import _source, _training_text
    from charlstm.storage import safe_io

    stored = Path(checkpoint.path).parent / FILE_NAME
    path, key = _source(checkpoint)
    if stored.is_file():
        try:
            data = json.loads(stored.read_text(encoding="utf-8"))
            if data.pop("key") == key:
                return LineLengths(**data)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    found = LineLengths.of_text(_training_text(checkpoint, path))
    body = json.dumps({"key": key, **found.__dict__}, ensure_ascii=False)
    try:
        safe_io.write_atomic(stored, body.encode("utf-8"))
    except CharLSTMError:
        pass  # a read-only run directory: computed again next time
    return found


def resolve_bounds(settings: VerseSettings, checkpoint: Any) -> VerseSettings:
    """``settings`` with ``--min-line`` / ``--max-line`` given values (the run's own line
    lengths where not given), checked against each other."""
    low, high = settings.min_line, settings.max_line
    if low is None or high is None:
        try:
            found = run_line_lengths(checkpoint)
        except SettingError as err:
            raise SettingError(
                "free-length lyrics take their line bounds from the run's training text: "
                f"{err}; or give {{min_line}} and {{max_line}}"
            ) from None
        if low is None:
            low = min(found.low, high) if high is not None else found.low
        if high is None:
            high = found.high
            if low > high:
                raise SettingError(
                    f"{{min_line}} {low} is over {{max_line}} {high} (the run's own; give "
                    "{max_line})"
                )
    if low > high:
        raise SettingError(f"{{min_line}} {low} is over {{max_line}} {high}")
    if settings.acrostic and high < 2:
        raise SettingError(f"{{max_line}} {high} cannot hold an acrostic line and its rhyme")
    return replace(settings, min_line=low, max_line=high, rhyme_every=settings.rhyme_every or 1)
