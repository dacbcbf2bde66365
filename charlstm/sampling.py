"""Writing text: warm the state on a prefix, then feed back one character at a time.

Each step turns every sequence's logits into one character by these rules, in this order:

0. the model's distribution (see :class:`AdaptiveStreams`): for a run trained with
   ``--ngram-mix``, the LSTM interpolated with its n-gram (:mod:`charlstm.mixture`); with
   ``cache`` / ``dynamic``, from weights that have learnt from this sequence's text so
   far (dynamic evaluation), and mixed with the continuous cache of that text,
   ``p = (1 - mix) * p_model + mix * p_cache``. ``log p`` then takes the place of the
   logits in every rule below. At temperature 1 without filters, a character is drawn
   from exactly the distribution ``charlstm eval`` (with the same options) scores;
1. repetition penalty: each character found among the last ``penalty_window`` characters
   that this sequence generated has its probability divided by ``repetition_penalty``
   (its logit lowered by ``log(repetition_penalty)``; the rest renormalise). The prefix
   does not count. 1 turns it off; values below 1 (which would favour repeats) are refused;
2. temperature: logits divided by ``temperature`` (below 1: safer, above 1: wilder);
3. top-k: only the ``top_k`` likeliest characters stay;
4. top-p (nucleus): a character stays while the likelier characters before it hold less
   than ``top_p`` of the probability, so the smallest set holding ``top_p`` stays;
5. a draw from what is left (one uniform number per sequence, inverse CDF), or the arg
   max with ``greedy`` (after the penalty; temperature, top-k and top-p cannot change it).

A sequence ends after ``length`` characters, or earlier with (and including) the first
``stop_at`` character it generates, or its ``lines``-th newline, whichever comes first.

All samples of all prefixes advance together as one batch of ``N = P * S`` rows (P
prefixes, S samples each). Prefixes are read in one pass per prefix length; the steps
after that run through :class:`Stepper`, one time step of the model as a few fused tensor
operations, and the chosen indices stay in tensors until the end: nothing per character
goes through Python lists unless a streaming callback asks for the characters. With
dynamic evaluation every row has weights of its own, so each step loops over the rows.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from charlstm.config import check_seed, non_negative, positive
from charlstm.corpus import Vocab, show_chars
from charlstm.errors import CharLSTMError
from charlstm.evaluate import (
    CacheConfig,
    DynamicConfig,
    DynamicEvaluation,
    StreamCache,
    read_log_probs,
)
from charlstm.mixture import NgramMixture
from charlstm.model import CharLSTM, ScratchLSTMLayer, State, TorchLSTMLayer

#: How many characters back the repetition penalty looks by default.
DEFAULT_PENALTY_WINDOW = 32

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (h, c), each (N, H)


@dataclass
class SamplingConfig:
    """How the next character is chosen (see the module docstring for the exact rules)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    repetition_penalty: float = 1.0
    penalty_window: int = DEFAULT_PENALTY_WINDOW

    def validate(self, vocab_size: int | None = None) -> SamplingConfig:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise CharLSTMError(
                f"--temperature must be positive, not {self.temperature} (use --greedy for arg max)"
            )
        if self.top_k is not None:
            positive("--top-k", self.top_k)
            if vocab_size is not None and self.top_k > vocab_size:
                raise CharLSTMError(
                    f"--top-k {self.top_k} is larger than the vocabulary ({vocab_size} characters)"
                )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise CharLSTMError(f"--top-p must be in (0, 1], not {self.top_p}")
        if not (self.repetition_penalty >= 1 and math.isfinite(self.repetition_penalty)):
            raise CharLSTMError(
                f"--repetition-penalty must be at least 1 (1: off), not {self.repetition_penalty}"
            )
        positive("--penalty-window", self.penalty_window)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_seed() -> int:
    """A fresh random seed, to be reported so that a run can be repeated."""
    return secrets.randbelow(2**31)


