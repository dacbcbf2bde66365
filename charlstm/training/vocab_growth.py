"""Growing a trained model's vocabulary for fine-tuning on a new corpus
(``charlstm train --init-from RUN --extend-vocab``): the grown config, and the old weights
with rows for the new characters that leave every old character's probabilities as they
were, or nearly (:func:`grow_vocab_weights`)."""

from __future__ import annotations

from dataclasses import replace

import torch

from charlstm.config import ModelConfig
from charlstm.errors import CharLSTMError
from charlstm.model import default_cutoffs


def grown_config(config: ModelConfig, vocab_size: int) -> ModelConfig:
    """``config`` for its vocabulary grown to ``vocab_size`` characters (the old ones keep
    their indices; the new ones follow). The adaptive softmax keeps its cutoffs, written
    out where they were the defaults (``default_cutoffs(V)`` of the old V), so that the
    shortlist and every tail cluster but the last keep their characters and the new ones
    join the last tail cluster."""
    if vocab_size < config.vocab_size:
        raise CharLSTMError(
            f"a vocabulary grows, it never shrinks: {config.vocab_size} -> {vocab_size}"
        )
    cutoffs = config.cutoffs
    if config.softmax == "adaptive" and cutoffs is None:
        cutoffs = default_cutoffs(config.vocab_size)
    return replace(config, vocab_size=vocab_size, cutoffs=cutoffs)


def grow_vocab_weights(
    weights: dict[str, torch.Tensor], config: ModelConfig, fresh: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``weights`` of a model built from ``config``, grown to the vocabulary of ``fresh``,
    the state dict of a newly built model of :func:`grown_config` (V' > V characters, the
    k = V' - V new ones at indices V..V'-1). Every old weight is kept exactly; the rows of
    the new characters are:

    - the embedding (V', D): ``fresh``'s rows (a random start, as for any character);
    - full softmax, ``head`` (V', H) and its bias: ``fresh``'s rows (``nn.Linear``'s start,
      +-1/sqrt(H));
    - adaptive softmax: the new characters take the last ranks (``head_order``), in the
      last tail cluster; the shortlist's layer and the other clusters are unchanged, and
      each new row of the last cluster's output layer (its n old rows, then k new) is the
      mean of its n old rows. A new character's score in the cluster is then the mean of
      the old characters' scores, so its probability there is at most their mean, 1/n
      (Jensen), in every state: a shortlist character's log-probability does not change at
      all, and a tail character's drops by at most ``log(1 + k / n)``.
    """
    old_size, new_size = config.vocab_size, fresh["embedding.weight"].shape[0]
    out = dict(weights)

    def grown(key: str, new_rows: torch.Tensor) -> None:
        out[key] = torch.cat([weights[key], new_rows.to(weights[key].dtype)])

    grown("embedding.weight", fresh["embedding.weight"][old_size:])
    if config.softmax != "adaptive":
        for key in ("head.weight", "head.bias"):
            grown(key, fresh[key][old_size:])
        return out
    grown("head_order", torch.arange(old_size, new_size))  # vocabulary index -> rank
    clusters = len(config.cutoffs or default_cutoffs(old_size))
    last = f"head.tail.{clusters - 1}.1.weight"
    rows = weights[last]  # (n, h): the last cluster's output layer
    grown(last, rows.mean(dim=0, keepdim=True).expand(new_size - old_size, -1))
    return out
