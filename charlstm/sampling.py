"""Writing text: warm the state on a prefix, then feed back one character at a time.

Decoding rules, applied to the logits of each step in this order: temperature, top-k,
top-p (nucleus), then a draw from the remaining distribution (or its arg max, greedy).
All samples of all prefixes advance together as one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from charlstm.corpus import Vocab
from charlstm.errors import CharLSTMError
from charlstm.model import CharLSTM


@dataclass
class SamplingConfig:
    """How the next character is chosen."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def validate(self, vocab_size: int | None = None) -> SamplingConfig:
        if not self.temperature > 0:
            raise CharLSTMError(
                f"--temperature must be positive, not {self.temperature} (use --greedy for arg max)"
            )
        if self.top_k is not None:
            if self.top_k <= 0:
                raise CharLSTMError(f"--top-k must be positive, not {self.top_k}")
            if vocab_size is not None and self.top_k > vocab_size:
                raise CharLSTMError(
                    f"--top-k {self.top_k} is larger than the vocabulary ({vocab_size} characters)"
                )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise CharLSTMError(f"--top-p must be in (0, 1], not {self.top_p}")
        return self


def filter_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k and top-p masking (masked entries become -inf). ``(B, V)``."""
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= config.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_chars(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Choose one index per row of ``logits`` (B, V) -> (B,)."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits.float(), config), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: CharLSTM,
    vocab: Vocab,
    prefixes: Sequence[str],
    length: int = 100,
    config: SamplingConfig | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    on_step: Callable[[list[str]], None] | None = None,
) -> list[list[str]]:
    """Continue each prefix ``num_samples`` times by ``length`` characters.

    Returns ``texts[p][s]``: the continuation (without the prefix) of prefix ``p``, sample
    ``s``. All ``P * S`` sequences run as one batch. ``on_step`` receives the characters
    chosen at each step (one per sequence), for streaming.
    """
    config = (config or SamplingConfig()).validate(len(vocab))
    if length < 0:
        raise CharLSTMError(f"--length must be >= 0, not {length}")
    if num_samples <= 0:
        raise CharLSTMError(f"--num-samples must be positive, not {num_samples}")
    if not prefixes or any(p == "" for p in prefixes):
        raise CharLSTMError("the prefix is empty; give at least one character with --prefix")
    unknown = list(dict.fromkeys(ch for p in prefixes for ch in vocab.missing(p)))
    if unknown:
        shown = " ".join(repr(ch) for ch in unknown[:20])
        raise CharLSTMError(f"prefix has characters not in the model's vocabulary: {shown}")
    model.eval()
    device = model.head.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    batch = len(prefixes) * num_samples
    sequences = [p for p in prefixes for _ in range(num_samples)]
    state = model.init_state(batch)
    last = torch.empty(batch, dtype=torch.long, device=device)
    # Warm the state on each prefix; prefixes of different lengths are run one group each.
    for length_group in sorted({len(p) for p in prefixes}):
        rows = [i for i, p in enumerate(sequences) if len(p) == length_group]
        x = torch.stack([vocab.encode(sequences[i]) for i in rows], dim=1).to(device)  # (T, B')
        h = state[0][:, rows]
        c = state[1][:, rows]
        logits, (h, c) = model(x, (h, c))
        state[0][:, rows], state[1][:, rows] = h, c
        last[rows] = next_chars(logits[-1], config, generator)
    out: list[list[int]] = [[] for _ in range(batch)]
    for step in range(length):
        chosen = last.tolist()
        for row, idx in enumerate(chosen):
            out[row].append(idx)
        if on_step is not None:
            on_step([vocab.idx_to_char[i] for i in chosen])
        if step == length - 1:
            break
        logits, state = model(last.view(1, batch), state)
        last = next_chars(logits[0], config, generator)
    texts = [vocab.decode(row) for row in out]
    return [texts[p * num_samples : (p + 1) * num_samples] for p in range(len(prefixes))]
