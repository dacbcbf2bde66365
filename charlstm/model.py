"""The character language model and its two recurrent backends.

Every model has one interface::

    logits, state = model(x, state)      # x (T, N) int64 -> logits (T, N, V)
    log_p, state = model.log_probs(x, state)        # log-probabilities (T, N, V)
    loss, state = model.nll(x, y, state)            # mean NLL of targets y (T, N)
    logits, state = model.step(x, state)  # one time step: x (N,) -> (N, V)
    state = model.init_state(N)          # (h, c), each (L, N, H)

"Logits" are any scores whose softmax is the next-character distribution: for the full
softmax (``softmax="full"``) the output layer's scores, for the adaptive softmax
(``softmax="adaptive"``, :class:`torch.nn.AdaptiveLogSoftmaxWithLoss`) the
log-probabilities themselves (``softmax(log p) = p``), so everything that reads logits
(cross-entropy, the decoding rules) works for both. Training with the adaptive softmax
should call :meth:`CharLSTM.nll`, which never builds the whole distribution.

``x`` is embedded (an ``nn.Embedding`` row lookup is exactly d2l's one-hot vector times a
weight matrix, without building the one-hot), run through ``L`` LSTM layers and projected
onto the vocabulary. With ``embedding_size=0`` (scratch backend) the model is d2l's own
parameterisation, one-hot vectors straight into the gates: ``one_hot(x) @ W_x`` is row
``x`` of the first layer's ``W_x`` (V, 4H), so that table is the embedding
(``embedding.weight``), looked up with no matrix product, and its gradient is non-zero
only on the rows looked up. The LSTM layers are either written out gate by gate
(:class:`ScratchLSTMLayer`, backend ``scratch``) or ``nn.LSTM`` (backend ``torch``);
:func:`build_model` picks one from a :class:`~charlstm.config.ModelConfig`.

Training's random masks (dropout, variational dropout, embedding dropout, DropConnect)
come from the model's :class:`Masks`: torch's global generator by default, or, after
:meth:`CharLSTM.seed_masks`, a generator of their own drawn for the whole global batch, so
that a data-parallel process's masks are a single process's rows (:class:`Masks`).

Letters: T time steps, N batch, D input size, H hidden size, L layers, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from charlstm.config import ModelConfig
from charlstm.errors import CharLSTMError
from charlstm.lstm_function import lstm_recurrence, lstm_recurrence_autograd, lstm_step

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (L, N, H)
LayerState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (N, H)


class Masks:
    """Where training's random keep-masks come from; one object shared by a model's layers.

    By default (``generator`` None) torch's global generator, at the shapes the model sees.
    After :meth:`seed` the masks come from ``generator``, and a mask with a batch dimension
    is drawn for all ``batch_size`` rows of the global batch, of which this process keeps
    rows ``[lo, hi)`` (``rows``). The processes of a data-parallel job hold the rows
    ``[r N / W, (r + 1) N / W)`` of each batch: seeded alike, each draws the numbers one
    process training the whole batch would draw, and keeps the rows it owns, so its masks
    equal that process's row for row, for any number of processes. A mask without a batch
    dimension (DropConnect's, on ``W_h``) is the whole draw, the same on every process.
    The cost: each process draws the global batch's masks, ``W`` times its own share
    (:meth:`keep` draws them cheaply).
    """

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None
        self.rows: tuple[int, int] | None = None
        self.batch_size = 0

    def seed(
        self,
        seed: int,
        device: torch.device,
        rows: tuple[int, int] | None = None,
        batch_size: int = 0,
    ) -> None:
        """Draw from a generator on ``device`` seeded with ``seed`` from now on; ``rows``
        ``[lo, hi)`` of a global batch of ``batch_size`` are this process's (None: all)."""
        if rows is not None and not 0 <= rows[0] < rows[1] <= batch_size:
            raise CharLSTMError(f"rows {rows} are not a part of a batch of {batch_size}")
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.rows, self.batch_size = rows, batch_size

    def keep(
        self, like: torch.Tensor, shape: Sequence[int], p: float, batch_dim: int | None
    ) -> torch.Tensor:
        """A dropout mask of ``shape`` (on ``like``'s device and dtype): each element
        ``1 / (1 - p)`` with probability ``1 - p``, else 0. ``batch_dim``: the dimension
        holding this process's rows of the batch, or None.

        From the generator a mask is a float32 uniform draw compared with ``1 - p``: three
        times as fast as ``bernoulli_`` on a CPU (1.9 ms against 5.7 ms for 35 x 32 x 256
        elements, one thread), so drawing the global batch's masks costs a data-parallel
        process less than drawing its own share did with ``bernoulli_``."""
        keep = 1.0 - p
        if self.generator is None:
            return like.new_empty(tuple(shape)).bernoulli_(keep).div_(keep)
        full = list(shape)
        if batch_dim is not None and self.rows is not None:
            lo, hi = self.rows
            if shape[batch_dim] != hi - lo:
                raise CharLSTMError(
                    f"a batch of {shape[batch_dim]} rows is not this process's rows "
                    f"[{lo}, {hi}) of {self.batch_size}"
                )
            full[batch_dim] = self.batch_size
        draw = like.new_empty(full, dtype=torch.float32).uniform_(generator=self.generator)
        mask = draw.lt_(keep).div_(keep).to(like.dtype)
        if batch_dim is None or self.rows is None:
            return mask
        return mask.narrow(batch_dim, lo, hi - lo)


class ScratchLSTMLayer(nn.Module):
    """One LSTM layer with its own parameters, the textbook equations::

        i_t = sigmoid(x_t W_xi + h_{t-1} W_hi + b_i)        input gate
        f_t = sigmoid(x_t W_xf + h_{t-1} W_hf + b_f)        forget gate
        g_t = tanh(x_t W_xg + h_{t-1} W_hg + b_g)           candidate cell
        o_t = sigmoid(x_t W_xo + h_{t-1} W_ho + b_o)        output gate
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)

    The four gates' weights sit side by side as column blocks ``[i | f | g | o]`` (the
    order ``nn.LSTM`` uses): ``W_x`` (D, 4H), ``W_h`` (H, 4H), ``b`` (4H,). The input term
    ``x_t W_x + b`` is computed for all T steps in one matrix product; only ``h_{t-1} W_h``
    stays inside the time loop. With ``peephole`` the gates also see the cell (``i`` and
    ``f`` see ``c_{t-1}``, ``o`` sees ``c_t``) through the vectors ``peephole[0..2]``.

    ``impl="fused"`` runs the loop in :class:`charlstm.lstm_function.LSTMRecurrence` (no
    autograd graph; hand-derived backpropagation through time); ``impl="autograd"`` runs
    the same equations as plain tensor code and lets autograd differentiate them.

    With ``one_hot`` the layer has no ``W_x``: its inputs are already rows of a one-hot
    layer's ``W_x`` (V, 4H), looked up by the model (``one_hot(x_t) @ W_x = W_x[x_t]``),
    and only ``b`` is added to them.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        impl: str = "fused",
        peephole: bool = False,
        weight_drop: float = 0.0,
        one_hot: bool = False,
        masks: Masks | None = None,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.impl, self.weight_drop = impl, weight_drop
        self.masks = Masks() if masks is None else masks  # DropConnect's
        self.W_x: nn.Parameter | None = None
        if not one_hot:
            self.W_x = nn.Parameter(torch.empty(input_size, 4 * hidden_size))  # (D, 4H)
        self.W_h = nn.Parameter(torch.empty(hidden_size, 4 * hidden_size))  # (H, 4H)
        self.b = nn.Parameter(torch.empty(4 * hidden_size))  # (4H,)
        self.peephole = nn.Parameter(torch.empty(3, hidden_size)) if peephole else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(H), the same distribution ``nn.LSTM`` starts from."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def recurrent_weight(self) -> torch.Tensor:
        """``W_h``, with DropConnect (AWD-LSTM) applied while training."""
        if not (self.training and self.weight_drop > 0):
            return self.W_h
        if self.masks.generator is None:
            return nn.functional.dropout(self.W_h, self.weight_drop, training=True)
        return self.W_h * self.masks.keep(self.W_h, self.W_h.shape, self.weight_drop, None)

    def forward(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """``x`` (T, N, D), ``state`` ((N, H), (N, H)) -> ``h`` for every step (T, N, H).

        For a ``one_hot`` layer ``x`` is the looked-up rows ``W_x[x_t]`` (T, N, 4H)."""
        gx = self.input_term(x.flatten(0, 1)).view(*x.shape[:2], 4 * self.hidden_size)
        recurrence = lstm_recurrence if self.impl == "fused" else lstm_recurrence_autograd
        h0, c0 = state
        hs, c_last = recurrence(gx, self.recurrent_weight(), h0, c0, self.peephole)
        return hs, (hs[-1], c_last)

    def input_term(self, x: torch.Tensor) -> torch.Tensor:
        """``x W_x + b``: (N, D) -> (N, 4H), the part of the gates that does not recur
        (for a ``one_hot`` layer ``x`` is ``W_x``'s rows already: ``x + b``)."""
        if self.W_x is None:
            return x + self.b
        return torch.addmm(self.b, x, self.W_x)

    def step(
        self, x: torch.Tensor | None, state: LayerState, gx: torch.Tensor | None = None
    ) -> LayerState:
        """One time step: ``x`` (N, D) and ``state`` -> the new ``(h, c)``, each (N, H).

        ``gx`` is ``x``'s :meth:`input_term` (N, 4H) when the caller has it already (then
        ``x`` is not read). Without peepholes and ``gx`` the step is one ``torch.lstm_cell``
        (the same equations: its ``w_ih``, ``w_hh``, ``b_ih`` are ``W_x``, ``W_h`` and
        ``b`` transposed); otherwise it is :func:`~charlstm.lstm_function.lstm_step`, one
        step of the layer's recurrence.
        """
        h, c = state
        W_h = self.recurrent_weight()
        if gx is None and self.peephole is None and self.W_x is not None:
            return torch.lstm_cell(x, (h, c), self.W_x.t(), W_h.t(), self.b)
        if gx is None:
            gx = self.input_term(x)
        return lstm_step(gx, W_h, h, c, self.peephole)


class TorchLSTMLayer(nn.Module):
    """One ``nn.LSTM`` layer behind the same interface as :class:`ScratchLSTMLayer`."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size)

    def forward(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        h0, c0 = state
        hs, (h_last, c_last) = self.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
        return hs, (h_last.squeeze(0), c_last.squeeze(0))

    def input_term(self, x: torch.Tensor) -> torch.Tensor:
        """``x w_ih^T + b_ih + b_hh``: (N, D) -> (N, 4H)."""
        lstm = self.lstm
        return torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, x, lstm.weight_ih_l0.t())

    def step(
        self, x: torch.Tensor | None, state: LayerState, gx: torch.Tensor | None = None
    ) -> LayerState:
        """One time step, as :meth:`ScratchLSTMLayer.step`: ``torch.lstm_cell`` on this
        layer's ``nn.LSTM`` weights, or, given ``gx``, one step of the recurrence
        (:func:`~charlstm.lstm_function.lstm_step`) on them (``W_h = w_hh^T``)."""
        lstm = self.lstm
        if gx is None:
            return torch.lstm_cell(
                x, state, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
            )
        h, c = state
        return lstm_step(gx, lstm.weight_hh_l0.t(), h, c)


class SequenceDropout(nn.Module):
    """Dropout on ``(T, N, D)`` activations.

    ``variational=True`` draws one mask per sequence and reuses it at every time step
    (Gal & Ghahramani; AWD-LSTM's "locked dropout"); otherwise every element is dropped
    independently. The masks come from ``masks`` (:class:`Masks`).
    """

    def __init__(self, p: float, variational: bool, masks: Masks | None = None) -> None:
        super().__init__()
        self.p, self.variational = p, variational
        self.masks = Masks() if masks is None else masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.variational and self.masks.generator is None:
            return nn.functional.dropout(x, self.p, training=True)
        shape = (1, *x.shape[1:]) if self.variational else x.shape  # (1, N, D) or (T, N, D)
        return x * self.masks.keep(x, shape, self.p, batch_dim=1)


class CharLSTM(nn.Module):
    """Embedding -> L LSTM layers -> output layer over the vocabulary.

    The output layer is ``head``: an ``nn.Linear(H, V)`` (full softmax), or an
    ``nn.AdaptiveLogSoftmaxWithLoss`` (adaptive softmax) whose classes are frequency ranks.
    ``head_order`` (V,), a buffer saved with the weights, maps each vocabulary index to
    its rank (set by :meth:`set_class_order`; identity until then); every method here
    takes and returns vocabulary indices.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config = config.resolved()  # the output layer "auto" chooses, recorded as built
        self.config = config
        V, D, H = config.vocab_size, config.input_size, config.hidden_size
        self.masks = Masks()  # every random mask of training: see seed_masks
        # One-hot inputs: the embedding is the first layer's W_x (V, 4H) itself.
        self.embedding = nn.Embedding(V, 4 * H if config.one_hot else D)
        sizes = [D] + [H] * (config.num_layers - 1)
        if config.backend == "scratch":
            layers = [
                ScratchLSTMLayer(
                    size,
                    H,
                    config.scratch_impl,
                    config.peephole,
                    config.weight_drop,
                    one_hot=config.one_hot and index == 0,
                    masks=self.masks,
                )
                for index, size in enumerate(sizes)
            ]
            if config.one_hot:  # nn.LSTM's start for a one-hot input: uniform +-1/sqrt(H)
                nn.init.uniform_(self.embedding.weight, -1 / math.sqrt(H), 1 / math.sqrt(H))
        else:
            layers = [TorchLSTMLayer(size, H) for size in sizes]
        self.layers = nn.ModuleList(layers)
        self.embed_drop = SequenceDropout(config.embed_dropout, config.variational, self.masks)
        self.drop = SequenceDropout(config.dropout, config.variational, self.masks)
        self.adaptive = config.softmax == "adaptive"
        self.head: nn.Linear | nn.AdaptiveLogSoftmaxWithLoss
        if self.adaptive:
            cutoffs = list(config.cutoffs) if config.cutoffs else default_cutoffs(V)
            self.head = nn.AdaptiveLogSoftmaxWithLoss(
                H, V, cutoffs, div_value=ADAPTIVE_DIV_VALUE, head_bias=True
            )
            self.register_buffer("head_order", torch.arange(V))  # vocabulary index -> rank
        else:
            self.head = nn.Linear(H, V)
        if config.tie_weights:
            # The shared matrix also scores the output, so it starts small (AWD-LSTM's
            # +-0.1) rather than N(0, 1), which would make the first logits huge.
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            self.head.weight = self.embedding.weight  # (V, H) shared

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def seed_masks(
        self, seed: int, rows: tuple[int, int] | None = None, batch_size: int = 0
    ) -> None:
        """Draw training's random masks (dropout, variational and embedding dropout,
        DropConnect) from a generator seeded with ``seed`` from now on, for a global batch
        of ``batch_size`` rows of which the batches this model sees are rows ``rows``
        ``[lo, hi)`` (None: the whole batch). A data-parallel process seeded as one
        process would be then draws that process's masks, row for row (:class:`Masks`)."""
        self.masks.seed(seed, self.device, rows, batch_size)

    def init_state(self, batch_size: int) -> State:
        """Zero ``(h, c)``, each (L, N, H), on the model's device and dtype."""
        weight = self.embedding.weight
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        return weight.new_zeros(shape), weight.new_zeros(shape)

    def set_class_order(self, counts: Sequence[int] | torch.Tensor) -> None:
        """Rank the adaptive softmax's classes by ``counts`` (V,), how often each vocabulary
        character occurs (most frequent first, ties by index). Call it once, before
        training: the weights learn the order."""
        if not self.adaptive:
            raise CharLSTMError("the class order is a setting of the adaptive softmax")
        counts = torch.as_tensor(counts)
        if counts.shape != (self.config.vocab_size,):
            raise CharLSTMError(
                f"class order needs one count per character ({self.config.vocab_size}), "
                f"not {tuple(counts.shape)}"
            )
        by_frequency = torch.argsort(counts, descending=True, stable=True)  # rank -> index
        order = torch.empty_like(by_frequency)
        order[by_frequency] = torch.arange(len(order))
        self.head_order.copy_(order)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``x`` (T, N) int64 -> logits (T, N, V) and the state after the last step."""
        out, state = self.features(x, state)
        return self.logits(out), state

    def features(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The last layer's output (T, N, H) before the vocabulary layer, and the state."""
        h0, c0 = self.init_state(x.shape[1]) if state is None else state
        out = self.embed_drop(self.embedding(x))  # (T, N, D)
        h_last, c_last = [], []
        for index, layer in enumerate(self.layers):
            out, (h, c) = layer(out, (h0[index], c0[index]))  # (T, N, H)
            out = self.drop(out)
            h_last.append(h)
            c_last.append(c)
        return out, (torch.stack(h_last), torch.stack(c_last))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The last layer's output (..., H) -> logits (..., V) in vocabulary order (for the
        adaptive softmax: its log-probabilities)."""
        if not self.adaptive:
            return self.head(features)
        head = self.head
        assert isinstance(head, nn.AdaptiveLogSoftmaxWithLoss)
        ranked = head.log_prob(features.reshape(-1, features.shape[-1]))  # (M, V) by rank
        return ranked.index_select(1, self.head_order).view(*features.shape[:-1], -1)

    def log_probs(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``x`` (T, N) -> log-probabilities of the next character (T, N, V), float32 or
        wider, and the state."""
        out, state = self.features(x, state)
        return self.features_log_probs(out), state

    def features_log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """The last layer's output (..., H) -> log-probabilities (..., V)."""
        logits = self.logits(features).float()
        return logits if self.adaptive else torch.log_softmax(logits, dim=-1)

    def nll(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        state: State | None = None,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, State]:
        """Negative log-likelihood of targets ``y`` (T, N) after inputs ``x`` (T, N): their
        mean (``reduction="mean"``) or one value per target (T * N,) in ``y.flatten()``
        order (``"none"``); and the state. The adaptive softmax computes only the clusters
        the targets fall in (its efficient forward), never the whole distribution."""
        if reduction not in ("mean", "none"):
            raise CharLSTMError(f"unknown reduction {reduction!r}; choose mean or none")
        out, state = self.features(x, state)
        flat_y = y.flatten()
        if self.adaptive:
            ranked = self.head(out.flatten(0, 1), self.head_order[flat_y])
            losses = -ranked.output  # (T * N,)
            return (ranked.loss if reduction == "mean" else losses), state
        log_p = torch.log_softmax(self.head(out).flatten(0, 1), dim=-1)  # (T * N, V)
        return nn.functional.nll_loss(log_p, flat_y, reduction=reduction), state

    def step_table(self) -> torch.Tensor:
        """The first layer's input term for every character (V, 4H): with it,
        :meth:`step` looks up a row instead of multiplying the embedding by ``W_x``, a
        third fewer multiply-adds per step for one layer, for a one-off cost of V rows."""
        return self.layers[0].input_term(self.embedding.weight)

    def step(
        self, x: torch.Tensor, state: State, table: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """One time step for N sequences: ``x`` (N,) int64 -> logits (N, V) and the new
        state; the last layer's output at this step is ``state[0][-1]`` (N, H).

        The same function as ``model(x.view(1, N), state)`` in evaluation mode (no
        dropout), without the machinery for T steps: per layer one
        :meth:`ScratchLSTMLayer.step` / :meth:`TorchLSTMLayer.step`. ``table`` is
        :meth:`step_table`, when the caller steps often enough for it to pay.
        """
        h0, c0 = state
        out = None if table is not None else self.embedding(x)  # (N, D)
        h_new, c_new = [], []
        for index, layer in enumerate(self.layers):
            gx = table.index_select(0, x) if index == 0 and table is not None else None
            out, c = layer.step(out, (h0[index], c0[index]), gx)  # (N, H)
            h_new.append(out)
            c_new.append(c)
        if len(h_new) == 1:
            new_state = (h_new[0].unsqueeze(0), c_new[0].unsqueeze(0))
        else:
            new_state = (torch.stack(h_new), torch.stack(c_new))
        return self.logits(out), new_state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


#: ``div_value`` of the adaptive softmax: each tail cluster's projection is this many
#: times narrower than the one before (torch's default).
ADAPTIVE_DIV_VALUE = 4.0
#: The shares of the text the adaptive softmax's shortlist and first tail cluster cover
#: (:func:`default_cutoffs`). Chosen by measurement on tang_poems (docs/benchmarks.md): a
#: shortlist covering 85 % (980 characters) instead of 93 % (1,800) makes a 1x512 training
#: step 1.15-1.3x faster and scores lower held out after the same minutes of training.
CUTOFF_COVERAGE = (0.85, 0.999)
#: The widths :func:`align_cutoffs` rounds the adaptive softmax's head and tail clusters to.
ALIGN = 8


def default_cutoffs(counts: Sequence[int] | torch.Tensor | int) -> list[int]:
    """Cutoffs for the adaptive softmax: the numbers of most frequent characters that
    cover 85 % and 99.9 % of the text, rounded up to two significant digits, below V
    (the second only where it leaves more than one character to the last cluster); then
    each moved up a little (:func:`align_cutoffs`) so that the head and every tail cluster
    but the last are a multiple of :data:`ALIGN` outputs wide.

    ``counts`` (V,) is how often each character occurs (in any order), or just V, which
    assumes Zipf's law (the r-th most frequent character ``1 / r`` as often as the first).
    A vocabulary of fewer than two characters has nothing to split and is refused.
    """
    if isinstance(counts, int):
        counts = 1.0 / torch.arange(1, counts + 1, dtype=torch.float64)
    counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
    vocab_size = len(counts)
    if vocab_size < 2:
        raise CharLSTMError(
            f"the adaptive softmax needs at least 2 characters, not {vocab_size} "
            "(use the full softmax)"
        )
    share = torch.sort(counts, descending=True).values.cumsum(0)
    share = share / share[-1].clamp_min(1e-300)
    cutoffs: list[int] = []
    for coverage in CUTOFF_COVERAGE:
        size = int(torch.searchsorted(share, torch.tensor([coverage], dtype=share.dtype))) + 1
        unit = 10 ** max(0, len(str(size)) - 2)
        size = -(-size // unit) * unit
        if cutoffs and size >= vocab_size - 1:
            break  # a last cluster of one character or none
        cutoffs.append(min(size, vocab_size - 1))
    return align_cutoffs(cutoffs, vocab_size)


def align_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> list[int]:
    """``cutoffs`` moved up so that the adaptive softmax's head (the shortlist and one
    output per tail cluster: ``cutoffs[0] + len(cutoffs)`` wide) and each tail cluster
    but the last (``cutoffs[i] - cutoffs[i - 1]``) are a multiple of :data:`ALIGN`
    outputs, where that keeps them increasing and leaves the last cluster more than one
    character. Nearly the same multiply-adds, yet faster: the CPU's matrix products run an
    output width that is not a multiple of 8 at about two thirds of the speed
    (docs/benchmarks.md: tang_poems' head 982 wide against 984)."""
    aligned = list(cutoffs)
    for i, cutoff in enumerate(aligned):
        start = -len(aligned) if i == 0 else aligned[i - 1]
        moved = start + -(-(cutoff - start) // ALIGN) * ALIGN
        below = aligned[i + 1] if i + 1 < len(aligned) else vocab_size - 1
        if moved < below:
            aligned[i] = moved
    return aligned


def build_model(config: ModelConfig) -> CharLSTM:
    """The one factory: a :class:`CharLSTM` with the backend ``config.backend`` names.

    An unknown backend (or any invalid setting) raises ``CharLSTMError``.
    """
    return CharLSTM(config)


def detach_state(state: State) -> State:
    """Cut the graph between batches (truncated BPTT) while keeping the values."""
    return state[0].detach(), state[1].detach()


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: ModelConfig, to_backend: str
) -> dict[str, torch.Tensor]:
    """Map a model's weights from ``config.backend`` to ``to_backend`` (same function).

    ``nn.LSTM`` keeps ``weight_ih`` (4H, D), ``weight_hh`` (4H, H) and two biases with the
    gates stacked in rows ``[i, f, g, o]``; the scratch layer keeps the transposes and one
    bias: ``W_x = weight_ih.T``, ``W_h = weight_hh.T``, ``b = bias_ih + bias_hh``.
    """
    if to_backend not in ("scratch", "torch"):
        raise CharLSTMError(f"unknown backend {to_backend!r}; choose scratch or torch")
    if to_backend == config.backend:
        return dict(state_dict)
    if config.peephole:
        raise CharLSTMError("a model with peephole connections has no nn.LSTM equivalent")
    if config.one_hot:
        raise CharLSTMError(
            "a one-hot model (embedding size 0) stays on the scratch backend: charlstm's torch "
            "backend feeds nn.LSTM an embedding"
        )
    out = {}
    for key, value in state_dict.items():
        if not key.startswith("layers."):
            out[key] = value.clone()
    for layer in range(config.num_layers):
        p = f"layers.{layer}."
        if to_backend == "torch":
            out[p + "lstm.weight_ih_l0"] = state_dict[p + "W_x"].t().contiguous()
            out[p + "lstm.weight_hh_l0"] = state_dict[p + "W_h"].t().contiguous()
            out[p + "lstm.bias_ih_l0"] = state_dict[p + "b"].clone()
            out[p + "lstm.bias_hh_l0"] = torch.zeros_like(state_dict[p + "b"])
        else:
            out[p + "W_x"] = state_dict[p + "lstm.weight_ih_l0"].t().contiguous()
            out[p + "W_h"] = state_dict[p + "lstm.weight_hh_l0"].t().contiguous()
            out[p + "b"] = state_dict[p + "lstm.bias_ih_l0"] + state_dict[p + "lstm.bias_hh_l0"]
    return out
