"""The character language model and its two recurrent backends.

Every model has one interface::

    logits, state = model(x, state)      # x (T, N) int64 -> logits (T, N, V)
    state = model.init_state(N)          # (h, c), each (L, N, H)

``x`` is embedded (an ``nn.Embedding`` row lookup is exactly d2l's one-hot vector times a
weight matrix, without building the one-hot), run through ``L`` LSTM layers and projected
onto the vocabulary. The LSTM layers are either written out gate by gate
(:class:`ScratchLSTMLayer`, backend ``scratch``) or ``nn.LSTM`` (backend ``torch``);
:func:`build_model` picks one from a :class:`~charlstm.config.ModelConfig`.

Letters: T time steps, N batch, D input size, H hidden size, L layers, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from charlstm.config import ModelConfig
from charlstm.errors import CharLSTMError
from charlstm.lstm_function import lstm_recurrence, lstm_recurrence_autograd

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (L, N, H)
LayerState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (N, H)


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
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        impl: str = "fused",
        peephole: bool = False,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.impl, self.weight_drop = impl, weight_drop
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
        if self.training and self.weight_drop > 0:
            return nn.functional.dropout(self.W_h, self.weight_drop, training=True)
        return self.W_h

    def forward(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """``x`` (T, N, D), ``state`` ((N, H), (N, H)) -> ``h`` for every step (T, N, H)."""
        steps, batch, _ = x.shape
        gx = torch.addmm(self.b, x.reshape(steps * batch, -1), self.W_x)
        gx = gx.view(steps, batch, 4 * self.hidden_size)  # (T, N, 4H)
        recurrence = lstm_recurrence if self.impl == "fused" else lstm_recurrence_autograd
        h0, c0 = state
        hs, c_last = recurrence(gx, self.recurrent_weight(), h0, c0, self.peephole)
        return hs, (hs[-1], c_last)


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


class SequenceDropout(nn.Module):
    """Dropout on ``(T, N, D)`` activations.

    ``variational=True`` draws one mask per sequence and reuses it at every time step
    (Gal & Ghahramani; AWD-LSTM's "locked dropout"); otherwise every element is dropped
    independently.
    """

    def __init__(self, p: float, variational: bool) -> None:
        super().__init__()
        self.p, self.variational = p, variational

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.variational:
            return nn.functional.dropout(x, self.p, training=True)
        keep = 1.0 - self.p
        mask = x.new_empty((1, *x.shape[1:])).bernoulli_(keep) / keep  # (1, N, D)
        return x * mask


class CharLSTM(nn.Module):
    """Embedding -> L LSTM layers -> linear layer over the vocabulary."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        V, D, H = config.vocab_size, config.input_size, config.hidden_size
        self.embedding = nn.Embedding(V, D)
        sizes = [D] + [H] * (config.num_layers - 1)
        if config.backend == "scratch":
            layers = [
                ScratchLSTMLayer(size, H, config.scratch_impl, config.peephole, config.weight_drop)
                for size in sizes
            ]
        else:
            layers = [TorchLSTMLayer(size, H) for size in sizes]
        self.layers = nn.ModuleList(layers)
        self.embed_drop = SequenceDropout(config.embed_dropout, config.variational)
        self.drop = SequenceDropout(config.dropout, config.variational)
        self.head = nn.Linear(H, V)
        if config.tie_weights:
            # The shared matrix also scores the output, so it starts small (AWD-LSTM's
            # +-0.1) rather than N(0, 1), which would make the first logits huge.
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            self.head.weight = self.embedding.weight  # (V, H) shared

    def init_state(self, batch_size: int) -> State:
        """Zero ``(h, c)``, each (L, N, H), on the model's device and dtype."""
        weight = self.head.weight
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        return weight.new_zeros(shape), weight.new_zeros(shape)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``x`` (T, N) int64 -> logits (T, N, V) and the state after the last step."""
        out, state = self.features(x, state)
        return self.head(out), state

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

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


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
