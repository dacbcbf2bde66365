"""Writing verse: the model writes line by line, its distribution masked by the rules.

:func:`generate_verse` is the one entry point (the CLI and the Python API call it through
:meth:`charlstm.api.LanguageModel.generate_many`; a server can call it directly).

Every sample is a row; each row runs ``candidates`` copies (C) side by side, N = R * C rows
in all. All rows stand at the same position of the same form, so that one step advances all
of them (:meth:`~charlstm.model.CharLSTM.step` for the batch); what differs between rows
(the rhyme class, the tone pattern, the rhymes used) is the rules' per-row state in tensors
(:mod:`~charlstm.generation.verse.constraints`). A character is drawn from the model's
distribution (after the n-gram mix or cache), then the repetition penalty and the
temperature, then the rules' mask, then top-k / top-p
(:func:`~charlstm.generation.decoding.next_chars`).

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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from charlstm.data.corpus import Vocab, show_chars
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.decoding import RepetitionPenalty, next_chars
from charlstm.generation.sample import check_request
from charlstm.generation.settings import CacheConfig, DynamicConfig, SamplingConfig
from charlstm.generation.streams import MixedStreams, ModelStreams, open_streams
from charlstm.generation.verse.constraints import FormRule, RhymeRule, Rule, build_rules
from charlstm.generation.verse.copies import LineSet
from charlstm.generation.verse.forms import VerseSettings
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture

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


Part = torch.Tensor | list[Any]


def _take(part: Part, index: torch.Tensor) -> Part:
    if isinstance(part, list):
        return [part[i] for i in index.tolist()]
    return part[index].clone()


def _put(part: Part, rows: torch.Tensor, values: Part) -> Part:
    if isinstance(part, list):
        out = list(part)
        for row, value in zip(rows.tolist(), values, strict=True):
            out[row] = value
        return out
    part = part.clone()
    part[rows] = values
    return part


def _copy(part: Part) -> Part:
    return list(part) if isinstance(part, list) else part.clone()


class _RowState:
    """Every per-row piece of a decode (the streams', the rules', the penalty's, the next
    distribution), rows first, to copy rows between candidates. :meth:`get` and :meth:`set`
    copy, so that a snapshot never changes when the decode changes its state in place (the
    cache's ring, the rhymes used, the penalty's window)."""

    def __init__(
        self,
        streams: ModelStreams | MixedStreams,
        rules: Sequence[Rule],
        penalty: RepetitionPenalty | None,
    ) -> None:
        self.streams, self.rules, self.penalty = streams, rules, penalty

    def _model_streams(self) -> ModelStreams:
        inner = self.streams.streams if isinstance(self.streams, MixedStreams) else self.streams
        assert isinstance(inner, ModelStreams)
        return inner

    def get(self, logits: torch.Tensor) -> list[Part]:
        h, c = self._model_streams().state  # (L, N, H) each
        parts: list[Part] = [logits, h.transpose(0, 1), c.transpose(0, 1)]
        if isinstance(self.streams, MixedStreams):
            parts += [self.streams.query, list(self.streams.recent)]
            cache = self.streams.cache
            if cache is not None:
                parts += [cache.keys, cache.key_next, cache.filled, cache.slot]
        for rule in self.rules:
            parts += rule.rows()
        if self.penalty is not None:
            parts.append(self.penalty.recent)
        return [_copy(part) for part in parts]

    def set(self, parts: list[Part]) -> torch.Tensor:
        """Make (copies of) ``parts`` the state; returns the next distribution's logits (N, V)."""
        values = iter([_copy(part) for part in parts])
        logits = next(values)
        h, c = next(values), next(values)
        self._model_streams().state = (
            h.transpose(0, 1).contiguous(),
            c.transpose(0, 1).contiguous(),
        )
        if isinstance(self.streams, MixedStreams):
            self.streams.query = next(values)
            self.streams.recent = list(next(values))
            cache = self.streams.cache
            if cache is not None:
                cache.keys, cache.key_next, cache.filled, cache.slot = (
                    next(values),
                    next(values),
                    next(values),
                    next(values),
                )
        for rule in self.rules:
            rule.set_rows([next(values) for _ in rule.rows()])
        if self.penalty is not None:
            self.penalty.recent = next(values)
        return logits


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