def filter_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k and top-p masking (masked entries become -inf). ``(N, V)``."""
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a character when the mass strictly before it already reaches top_p
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= config.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` (N, V) -> (N,), by inverse CDF.

    One uniform number ``u`` in [0, 1) per row; the index is the first whose cumulative
    probability reaches ``(1 - u) * total``, a value in (0, total]. A zero-probability
    entry never is that first index, so masked characters are never drawn. (Much faster
    than ``torch.multinomial`` for a batch of rows on a CPU.)
    """
    cdf = probs.cumsum(dim=-1)  # (N, V)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype)
    target = (1.0 - u).mul_(cdf[:, -1:])  # (N, 1)
    return torch.searchsorted(cdf, target).squeeze_(1).clamp_(max=probs.shape[-1] - 1)


def next_chars(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Choose one index per row of ``logits`` (N, V) -> (N,) (no repetition penalty)."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits.float(), config), dim=-1)
    return draw(probs, generator)


class RepetitionPenalty:
    """Lowers the logits of characters among each row's last ``window`` generated ones.

    ``recent`` (N, W) is a ring of the last W indices per row, ``V`` marking an empty slot.
    """

    def __init__(self, config: SamplingConfig, batch: int, vocab_size: int, device: Any) -> None:
        self.log_penalty = math.log(config.repetition_penalty)
        self.window = config.penalty_window
        self.vocab_size = vocab_size
        self.recent = torch.full((batch, self.window), vocab_size, dtype=torch.long, device=device)
        self.seen = torch.zeros((batch, vocab_size + 1), dtype=torch.bool, device=device)
        self.count = 0

    def push(self, chosen: torch.Tensor) -> None:
        """Record the characters (N,) just generated."""
        self.recent[:, self.count % self.window] = chosen
        self.count += 1

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        seen = self.seen.zero_().scatter_(1, self.recent, True)[:, : self.vocab_size]
        return torch.where(seen, logits - self.log_penalty, logits)


class Stepper:
    """One time step of a :class:`CharLSTM` for N sequences: ``(N,)`` indices -> ``(N, V)``.

    The same function as ``model(x.view(1, N), state)`` in eval mode (no dropout), without
    the machinery for T steps: an embedding row lookup, per layer one ``torch.lstm_cell``
    (a fused C++ LSTM step; the scratch layer's ``W_x``, ``W_h``, ``b`` are its transposed
    ``w_ih``, ``w_hh`` and ``b_ih``), then the output layer. Scratch layers with peepholes
    take the written-out equations. State is a list of per-layer ``(h, c)``, each (N, H).

    ``fold=True`` precomputes the first layer's input term for every character, the table
    ``embedding @ W_x + b`` (V, 4H), so that each step looks up a row instead of multiplying
    by ``W_x``: a third fewer multiply-adds per step for a one-layer model, for a one-off
    cost of V rows. :func:`generate` folds when the run computes at least V rows anyway.
    """

    def __init__(self, model: CharLSTM, fold: bool = False) -> None:
        self.embedding = model.embedding.weight  # (V, D)
        self.head = model.head
        self.table: torch.Tensor | None = None  # (V, 4H) with fold
        self.layers: list[tuple[torch.Tensor, torch.Tensor, Any, Any]] = []
        self.peephole: list[torch.Tensor | None] = []
        for layer in model.layers:
            if isinstance(layer, TorchLSTMLayer):
                lstm = layer.lstm
                w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0  # (4H, D), (4H, H)
                b_ih, b_hh = lstm.bias_ih_l0, lstm.bias_hh_l0
                peephole = None
            elif isinstance(layer, ScratchLSTMLayer):
                w_ih, w_hh = layer.W_x.t().contiguous(), layer.W_h.t().contiguous()
                b_ih, b_hh, peephole = layer.b, None, layer.peephole
            else:
                raise CharLSTMError(f"cannot step a layer of type {type(layer).__name__}")
            self.layers.append((w_ih, w_hh, b_ih, b_hh))
            self.peephole.append(peephole)
        if fold:
            w_ih, _, b_ih, b_hh = self.layers[0]
            bias = b_ih if b_hh is None else b_ih + b_hh
            self.table = torch.addmm(bias, self.embedding, w_ih.t())  # (V, 4H)

    @staticmethod
    def split(state: State) -> LayerStates:
        """Stacked ``(h, c)`` (L, N, H) -> per-layer list."""
        return list(zip(state[0].unbind(0), state[1].unbind(0), strict=True))

    @staticmethod
    def stack(state: LayerStates) -> State:
        """Per-layer list -> stacked ``(h, c)`` (L, N, H)."""
        return torch.stack([h for h, _ in state]), torch.stack([c for _, c in state])

    def __call__(self, x: torch.Tensor, state: LayerStates) -> torch.Tensor:
        """Advance ``state`` in place by one character per row; return the logits (N, V)."""
        out = None
        for index, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            h, c = state[index]
            peephole = self.peephole[index]
            if index == 0 and self.table is not None:
                gates = torch.addmm(self.table.index_select(0, x), h, w_hh.t())  # (N, 4H)
                h, c = lstm_pointwise(gates, c, peephole)
            else:
                if out is None:
                    out = self.embedding.index_select(0, x)  # (N, D)
                if peephole is None:
                    h, c = torch.lstm_cell(out, (h, c), w_ih, w_hh, b_ih, b_hh)
                else:
                    gates = torch.addmm(b_ih, out, w_ih.t()).addmm_(h, w_hh.t())
                    h, c = lstm_pointwise(gates, c, peephole)
            state[index] = (h, c)
            out = h
        return self.head(out)


def lstm_pointwise(
    gates: torch.Tensor, c: torch.Tensor, peephole: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """From pre-activations ``gates`` (N, 4H), blocks ``[i | f | g | o]``, and ``c`` (N, H)
    to the new ``(h, c)``: the equations of :class:`~charlstm.model.ScratchLSTMLayer`."""
    a_i, a_f, a_g, a_o = gates.chunk(4, 1)  # (N, H) each
    if peephole is None:
        i, f = a_i.sigmoid_(), a_f.sigmoid_()
    else:
        i = torch.sigmoid(a_i + c * peephole[0])
        f = torch.sigmoid(a_f + c * peephole[1])
    c = torch.addcmul(f * c, i, a_g.tanh_())
    o = a_o.sigmoid_() if peephole is None else torch.sigmoid(a_o + c * peephole[2])
    return o * torch.tanh(c), c


class Streams:
    """N sequences read by the model as it is: each prefix in one pass, then one
    :class:`Stepper` step per character for all rows at once.

    Both methods return the last layer's output (the hidden state the cache keys on) and
    the logits of the next character: :meth:`read` ``(T, N', H)`` and ``(N', V)`` for the
    rows ``rows`` reading ``x`` (T, N'); :meth:`step` ``(N, H)`` and ``(N, V)``.
    """

    def __init__(self, model: CharLSTM, batch: int, fold: bool = False) -> None:
        self.model = model
        self.device = model.head.weight.device
        self.fold = fold
        self.state = model.init_state(batch)  # (L, N, H) each
        self.stepper: Stepper | None = None  # built after the prefixes
        self.layer_states: LayerStates = []

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = self.state[0][:, rows], self.state[1][:, rows]
        features, (h, c) = self.model.features(x, (h, c))  # (T, N', H)
        self.state[0][:, rows], self.state[1][:, rows] = h, c
        return features, self.model.head(features)[-1]

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stepper is None:
            self.stepper = Stepper(self.model, fold=self.fold)
            self.layer_states = Stepper.split(self.state)
        logits = self.stepper(x, self.layer_states)
        return self.layer_states[-1][0], logits


class LearningStream:
    """One sequence read by a private copy of the model that learns as it reads.

    The text (prefix, then each character generated) is cut into segments of
    ``config.segment`` characters, each predicted from the ones before it, exactly as
    :func:`~charlstm.evaluate.score_adaptive` cuts it: once a segment's last character is
    known, one SGD step on the segment's loss (from the state at its start) updates the
    copy, which reads everything after it. ``segment`` holds the inputs read since the
    current segment began, ``start_state`` the state before them.
    """

    def __init__(self, model: CharLSTM, config: DynamicConfig) -> None:
        self.learner = DynamicEvaluation(model, config)
        self.model = self.learner.model
        self.layer_states = Stepper.split(self.model.init_state(1))
        self.start_state = Stepper.stack(self.layer_states)
        self.segment: list[int] = []
        self.stepper = Stepper(self.model)

    def _arrive(self, char: int) -> None:
        """``char`` is the next character of the text: learn from a segment it completes."""
        size = self.learner.config.segment
        if len(self.segment) < size:
            return
        x = torch.tensor(self.segment, device=self.model.head.weight.device)
        y = torch.cat([x[1:], x.new_tensor([char])])
        with torch.enable_grad():
            _, log_p, _ = read_log_probs(self.model, x, self.start_state)
            self.learner.learn(torch.nn.functional.nll_loss(log_p, y))
        self.stepper = Stepper(self.model)  # it holds copies of the old weights
        self.start_state = Stepper.stack(self.layer_states)
        self.segment = []

    def read(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read ``x`` (T,): outputs (T, 1, H) and the next character's logits (1, V)."""
        features = []
        start = 0
        while start < len(x):
            self._arrive(int(x[start]))
            chunk = x[start : start + self.learner.config.segment - len(self.segment)]
            out, _, state = read_log_probs(self.model, chunk, Stepper.stack(self.layer_states))
            self.layer_states = Stepper.split(state)
            self.segment += chunk.tolist()
            features.append(out)
            start += len(chunk)
        features_all = torch.cat(features)[:, None]  # (T, 1, H)
        return features_all, self.model.head(features_all[-1])

    def step(self, char: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read one character: output (1, H) and the next character's logits (1, V)."""
        self._arrive(char)
        x = torch.tensor([char], device=self.model.head.weight.device)
        logits = self.stepper(x, self.layer_states)
        self.segment.append(char)
        return self.layer_states[-1][0], logits


class LearningStreams:
    """N :class:`LearningStream` rows behind the interface of :class:`Streams`; every row
    starts from a fresh copy of the weights."""

    def __init__(self, model: CharLSTM, batch: int, config: DynamicConfig) -> None:
        self.rows = [LearningStream(model, config) for _ in range(batch)]

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [self.rows[row].read(x[:, i]) for i, row in enumerate(rows.tolist())]
        return torch.cat([f for f, _ in outs], dim=1), torch.cat([g for _, g in outs])

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [row.step(char) for row, char in zip(self.rows, x.tolist(), strict=True)]
        return torch.cat([h for h, _ in outs]), torch.cat([g for _, g in outs])


class AdaptiveStreams:
    """Streams whose distribution is more than the LSTM's; returns log-probabilities.

    ``dynamic``: every row is a :class:`LearningStream`. ``mixture``: the LSTM's
    distribution is interpolated with the run's n-gram (:mod:`charlstm.mixture`), which
    reads the last characters of each row. ``cache``: a
    :class:`~charlstm.evaluate.StreamCache` holds each row's (hidden state, next character)
    pairs, the prefix's included, and the distribution is mixed with it. A pair joins the
    cache when its next character is read, so a query never sees its own answer.
    """

    def __init__(
        self,
        model: CharLSTM,
        batch: int,
        cache: CacheConfig | None = None,
        dynamic: DynamicConfig | None = None,
        fold: bool = False,
        mixture: NgramMixture | None = None,
    ) -> None:
        self.streams: Streams | LearningStreams = (
            LearningStreams(model, batch, dynamic)
            if dynamic is not None
            else Streams(model, batch, fold)
        )
        self.device = device = model.head.weight.device
        hidden = model.config.hidden_size
        self.cache = StreamCache(cache, batch, hidden, device) if cache is not None else None
        self.query = torch.zeros((batch, hidden), device=device)  # each row's last output
        self.mixture = mixture
        self.recent = [""] * batch  # each row's last characters, for the n-gram

    def _mix_ngram(self, log_p: torch.Tensor, rows: list[int]) -> torch.Tensor:
        if self.mixture is None:
            return log_p
        contexts = [self.recent[row] for row in rows]
        return self.mixture.mix(log_p, self.mixture.log_distributions(contexts))

    def read(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = self.streams.read(rows, x)
        log_p = torch.log_softmax(logits.float(), dim=-1)
        if self.mixture is not None:
            width, vocab = self.mixture.width, self.mixture.vocab
            for column, row in enumerate(rows.tolist()):
                self.recent[row] = vocab.decode(x[-width:, column])
            log_p = self._mix_ngram(log_p, rows.tolist())
        if self.cache is None:
            return features, log_p
        self.cache.fill(rows, features[:-1], x[1:])
        self.query[rows] = features[-1].float()
        return features, self.cache.mix(log_p, features[-1], rows)

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            self.cache.add(self.query, x)
        features, logits = self.streams.step(x)
        log_p = torch.log_softmax(logits.float(), dim=-1)
        if self.mixture is not None:
            width, chars = self.mixture.width, self.mixture.vocab.idx_to_char
            self.recent = [
                (recent + chars[i])[-width:]
                for recent, i in zip(self.recent, x.tolist(), strict=True)
            ]
            log_p = self._mix_ngram(log_p, list(range(len(self.recent))))
        if self.cache is None:
            return features, log_p
        self.query = features.float()
        return features, self.cache.mix(log_p, features)


ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def parse_char(text: str, option: str = "--stop-at") -> str:
    """One character from the command line, where ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` are
    accepted for a newline, a tab, a carriage return and a backslash."""
    char = ESCAPES.get(text, text)
    if len(char) != 1:
        raise CharLSTMError(f"{option} takes one character (or \\n, \\t), not {text!r}")
    return char


def check_request(length: int, num_samples: int, seed: int | None) -> None:
    """How much to generate, and from which seed: errors before any work is done."""
    non_negative("--length", length)
    positive("--num-samples", num_samples)
    if seed is not None:
        check_seed(seed)


def check_stop(vocab: Vocab, stop_at: str | None, lines: int | None) -> None:
    if stop_at is not None:
        if len(stop_at) != 1:
            raise CharLSTMError(f"--stop-at takes one character, not {stop_at!r}")
        if stop_at not in vocab:
            raise CharLSTMError(
                f"--stop-at {stop_at!r} is not in the model's vocabulary, so it never appears"
            )
    if lines is not None:
        positive("--lines", lines)
        if "\n" not in vocab:
            raise CharLSTMError(
                "--lines needs newlines, but this model's vocabulary has none "
                "(it was trained with --newlines space)"
            )


def generate(
    model: CharLSTM,
    vocab: Vocab,
    prefixes: Sequence[str],
    length: int = 100,
    config: SamplingConfig | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    on_step: Callable[[list[str]], None] | None = None,
    stop_at: str | None = None,
    lines: int | None = None,
    *,
    cache: CacheConfig | None = None,
    dynamic: DynamicConfig | None = None,
    mixture: NgramMixture | None = None,
) -> list[list[str]]:
    """Continue each prefix ``num_samples`` times by up to ``length`` characters.

    Returns ``texts[p][s]``: the continuation (without the prefix) of prefix ``p``, sample
    ``s``. All ``P * S`` sequences run as one batch, row ``p * S + s``. ``seed`` seeds a
    generator of its own (``None``: torch's global one); the same seed gives the same text
    for the same prefixes, settings, backend and device. ``on_step`` receives, at each step,
    one string per row: the character chosen, or ``""`` for a row that has already ended.
    ``cache`` / ``dynamic`` adapt each row to its own text as it is written (rule 0 of the
    module docstring); ``model`` itself is never changed. ``mixture`` interpolates the
    LSTM with the run's n-gram (:mod:`charlstm.mixture`) before anything else.
    """
    config = (config or SamplingConfig()).validate(len(vocab))
    cache = cache.validate() if cache is not None else None
    dynamic = dynamic.validate() if dynamic is not None else None
    check_request(length, num_samples, seed)
    if not prefixes or any(p == "" for p in prefixes):
        raise CharLSTMError("the prefix is empty; give at least one character with --prefix")
    unknown = list(dict.fromkeys(ch for p in prefixes for ch in vocab.missing(p)))
    if unknown:
        raise CharLSTMError(
            f"prefix has characters not in the model's vocabulary: {show_chars(unknown)}"
        )
    check_stop(vocab, stop_at, lines)
    was_training = model.training
    model.eval()
    batch = len(prefixes) * num_samples
    fold = batch * length >= len(vocab)  # the fold pays for itself (see Stepper)
    # Dynamic evaluation needs gradients; otherwise nothing here does.
    with torch.no_grad() if dynamic is not None else torch.inference_mode():
        try:
            if cache is None and dynamic is None and mixture is None:
                streams: Streams | AdaptiveStreams = Streams(model, batch, fold)
            else:
                streams = AdaptiveStreams(model, batch, cache, dynamic, fold, mixture)
            rows = _run(
                streams, vocab, prefixes, length, config, num_samples, seed, on_step, stop_at, lines
            )
        finally:
            model.train(was_training)
    texts = [vocab.decode(row) for row in rows]
    return [texts[p * num_samples : (p + 1) * num_samples] for p in range(len(prefixes))]


def _run(
    streams: Streams | AdaptiveStreams,
    vocab: Vocab,
    prefixes: Sequence[str],
    length: int,
    config: SamplingConfig,
    num_samples: int,
    seed: int | None,
    on_step: Callable[[list[str]], None] | None,
    stop_at: str | None,
    lines: int | None,
) -> list[list[int]]:
    """The generation loop; returns the generated indices of every row."""
    device = streams.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    batch = len(prefixes) * num_samples
    if length == 0:
        return [[] for _ in range(batch)]
    sequences = [p for p in prefixes for _ in range(num_samples)]
    penalty = (
        RepetitionPenalty(config, batch, len(vocab), device)
        if config.repetition_penalty != 1.0
        else None
    )

    def choose(logits: torch.Tensor) -> torch.Tensor:
        if penalty is not None:
            logits = penalty(logits)
        return next_chars(logits, config, generator)

    # Read each prefix in one pass; prefixes of different lengths are run one group each.
    last = torch.empty(batch, dtype=torch.long, device=device)
    for group_length in sorted({len(p) for p in prefixes}):
        rows = [i for i, p in enumerate(sequences) if len(p) == group_length]
        x = torch.stack([vocab.encode(sequences[i]) for i in rows], dim=1).to(device)  # (T, N')
        index = torch.tensor(rows, device=device)
        _, logits = streams.read(index, x)
        last[index] = next_chars(logits, config, generator)  # nothing to penalise yet

    out = torch.empty((batch, length), dtype=torch.long, device=device)  # (N, length)
    stopping = stop_at is not None or lines is not None
    if stopping:
        stop_index = vocab.char_to_idx[stop_at] if stop_at is not None else -1
        newline = vocab.char_to_idx["\n"] if lines is not None else -1
        newlines = torch.zeros(batch, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        ends = torch.full((batch,), length, dtype=torch.long, device=device)
    chars = vocab.idx_to_char
    steps = length
    for t in range(length):
        out[:, t] = last
        if on_step is not None:
            if stopping:
                on_step(
                    [
                        "" if ended else chars[i]
                        for i, ended in zip(last.tolist(), done.tolist(), strict=True)
                    ]
                )
            else:
                on_step([chars[i] for i in last.tolist()])
        if stopping:
            hit = last == stop_index
            if lines is not None:
                newlines += last == newline
                hit |= newlines >= lines
            ends = torch.where(hit & ~done, t + 1, ends)
            done |= hit
            if bool(done.all()):
                steps = t + 1
                break
        if t == length - 1:
            break
        if penalty is not None:
            penalty.push(last)
        last = choose(streams.step(last)[1])
    rows = out[:, :steps].tolist()
    if stopping:
        return [row[:end] for row, end in zip(rows, ends.tolist(), strict=True)]
    return rows
