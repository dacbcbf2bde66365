"""The Python API for programs and notebooks; the CLI uses the same functions.

>>> from charlstm import load_model
>>> model = load_model("runs/x")          # a run directory, a .pt file or an export
>>> model.generate("分开", length=100, temperature=0.8)
>>> model.perplexity("一段新的歌词")

The generation controls (``temperature``, ``top_k``, ``top_p``, ``greedy``,
``repetition_penalty``, ``penalty_window``, ``stop_at``, ``lines``, ``seed``, and
``verse=VerseSettings(form="七言绝句", acrostic="春夏秋冬")`` for a poem) are keyword
arguments with the meaning of the ``charlstm generate`` options of the same names;
``cache=CacheConfig()`` and ``dynamic=DynamicConfig()`` are ``--cache`` and ``--dynamic``.
A run trained with ``--ngram-mix`` scores and writes with the LSTM interpolated with its
n-gram; ``model.lstm_only()`` is the LSTM alone (``--lstm-only``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from charlstm.data.corpus import Vocab, read_text, show_chars, split_point
from charlstm.data.prepared import PreparedCorpus, is_prepared
from charlstm.device import resolve_device
from charlstm.errors import CharLSTMError
from charlstm.eval.scoring import HISTORY, EvalResult, score, score_heldout
from charlstm.fields import SettingError
from charlstm.generation.engine import OnStep, Request, write
from charlstm.generation.sample import check
from charlstm.generation.settings import (
    DEFAULT_PENALTY_WINDOW,
    CacheConfig,
    DynamicConfig,
    EvalScope,
    SamplingConfig,
    read_prefix_file,
)
from charlstm.generation.verse.forms import VerseSettings
from charlstm.model import CharLSTM
from charlstm.ngram.mixture import NgramMixture
from charlstm.storage import checkpoint as ckpt


@dataclass
class LanguageModel:
    """A trained model with its vocabulary and the checkpoint it came from.

    ``mixture`` is the run's interpolated n-gram (``--ngram-mix``, :mod:`charlstm.ngram.mixture`),
    used by every method here; ``None`` when the run has none, or after :meth:`lstm_only`.
    """

    model: CharLSTM
    vocab: Vocab
    checkpoint: ckpt.Checkpoint
    mixture: NgramMixture | None = None
    #: The training text's lines once read (:meth:`copies`): a server reads them once.
    _lines: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def lstm_only(self) -> LanguageModel:
        """The same model without its interpolated n-gram: the LSTM alone."""
        return replace(self, mixture=None)

    def describe(self) -> str:
        """What predicts: ``LSTM`` or ``LSTM + Kneser-Ney 6-gram at weight 0.25``."""
        return "LSTM" if self.mixture is None else f"LSTM + {self.mixture.describe()}"

    def generate(
        self,
        prefix: str,
        length: int = 100,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        seed: int | None = None,
        *,
        repetition_penalty: float = 1.0,
        penalty_window: int = DEFAULT_PENALTY_WINDOW,
        stop_at: str | None = None,
        lines: int | None = None,
        cache: CacheConfig | None = None,
        dynamic: DynamicConfig | None = None,
        verse: VerseSettings | None = None,
    ) -> str:
        """``prefix`` followed by up to ``length`` generated characters.

        The controls are those of ``charlstm generate`` (see :mod:`charlstm.generation.decoding`):
        ``stop_at`` ends the text with the first such character, ``lines`` with its N-th
        newline; ``seed`` makes the text repeatable on the same backend and device.
        ``cache`` / ``dynamic`` adapt to the text as it is written, as ``--cache`` /
        ``--dynamic`` do; this model's weights are never changed.
        """
        sampling = SamplingConfig(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            repetition_penalty=repetition_penalty,
            penalty_window=penalty_window,
        )
        texts = self.generate_many(
            [prefix],
            length,
            sampling=sampling,
            seed=seed,
            stop_at=stop_at,
            lines=lines,
            cache=cache,
            dynamic=dynamic,
            verse=verse,
        )
        return prefix + texts[0][0]

    def generate_many(
        self,
        prefixes: Sequence[str],
        length: int = 100,
        num_samples: int = 1,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        *,
        stop_at: str | None = None,
        lines: int | None = None,
        stop: Sequence[str] = (),
        on_step: Callable[[list[str]], None] | None = None,
        cache: CacheConfig | None = None,
        dynamic: DynamicConfig | None = None,
        verse: VerseSettings | None = None,
        **controls: Any,
    ) -> list[list[str]]:
        """Continuations (without the prefix) ``[prefix][sample]``, all in one batch.

        Sampling controls come as a :class:`SamplingConfig` or as its fields by keyword
        (``temperature=0.8, top_p=0.9``); keywords override ``sampling``. ``stop``: strings
        that end a sample before them (OpenAI's ``stop``). ``on_step``
        streams: it gets one string per sequence and step (see :func:`generate`).
        ``cache`` / ``dynamic`` adapt every sample to its own text (dynamic evaluation:
        each from a fresh copy of the weights). ``verse`` writes a poem in a form instead
        (:mod:`charlstm.generation.verse`; the form sets the length, and ``length`` is not used).
        """
        if isinstance(prefixes, str):
            prefixes = [prefixes]
        sampling = sampling or SamplingConfig()
        if controls:
            sampling = replace(sampling, **controls)
        request = Request(
            tuple(prefixes),
            num_samples,
            length,
            sampling,
            seed,
            stop_at=stop_at,
            lines=lines,
            stop=tuple(stop),
            cache=cache,
            dynamic=dynamic,
            verse=verse if verse is not None and (verse.active or verse.free_rhyme) else None,
        )
        return self.write(request, on_step)

    def write(self, request: Request, on_step: OnStep | None = None) -> list[list[str]]:
        """Write ``request`` (:class:`~charlstm.generation.engine.Request`), checked first:
        ``texts[prefix][sample]``, each without its prefix."""
        request = self.resolve(request)
        check(request, self.vocab)
        return write(
            self.model,
            self.vocab,
            request,
            on_step,
            mixture=self.mixture,
            copies=self.copies(request),
        )

    def resolve(self, request: Request) -> Request:
        """``request`` with its defaults taken from this run: free-length lyrics' line
        bounds (``--min-line`` / ``--max-line``) from its training text's line lengths."""
        verse = request.verse
        if verse is None or not verse.free_rhyme:
            return request
        from charlstm.generation.verse.lyrics import resolve_bounds

        return replace(request, verse=resolve_bounds(verse, self.checkpoint))

    def copies(self, request: Request) -> Any:
        """The training text's lines, for a poem's copy filter (built once and stored
        beside the checkpoint); ``None`` when the request needs none."""
        if request.verse is None or not request.verse.copy_filter or request.verse.free_rhyme:
            return None
        from charlstm.generation.verse.copies import training_lines

        if self._lines is None:
            self._lines = training_lines(self.checkpoint)
        return self._lines

    def score_text(self, text: str, context: str = "") -> EvalResult:
        """Loss of every character of ``text`` after the first (or all, given ``context``)."""
        if not context:
            if len(text) < 2:
                raise CharLSTMError("text to score needs at least two characters")
            context, text = text[0], text[1:]
        return score(
            self.model, self.vocab.encode(text), self.vocab.encode(context), mixture=self.mixture
        )

    def perplexity(self, text: str) -> float:
        """``exp`` of the mean loss of each character of ``text`` after the first."""
        return self.score_text(text).perplexity

    def evaluate_file(
        self,
        path: str | Path,
        val_fraction: float | None = None,
        member: str | None = None,
        encoding: str | None = None,
        cache: CacheConfig | None = None,
        dynamic: DynamicConfig | None = None,
    ) -> dict[str, Any]:
        """Score a corpus file, its newlines treated as the model's training corpus's were.

        When ``path`` is the model's own corpus (the same file, and the same zip member if
        one is named), it is read exactly as in training (member, encoding, ``--max-chars``)
        and, unless ``val_fraction`` is given, only its held-out part is scored (after the
        end of the training text, as during training). Any other text is read whole.
        ``cache`` / ``dynamic`` adapt causally to the scored text as it is read (see
        :func:`charlstm.eval.scoring.score_adaptive`); the model itself is not changed.
        The held-out part is scored by :func:`charlstm.eval.scoring.score_heldout`, as
        in training.
        """
        data = self.checkpoint.data_config
        if val_fraction is not None:
            EvalScope(val_fraction=val_fraction)  # checked as the option is
        if is_prepared(path):
            return self._evaluate_prepared(Path(path), val_fraction, cache, dynamic)
        same_corpus = Path(path).resolve() == Path(data.path).resolve() and member in (
            None,
            data.member,
        )
        if same_corpus:
            member, encoding = data.member, encoding or data.encoding
        max_chars = data.max_chars if same_corpus else None
        text = read_text(path, member, encoding, data.newlines, max_chars)
        missing = self.vocab.missing(text)
        if missing:
            raise CharLSTMError(
                f"{len(missing)} characters of {path} are not in the model's vocabulary: "
                f"{show_chars(missing)}"
            )
        if val_fraction is None:
            val_fraction = self.checkpoint.train_config.val_fraction if same_corpus else 0.0
        cut = split_point(len(text), val_fraction) if val_fraction > 0 else 0
        indices = self.vocab.encode(text)
        scope = f"last {val_fraction:g} of the text"
        if cut == 0:
            scope = "whole text after its first character"
        result = score_heldout(
            self.model, indices[:cut], indices[cut:], self.mixture, cache=cache, dynamic=dynamic
        )
        return {
            "corpus": str(path),
            "checkpoint": str(self.checkpoint.path),
            "model": self.describe(),
            "scope": scope,
            "val_fraction": val_fraction,
            "cache": None if cache is None else asdict(cache),
            "dynamic": None if dynamic is None else asdict(dynamic),
            **result.as_dict(),
        }

    def _evaluate_prepared(
        self,
        path: Path,
        val_fraction: float | None,
        cache: CacheConfig | None,
        dynamic: DynamicConfig | None,
    ) -> dict[str, Any]:
        """Score a prepared corpus's held-out part (``charlstm prepare``), after the end of
        its training part; its split is its own."""
        prepared = PreparedCorpus.open(path)
        if val_fraction is not None and val_fraction != prepared.val_fraction:
            raise SettingError(
                f"{{val_fraction}} {val_fraction} differs from the prepared corpus's "
                f"{prepared.val_fraction}; its split was fixed by charlstm prepare"
            )
        if prepared.vocab != self.vocab:
            raise CharLSTMError(f"{path} was prepared with another vocabulary than the model's")
        history = torch.from_numpy(prepared.train[-HISTORY:].astype("int64"))
        heldout = torch.from_numpy(prepared.val.astype("int64"))
        result = score_heldout(
            self.model, history, heldout, self.mixture, cache=cache, dynamic=dynamic
        )
        return {
            "corpus": str(path),
            "checkpoint": str(self.checkpoint.path),
            "model": self.describe(),
            "scope": f"held-out part of the prepared corpus ({prepared.val_fraction:g})",
            "val_fraction": prepared.val_fraction,
            "cache": None if cache is None else asdict(cache),
            "dynamic": None if dynamic is None else asdict(dynamic),
            **result.as_dict(),
        }


def load_model(
    path: str | Path | None = None, device: str = "cpu", *, runs_root: str | Path = "runs"
) -> LanguageModel:
    """Load a run directory (its ``best.pt``), a checkpoint file or an exported model's
    directory (``charlstm export``), ready to generate; ``None``: the newest run under
    ``runs_root``.

    The path is resolved once, the model built once (its weights checked against it,
    :func:`charlstm.storage.checkpoint.load_with_model`), the device resolved once.
    """
    checkpoint, model = ckpt.load_with_model(ckpt.resolve(path, "best.pt", runs_root))
    model.to(resolve_device(device)).eval()
    mixture = None
    config = checkpoint.train_config
    if config.ngram_mix and checkpoint.ngram_text is not None:
        mixture = NgramMixture(
            checkpoint.ngram_text, checkpoint.vocab, config.ngram_mix, config.mix_weight
        )
    return LanguageModel(
        model=model, vocab=checkpoint.vocab, checkpoint=checkpoint, mixture=mixture
    )


__all__ = ["LanguageModel", "load_model", "read_prefix_file"]
