"""Writing text: warm the state on a prefix, then feed back one character at a time.

The distribution each step draws from is the model's; for a run trained with
``--ngram-mix``, the LSTM interpolated with its n-gram (:mod:`charlstm.ngram.mixture`); with
``cache`` / ``dynamic``, from weights that have learnt from this sequence's text so far
(dynamic evaluation), and mixed with the continuous cache of that text
(:mod:`charlstm.generation.adaptation`; the streams that read it:
:mod:`charlstm.generation.streams`). ``log p`` then takes the place of the logits in the
list of logits rules (:mod:`charlstm.generation.rules`). At temperature 1 without filters, a
character is drawn from exactly the distribution ``charlstm eval`` (with the same options)
scores.

A sequence ends after ``length`` characters, or earlier with (and including) the first
``stop_at`` character it generates, or its ``lines``-th newline, whichever comes first.

All samples of all prefixes advance together as one batch of ``N = P * S`` rows (P
prefixes, S samples each): the generation engine (:mod:`charlstm.generation.engine`) with one
group. :func:`check` holds every check that needs the model, made once before any work.
"""

from __future__ import annotations

from collections.abc import Sequence

from charlstm.data.corpus import Vocab, show_chars
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError, check_value
from charlstm.generation.engine import OnStep, Request, write
from charlstm.generation.settings import (
    CacheConfig,
    DynamicConfig,
    GenerateRequest,
    SamplingConfig,
)
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture


def generate(
    model: CharLSTM,
    vocab: Vocab,
    prefixes: Sequence[str],
    length: int = 100,
    config: SamplingConfig | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    on_step: OnStep | None = None,
    stop_at: str | None = None,
    lines: int | None = None,
    *,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    mixture: NgramMixture | None = None,
) -> list[list[str]]:
    """Continue each prefix ``num_samples`` times by up to ``length`` characters: the
    :class:`~charlstm.generation.engine.Request` of these arguments, checked and written.

    Returns ``texts[p][s]``: the continuation (without the prefix) of prefix ``p``, sample
    ``s``. ``seed`` seeds a generator of its own (``None``: torch's global one); the same
    seed gives the same text for the same prefixes, settings, backend and device.
    ``on_step`` receives, at each step, one string per row: the character chosen, or
    ``""`` for a row that has already ended. ``cache`` / ``dynamic`` adapt each row to its
    own text as it is written; ``model`` itself is never changed. ``mixture`` interpolates
    the LSTM with the run's n-gram before anything else.
    """
    request = Request(
        tuple(prefixes),
        num_samples,
        length,
        config or SamplingConfig(),
        seed,
        stop_at=stop_at,
        lines=lines,
        cache=cache,
        dynamic=dynamic,
    )
    check(request, vocab)
    return write(model, vocab, request, on_step, mixture=mixture)


def check(request: Request, vocab: Vocab) -> None:
    """Everything about ``request`` that depends on the model's vocabulary, before any
    work: the same errors whether it came from the CLI, the Python API or the server."""
    request.sampling.check_vocab(len(vocab))
    if request.penalties is not None:
        request.penalties.check_vocab(len(vocab))
    for name, value in (("num_samples", request.n), ("seed", request.seed)):
        check_value(GenerateRequest, name, value)
    if request.verse is not None and request.verse.free_rhyme:
        _check_lyrics(request, vocab)
        return
    if request.verse is not None:
        _check_verse(request, vocab)
        return
    check_value(GenerateRequest, "length", request.length)
    check_prefixes(vocab, request.prefixes)
    _check_stop(vocab, request.stop_at, request.lines)
    if any(s == "" for s in request.stop):
        raise SettingError("a stop string is empty")


def _check_verse(request: Request, vocab: Vocab) -> None:
    from charlstm.generation.verse.constraints import build_rules
    from charlstm.generation.verse.forms import refuse_poem_ends

    if not request.verse.active:
        raise SettingError("no verse form: give {form} or {line_lengths}")
    refuse_poem_ends(stop_at=request.stop_at, lines=request.lines, stop=request.stop or None)
    build_rules(request.verse, vocab, 1, "cpu")  # the form's own errors
    titles = [p for p in request.prefixes if p]  # a poem's prefix is its title, maybe empty
    if titles:
        check_prefixes(vocab, titles)


def _check_lyrics(request: Request, vocab: Vocab) -> None:
    """Free-length rhymed lyrics: running text's checks, and the rule's own errors."""
    from charlstm.generation.verse.lyrics import FreeRhyme

    check_value(GenerateRequest, "length", request.length)
    _check_stop(vocab, request.stop_at, request.lines)
    if request.verse.min_line is None or request.verse.max_line is None:
        raise SettingError("free-length lyrics need {min_line} and {max_line} resolved")
    if any(s == "" for s in request.stop):
        raise SettingError("a stop string is empty")
    FreeRhyme(request.verse, vocab, 1, "cpu")  # type: ignore[arg-type]
    titles = [p for p in request.prefixes if p]  # the lyric starts on a new line
    if titles:
        check_prefixes(vocab, titles)


def check_prefixes(vocab: Vocab, prefixes: Sequence[str]) -> None:
    """Every prefix has at least one character, and only characters the model knows."""
    if not prefixes or any(p == "" for p in prefixes):
        raise SettingError("the prefix is empty; give at least one character with {prefixes}")
    unknown = list(dict.fromkeys(ch for p in prefixes for ch in vocab.missing(p)))
    if unknown:
        raise CharLSTMError(
            f"prefix has characters not in the model's vocabulary: {show_chars(unknown)}"
        )


def _check_stop(vocab: Vocab, stop_at: str | None, lines: int | None) -> None:
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
