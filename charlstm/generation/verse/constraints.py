"""One small rule per constraint of a verse form, each an entry of the one list of logits
rules (:mod:`charlstm.generation.rules`), after the temperature and before top-k / top-p.

Every rule has the list's interface, like Hugging Face's logits processors:

- ``rule(logits, at)``: mask (``-inf``) the characters that may not stand at position
  ``at.pos`` of line ``at.line`` (0-based; positions past the line's length are its
  ending); ``logits`` itself back when the rule says nothing there. All rows of a poem are
  at the same position of the same form; what differs between rows (the rhyme class, the
  tone pattern, the rhyme characters used) is each row's own state, held in tensors.
- ``push(chosen, at)``: account for the characters (N,) just drawn.
- ``select(index, source)``: keep, reorder or duplicate rows (the poem keeps the best
  candidate of each line and copies it to every candidate).

:func:`build_rules` composes them in this order: form, acrostic, rhyme, tone.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from charlstm.data.corpus import Vocab
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.rules import At, pick
from charlstm.generation.verse.forms import (
    Form,
    VerseSettings,
    is_ideograph,
    text_characters,
    tone_pattern,
)
from charlstm.generation.verse.rhyme import PING, ZE, RhymeTable, rhyme_table


def resolve_endings(form: Form, vocab: Vocab) -> list[str]:
    """Each line's ending as this vocabulary can write it: a newline the vocabulary lacks
    becomes a space (a model trained with newlines as spaces), or is left out."""
    endings = []
    for line in form.lines:
        ending = line.ending
        if "\n" in ending and "\n" not in vocab:
            ending = ending.replace("\n", " " if " " in vocab else "")
        missing = [ch for ch in ending if ch not in vocab]
        if missing:
            raise CharLSTMError(
                f"the form {form.name} ends lines with {missing[0]!r}, which the model's "
                "vocabulary does not have"
            )
        endings.append(ending)
    return endings


def resolve_end(form: Form, vocab: Vocab) -> str:
    """What ends the poem after its last line (``form.end``) as this vocabulary can write it:
    a newline becomes a space as in :func:`resolve_endings`; a character the vocabulary
    still lacks is left out (the end is only scored, never written, so nothing is refused)."""
    end = form.end
    if "\n" not in vocab:
        end = end.replace("\n", " " if " " in vocab else "")
    return "".join(ch for ch in end if ch in vocab)


@lru_cache(maxsize=4)
def _text_table(chars: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor(text_characters(list(chars)), dtype=torch.bool)


def text_mask(vocab: Vocab, device: torch.device) -> torch.Tensor:
    """(V,) True for the characters that may stand inside a line; built once per vocabulary
    (a served poem builds its rules in the worker thread, between two steps of every
    stream: for 9,700 characters, Python's per-character work took about 15 ms a poem)."""
    return _text_table(tuple(vocab.idx_to_char)).to(device)


@lru_cache(maxsize=8)
def _tone_table(system: str, chars: tuple[str, ...]) -> torch.Tensor:
    table = rhyme_table(system)
    tones = [table.tones(ch) for ch in chars]
    return torch.tensor([[t == {PING}, t == {ZE}] for t in tones], dtype=torch.bool)


def tone_masks(table: RhymeTable, vocab: Vocab, device: torch.device) -> torch.Tensor:
    """(V, 2): whether each character is only 平, only 仄 (built once per vocabulary)."""
    return _tone_table(table.system, tuple(vocab.idx_to_char)).to(device)


def masked(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``logits`` (N, V) with the characters not ``allowed`` ((V,) or (N, V)) at -inf."""
    return logits.masked_fill(~allowed, float("-inf"))


class _Stateless:
    """A rule that keeps nothing per row: its mask depends on the position alone."""

    constrains = True

    def push(self, chosen: torch.Tensor, at: At | None) -> None:
        pass

    def select(self, index: torch.Tensor, source: object = None) -> None:
        pass


class FormRule(_Stateless):
    """Inside a line only text characters; at its end, its ending, one character a step.

    ``end`` is what ends the poem after the last line's ending (:func:`resolve_end`), as
    indices: it is never drawn, only scored (the decoder's line-end score)."""

    name = "form"

    def __init__(self, form: Form, vocab: Vocab, device: torch.device) -> None:
        self.lengths = [line.length for line in form.lines]
        self.endings = [vocab.encode(e).tolist() for e in resolve_endings(form, vocab)]
        self.end: list[int] = vocab.encode(resolve_end(form, vocab)).tolist()
        text = text_mask(vocab, device)
        if not text.any():
            raise CharLSTMError("the model's vocabulary has no characters to write lines with")
        self.text = text  # (V,)

    def steps(self, line: int) -> int:
        """Characters line ``line`` takes with its ending."""
        return self.lengths[line] + len(self.endings[line])

    def __call__(self, logits: torch.Tensor, at: At | None) -> torch.Tensor:
        assert at is not None
        length = self.lengths[at.line]
        if at.pos < length:
            return masked(logits, self.text)
        forced = torch.zeros_like(self.text)
        forced[self.endings[at.line][at.pos - length]] = True
        return masked(logits, forced)


def acrostic_heads(heads: str, vocab: Vocab) -> list[int]:
    """The vocabulary indices of an acrostic's characters, each able to begin a line."""
    unknown = [ch for ch in heads if ch not in vocab]
    if unknown:
        raise SettingError(
            f"{{acrostic}} character {unknown[0]!r} is not in the model's vocabulary, "
            "so no line can begin with it"
        )
    text = text_mask(vocab, torch.device("cpu"))
    bad = [ch for ch in heads if not bool(text[vocab.char_to_idx[ch]])]
    if bad:
        raise SettingError(f"{{acrostic}} character {bad[0]!r} cannot begin a line")
    return [vocab.char_to_idx[ch] for ch in heads]


class AcrosticRule(_Stateless):
    """藏头: line i begins with the i-th character of ``heads``."""

    name = "acrostic"

    def __init__(self, heads: str, vocab: Vocab, device: torch.device) -> None:
        self.heads = acrostic_heads(heads, vocab)
        self.vocab_size = len(vocab)
        self.device = device

    def __call__(self, logits: torch.Tensor, at: At | None) -> torch.Tensor:
        assert at is not None
        if at.pos != 0 or at.line >= len(self.heads):
            return logits
        only = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
        only[self.heads[at.line]] = True
        return masked(logits, only)


@lru_cache(maxsize=4)
def _member_table(system: str, chars: tuple[str, ...]) -> torch.Tensor:
    table = rhyme_table(system)
    member = torch.zeros((len(chars), len(table.names)), dtype=torch.bool)
    for index, char in enumerate(chars):
        for k in table.classes(char):
            member[index, k] = True
    return member


def _membership(table: RhymeTable, vocab: Vocab, device: torch.device) -> torch.Tensor:
    """(V, K) True where character v belongs to class k (any of its readings); built once
    per vocabulary and system."""
    return _member_table(table.system, tuple(vocab.idx_to_char)).to(device)


@lru_cache(maxsize=8)
def _rhyme_classes(
    system: str, chars: tuple[str, ...], count: int, level_only: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """For :class:`RhymeRule` (built once per vocabulary and form, not once a poem): the
    (V, K) rhyme characters of each class (as floats) and the (K,) classes open to a poem
    of ``count`` rhyming lines."""
    table = rhyme_table(system)
    vocab = Vocab(list(chars))
    cpu = torch.device("cpu")
    member = _membership(table, vocab, cpu) & text_mask(vocab, cpu)[:, None]  # (V, K)
    if level_only and not table.ping_classes:  # pinyin's classes hold both tones
        member &= ~tone_masks(table, vocab, cpu)[:, 1:]  # not only 仄
    # a pinyin system reads a finished line in context (:meth:`RhymeRule.accept`), which may
    # pick any one of a character's readings: a class is open only with enough characters
    # of that class alone, and a rhyme may only be a character none of whose readings falls
    # outside the row's classes, so that no row is left without a rhyme that reads true
    counted = member
    if system != "pingshui":
        counted = member & (member.sum(dim=1, keepdim=True) == 1)
    open_classes = counted.sum(dim=0) >= count  # (K,)
    if level_only and table.ping_classes:  # 平水韵's classes have a tone of their own
        ping = torch.zeros_like(open_classes)
        ping[list(table.ping_classes)] = True
        open_classes &= ping
    return member.float(), open_classes


class RhymeRule:
    """The rhyming lines end in characters of one class, each used once.

    A row's class is the one its first rhyming line's character belongs to (every class of
    that character, narrowed by each later rhyme). At the first rhyme only classes with at
    least as many text characters as there are rhyming lines are open (with the tone
    pattern, only 平 classes, or for a pinyin system only its characters that can be 平), so
    that the masks never leave a row without a rhyme (a pinyin line whose reading in context
    does not rhyme is drawn again: :meth:`accept`).
    """

    name = "rhyme"
    constrains = True

    def __init__(
        self,
        table: RhymeTable,
        vocab: Vocab,
        form: Form,
        rhyme_lines: Sequence[int],
        batch: int,
        device: torch.device,
        level_only: bool = False,
    ) -> None:
        member, open_classes = _rhyme_classes(
            table.system, tuple(vocab.idx_to_char), len(rhyme_lines), level_only
        )
        member, open_classes = member.to(device), open_classes.to(device)
        self.in_context = table.system != "pingshui"
        if not open_classes.any():
            raise CharLSTMError(
                f"the model's vocabulary has no {len(rhyme_lines)} characters of one "
                f"{table.system} rhyme class to rhyme with"
            )
        self.table = table
        self.member = member  # (V, K) float
        self.lines = {line: form.lines[line].length - 1 for line in rhyme_lines}
        self.classes = open_classes.expand(batch, -1).clone()  # (N, K)
        self.used = torch.zeros((batch, len(vocab)), dtype=torch.bool, device=device)  # (N, V)

    def __call__(self, logits: torch.Tensor, at: At | None) -> torch.Tensor:
        assert at is not None
        if self.lines.get(at.line) != at.pos:
            return logits
        rhymes = (self.classes.float() @ self.member.T) > 0  # (N, V)
        if self.in_context:  # no reading outside the row's classes
            rhymes &= ((~self.classes).float() @ self.member.T) == 0
        return masked(logits, rhymes & ~self.used)

    def push(self, chosen: torch.Tensor, at: At | None) -> None:
        assert at is not None
        if self.lines.get(at.line) != at.pos:
            return
        self.classes &= self.member[chosen] > 0
        self.used[torch.arange(len(chosen), device=chosen.device), chosen] = True

    def accept(self, texts: Sequence[str], line: int) -> torch.Tensor:
        """Whether each row's finished ``line`` (N texts) still rhymes when the line is read
        whole (pinyin systems: the reading pypinyin's phrase dictionary gives its last
        character, which may be fewer classes than all its readings); narrows each row's
        classes to that reading. (N,) bool."""
        ok = torch.ones(len(texts), dtype=torch.bool, device=self.classes.device)
        if line not in self.lines or self.table.system == "pingshui":
            return ok  # 平水韵 has no reading in context: every class of the character
        for row, text in enumerate(texts):
            read = torch.zeros_like(self.classes[row])
            read[list(self.table.line_classes(text))] = True
            narrowed = self.classes[row] & read
            ok[row] = bool(narrowed.any())
            if ok[row]:
                self.classes[row] = narrowed
        return ok

    def select(self, index: torch.Tensor, source: RhymeRule | None = None) -> None:
        for name in ("classes", "used"):
            other = getattr(source, name) if source is not None else None
            setattr(self, name, pick(getattr(self, name), index, other))


class ToneRule:
    """The tone pattern (平仄) of a regulated form, at positions 2, 4, 6 and each line's last.

    Only characters whose tone is unambiguous are masked: where 平 is due, the characters
    that are only 仄; a character of both tones, or unknown to the table, may stand
    anywhere (as Jiuge does). Line 1's second character chooses the pattern (平起 or 仄起),
    so there it must be a character of one tone.
    """

    name = "tone"
    constrains = True

    def __init__(
        self,
        table: RhymeTable,
        vocab: Vocab,
        form: Form,
        rhyme_lines: Sequence[int],
        batch: int,
        device: torch.device,
    ) -> None:
        tones = tone_masks(table, vocab, device)
        self.ping_only, self.ze_only = tones[:, 0], tones[:, 1]  # (V,) each
        # required[s][line][pos]: 0 any, 1 平, 2 仄, for start s (0: 平起, 1: 仄起)
        code = {PING: 1, ZE: 2}
        self.required = [
            [
                {pos: code[t] for pos, t in line.items()}
                for line in tone_pattern(form, rhyme_lines, s)
            ]
            for s in (PING, ZE)
        ]
        self.start = torch.zeros(batch, dtype=torch.long, device=device)  # (N,) 0 平起, 1 仄起

    def __call__(self, logits: torch.Tensor, at: At | None) -> torch.Tensor:
        assert at is not None
        line, pos = at.line, at.pos
        if line == 0 and pos == 1:
            return masked(logits, self.ping_only | self.ze_only)
        level = self.required[0][line].get(pos, 0)
        oblique = self.required[1][line].get(pos, 0)
        if level == 0 and oblique == 0:
            return logits
        by_start = torch.stack([self._ok(level), self._ok(oblique)])  # (2, V)
        return masked(logits, by_start[self.start])

    def _ok(self, required: int) -> torch.Tensor:
        if required == 1:
            return ~self.ze_only
        if required == 2:
            return ~self.ping_only
        return torch.ones_like(self.ze_only)

    def push(self, chosen: torch.Tensor, at: At | None) -> None:
        assert at is not None
        if at.line == 0 and at.pos == 1:
            self.start = self.ze_only[chosen].long()

    def select(self, index: torch.Tensor, source: ToneRule | None = None) -> None:
        self.start = pick(self.start, index, source.start if source is not None else None)


Rule = FormRule | AcrosticRule | RhymeRule | ToneRule


def build_rules(
    settings: VerseSettings, vocab: Vocab, batch: int, device: torch.device
) -> list[Rule]:
    """The rules ``settings`` asks for, in the order they apply: form, acrostic, rhyme, tone."""
    form = settings.template()
    rules: list[Rule] = [FormRule(form, vocab, device)]
    if settings.acrostic:
        rules.append(AcrosticRule(settings.acrostic, vocab, device))
    system = settings.rhyme_system()
    rhyme_lines = settings.rhyme_lines()
    tone = settings.keeps_tone()
    if system != "none" or tone:
        if not any(is_ideograph(ch) for ch in vocab.idx_to_char):
            raise SettingError(
                f"{{rhyme}} {system} rhymes Chinese characters, and the model's vocabulary "
                "has none (give {rhyme} none)"
            )
        table = rhyme_table(system)
        if rhyme_lines:
            rules.append(RhymeRule(table, vocab, form, rhyme_lines, batch, device, tone))
        if tone:
            rules.append(ToneRule(table, vocab, form, settings.rhyme_lines(), batch, device))
    return rules
