"""The Python API for programs and notebooks; the CLI uses the same functions.

>>> from charlstm import load_model
>>> model = load_model("runs/x")                      # a run directory or a .pt file
>>> model.generate("分开", length=100, temperature=0.8)
>>> model.perplexity("一段新的歌词")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charlstm import checkpoint as ckpt
from charlstm.corpus import Vocab, read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.evaluate import EvalResult, score
from charlstm.model import CharLSTM, build_model
from charlstm.sampling import SamplingConfig, generate


@dataclass
class LanguageModel:
    """A trained model with its vocabulary and the checkpoint it came from."""

    model: CharLSTM
    vocab: Vocab
    checkpoint: ckpt.Checkpoint

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def generate(
        self,
        prefix: str,
        length: int = 100,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        seed: int | None = None,
    ) -> str:
        """``prefix`` followed by ``length`` generated characters."""
        sampling = SamplingConfig(temperature, top_k, top_p, greedy)
        return prefix + self.generate_many([prefix], length, sampling=sampling, seed=seed)[0][0]

    def generate_many(
        self,
        prefixes: list[str],
        length: int = 100,
        num_samples: int = 1,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
    ) -> list[list[str]]:
        """Continuations (without the prefix) ``[prefix][sample]``, all in one batch."""
        return generate(self.model, self.vocab, prefixes, length, sampling, num_samples, seed)

    def score_text(self, text: str, context: str = "") -> EvalResult:
        """Loss of every character of ``text`` after the first (or all, given ``context``)."""
        if not context:
            if len(text) < 2:
                raise CharLSTMError("text to score needs at least two characters")
            context, text = text[0], text[1:]
        return score(self.model, self.vocab.encode(text), self.vocab.encode(context))

    def perplexity(self, text: str) -> float:
        return self.score_text(text).perplexity

    def evaluate_file(
        self,
        path: str | Path,
        val_fraction: float | None = None,
        member: str | None = None,
        encoding: str | None = None,
    ) -> dict[str, Any]:
        """Score a corpus file, normalised as the model's training corpus was.

        When ``path`` is the model's own corpus and ``val_fraction`` is not given, only its
        held-out part is scored (after the end of the training text, as during training).
        """
        data = self.checkpoint.data_config
        text = read_text(path, member, encoding, data.newlines, data.max_chars)
        missing = self.vocab.missing(text)
        if missing:
            shown = " ".join(repr(ch) for ch in missing[:20])
            raise CharLSTMError(
                f"{len(missing)} characters of {path} are not in the model's vocabulary: {shown}"
            )
        same_corpus = Path(path).resolve() == Path(data.path).resolve()
        if val_fraction is None:
            val_fraction = self.checkpoint.train_config.val_fraction if same_corpus else 0.0
        cut = split_point(len(text), val_fraction) if val_fraction > 0 else 0
        indices = self.vocab.encode(text)
        if cut > 0:
            result = score(self.model, indices[cut:], indices[max(0, cut - 256) : cut])
            scope = f"last {val_fraction:g} of the text"
        else:
            result = score(self.model, indices[1:], indices[:1])
            scope = "whole text after its first character"
        return {
            "corpus": str(path),
            "checkpoint": str(self.checkpoint.path),
            "scope": scope,
            "val_fraction": val_fraction,
            **result.as_dict(),
        }


def load_model(path: str | Path | None = None, device: str = "cpu") -> LanguageModel:
    """Load a run directory (its ``best.pt``) or a checkpoint file, ready to generate."""
    from charlstm.train import resolve_device

    checkpoint = ckpt.load(ckpt.resolve(path, prefer="best.pt"))
    model = build_model(checkpoint.model_config)
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as err:
        raise CharLSTMError(
            f"checkpoint {checkpoint.path} does not match its model configuration"
        ) from err
    model.to(resolve_device(device)).eval()
    return LanguageModel(model=model, vocab=checkpoint.vocab, checkpoint=checkpoint)