def generate_verse(
    model: CharLSTM,
    vocab: Vocab,
    prefixes: Sequence[str],
    settings: VerseSettings,
    config: SamplingConfig | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    on_step: Callable[[list[str]], None] | None = None,
    *,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    mixture: NgramMixture | None = None,
    copies: LineSet | None = None,
) -> list[list[str]]:
    """Write a poem in the form of ``settings`` after each prefix, ``num_samples`` times.

    Returns ``texts[p][s]`` as :func:`charlstm.generation.sample.generate` does: the sample
    without its prefix (a newline, then the poem, when the prefix is a title). ``copies``
    is the training text's lines (:func:`~charlstm.generation.verse.copies.training_lines`),
    needed while ``settings.copy_filter`` is on. ``on_step`` receives each line as it is
    settled (one string per sample), then ``""`` for every sample once all have ended.
    ``seed``: the same seed gives the same poems (same settings, backend and device).
    """
    if not settings.active:
        raise SettingError("no verse form: give {form} or {line_lengths}")
    config = config or SamplingConfig()
    config.check_vocab(len(vocab))
    if dynamic is not None:
        raise SettingError(
            "{dynamic} cannot write verse: each line's candidates would need weights of "
            "their own (use {cache})"
        )
    check_request(0, num_samples, seed)
    if settings.copy_filter and copies is None:
        raise SettingError(
            "the copy filter needs the training text's lines; or turn {copy_filter} off"
        )
    prefixes = list(prefixes)
    if not prefixes:
        prefixes = [""]
    unknown = list(dict.fromkeys(ch for p in prefixes for ch in vocab.missing(p)))
    if unknown:
        raise CharLSTMError(
            f"prefix has characters not in the model's vocabulary: {show_chars(unknown)}"
        )
    contexts = _contexts(prefixes, vocab)
    samples = len(prefixes) * num_samples
    width = settings.candidates
    batch = samples * width
    device = model.device
    rules = build_rules(settings, vocab, batch, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            total = sum(line.length + len(line.ending) for line in settings.template().lines)
            fold = batch * total >= len(vocab)  # as generate(): the fold pays for itself
            streams = open_streams(model, batch, cache, None, mixture, fold)
            lines = _write(
                streams,
                vocab,
                contexts,
                num_samples,
                settings,
                rules,
                config,
                seed,
                on_step,
                copies,
            )
    finally:
        model.train(was_training)
    texts = [contexts[row // num_samples][1] + "".join(poem) for row, poem in enumerate(lines)]
    return [texts[p * num_samples : (p + 1) * num_samples] for p in range(len(prefixes))]


def _write(
    streams: ModelStreams | MixedStreams,
    vocab: Vocab,
    contexts: list[tuple[str, str]],
    num_samples: int,
    settings: VerseSettings,
    rules: list[Rule],
    config: SamplingConfig,
    seed: int | None,
    on_step: Callable[[list[str]], None] | None,
    copies: LineSet | None,
) -> list[list[str]]:
    """The decode; returns every sample's lines (each with its ending)."""
    device = streams.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    width = settings.candidates
    samples = len(contexts) * num_samples
    batch = samples * width
    size = len(vocab)
    penalty = None
    if config.repetition_penalty != 1.0:
        penalty = RepetitionPenalty(config, batch, size, device)
    # Read every row's context, rows of one length together.
    sequences = [contexts[row // (num_samples * width)][0] for row in range(batch)]
    logits = torch.empty((batch, size), device=device)
    for length in sorted({len(s) for s in sequences}):
        rows = [i for i, s in enumerate(sequences) if len(s) == length]
        x = torch.stack([vocab.encode(sequences[i]) for i in rows], dim=1).to(device)  # (T, N')
        index = torch.tensor(rows, device=device)
        logits[index] = streams.read(index, x)[1].float()
    form = rules[0]
    assert isinstance(form, FormRule)  # build_rules puts the form first
    state = _RowState(streams, rules, penalty)
    names = ["none"] + [rule.name for rule in rules] + ["copy"]
    first = torch.arange(samples, device=device) * width  # each sample's first candidate
    poems: list[list[str]] = [[] for _ in range(samples)]
    n_lines = len(settings.template().lines)
    choose = width > 1  # one candidate is plain sampling under the masks: nothing to score
    for line in range(n_lines):
        length, steps = form.lengths[line], form.steps(line)
        # the poem's end is scored after the last line: one model step more, once a poem
        poem_end = choose and line == n_lines - 1 and bool(form.end)
        start = state.get(logits)
        count = penalty.count if penalty is not None else 0
        kept = [_take(part, first) for part in start]  # (R, ...) each
        found = torch.zeros(samples, dtype=torch.bool, device=device)
        chosen = torch.zeros((samples, steps), dtype=torch.long, device=device)
        reasons: list[Counter[str]] = [Counter() for _ in range(samples)]
        for round_ in range(MAX_ROUNDS):
            if round_:
                logits = state.set(start)
                if penalty is not None:
                    penalty.count = count
            chars = torch.empty((batch, steps), dtype=torch.long, device=device)
            score = torch.zeros(batch, device=device)  # the characters' log-probabilities
            breaks = torch.zeros(batch, device=device)  # the break's (the ending, the end)
            failed = torch.zeros(batch, dtype=torch.long, device=device)  # 0: none, k: rule k
            for pos in range(steps):
                allowed = torch.ones((batch, size), dtype=torch.bool, device=device)
                for k, rule in enumerate(rules, start=1):
                    narrowed = rule.mask(allowed, line, pos)
                    if narrowed is allowed:
                        continue  # the rule says nothing here
                    empty = ~narrowed.any(dim=1)
                    if bool(empty.any()):  # keep the row going; it is not kept
                        failed = torch.where(empty & (failed == 0), k, failed)
                        narrowed = torch.where(empty[:, None], allowed, narrowed)
                    allowed = narrowed
                drawn = logits if penalty is None else penalty(logits)
                nxt = next_chars(drawn, config, generator, allowed)  # (N,)
                if pos < length or choose:
                    log_p = torch.log_softmax(logits.float(), dim=-1)
                    taken = log_p.gather(1, nxt[:, None]).squeeze(1)
                    if pos < length:
                        score += taken
                    else:
                        breaks += taken
                for rule in rules:
                    rule.update(nxt, line, pos)
                chars[:, pos] = nxt
                last = line == n_lines - 1 and pos == steps - 1
                if not last or poem_end:
                    logits = streams.step(nxt)[1].float()
                    if penalty is not None and not last:
                        penalty.push(nxt)
            if poem_end:  # the poem's end, after the last line
                for i, end in enumerate(form.end):
                    log_p = torch.log_softmax(logits.float(), dim=-1)
                    breaks += log_p[:, end]
                    if i + 1 < len(form.end):
                        logits = streams.step(torch.full_like(nxt, end))[1].float()
            texts = [vocab.decode(row) for row in chars[:, :length].tolist()]
            for k, rule in enumerate(rules, start=1):
                if isinstance(rule, RhymeRule):  # the line read whole, in context
                    wrong = ~rule.accept(texts, line)
                    failed = torch.where(wrong & (failed == 0), k, failed)
            if copies is not None:
                copied = torch.tensor([t in copies for t in texts], device=device)
                failed = torch.where(copied & (failed == 0), len(names) - 1, failed)
            mean = line_scores(score, breaks, length) if choose else score
            mean = torch.where(failed == 0, mean, float("-inf"))
            best_score, best = mean.view(samples, width).max(dim=1)  # (R,)
            newly = (best_score > float("-inf")) & ~found
            if bool(newly.any()):
                rows = newly.nonzero().squeeze(1)
                source = rows * width + best[rows]
                now = state.get(logits)
                kept = [_put(k, rows, _take(p, source)) for k, p in zip(kept, now, strict=True)]
                chosen[rows] = chars[source]
                found |= newly
            for row in (~found).nonzero().squeeze(1).tolist():
                codes = failed[row * width : (row + 1) * width].tolist()
                reasons[row].update(names[c] for c in codes if c)
            if bool(found.all()):
                break
        if not bool(found.all()):
            row = int((~found).nonzero()[0])
            raise _failure(reasons[row], line, row, settings)
        spread = torch.arange(samples, device=device).repeat_interleave(width)
        logits = state.set([_take(part, spread) for part in kept])
        if penalty is not None:
            penalty.count = count + steps - (1 if line == n_lines - 1 else 0)
        written = [vocab.decode(row) for row in chosen.tolist()]
        for poem, text in zip(poems, written, strict=True):
            poem.append(text)
        if on_step is not None:
            on_step(
                [
                    (contexts[r // num_samples][1] if line == 0 else "") + t
                    for r, t in enumerate(written)
                ]
            )
    if on_step is not None:
        on_step([""] * samples)
    return poems


def generate_for(
    language_model: Any,
    prefixes: Sequence[str],
    settings: VerseSettings,
    config: SamplingConfig | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    *,
    on_step: Callable[[list[str]], None] | None = None,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
) -> list[list[str]]:
    """:func:`generate_verse` for a loaded model (:class:`charlstm.api.LanguageModel`): its
    n-gram mixture, and its training text's lines for the copy filter (built once and
    stored beside the checkpoint)."""
    from charlstm.generation.verse.copies import training_lines

    copies = training_lines(language_model.checkpoint) if settings.copy_filter else None
    return generate_verse(
        language_model.model,
        language_model.vocab,
        prefixes,
        settings,
        config,
        num_samples,
        seed,
        on_step,
        cache=cache,
        dynamic=dynamic,
        mixture=language_model.mixture,
        copies=copies,
    )
