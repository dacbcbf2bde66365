"""A character LSTM language model in plain NumPy: forward and backpropagation through time.

This module is an oracle for the tests, not a path for training. It does not import torch,
runs in float64, and is written the way a textbook derives it, one gate at a time, so that
the torch models can be checked against something built independently of autograd.

Parameter layout (the same as the scratch torch layer, gate blocks in ``nn.LSTM`` order
``[i | f | g | o]``, each block ``H`` columns wide)::

    params = {
        "E":      (V, D)   character embedding; a one-hot input is E = identity
        "layers": [        one dict per layer l = 0 .. L-1; layer l reads layer l-1's h
            {"W_x": (D_l, 4H), "W_h": (H, 4H), "b": (4H,),
             optional peephole "p_i", "p_f", "p_o": (H,) each},
            ...
        ],
        "W_out":  (H, V)   logits = h @ W_out + b_out
        "b_out":  (V,)
    }

``D_0 = D`` and ``D_l = H`` above. Gradients come back as a dict of the same shape.
Shapes use T time, N batch, D input, H hidden, V vocabulary, L layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray
Layer = dict[str, Array]
Params = dict[str, Any]

PEEPHOLE_KEYS = ("p_i", "p_f", "p_o")


def sigmoid(x: Array) -> Array:
    """``1 / (1 + exp(-x))`` written through tanh, which never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def has_peephole(layer: Layer) -> bool:
    """Whether a layer dict carries all three peephole vectors."""
    present = [key in layer for key in PEEPHOLE_KEYS]
    if any(present) and not all(present):
        raise ValueError(f"a peephole layer needs all of {PEEPHOLE_KEYS}, got {sorted(layer)}")
    return all(present)


def layer_forward(
    x: Array, layer: Layer, h0: Array, c0: Array
) -> tuple[Array, Array, dict[str, Any]]:
    """One LSTM layer over a sequence.

    For ``t = 0 .. T-1``, with ``h_{-1} = h0``, ``c_{-1} = c0`` and the pre-activations
    ``a = x_t W_x + h_{t-1} W_h + b`` split into blocks ``[a_i | a_f | a_g | a_o]``::

        i_t = sigmoid(a_i + c_{t-1} * p_i)
        f_t = sigmoid(a_f + c_{t-1} * p_f)
        g_t = tanh(a_g)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigmoid(a_o + c_t * p_o)
        h_t = o_t * tanh(c_t)

    (without peephole the ``p`` terms are absent; ``*`` is elementwise).

    Args:
        x: ``(T, N, D)`` inputs. h0, c0: ``(N, H)`` initial state.

    Returns:
        ``(hs, c_T, cache)``: hidden states ``(T, N, H)``, last cell ``(N, H)``, and what
        :func:`layer_backward` needs.
    """
    W_x, W_h, b = layer["W_x"], layer["W_h"], layer["b"]
    peephole = has_peephole(layer)
    T, N, _ = x.shape
    H = W_h.shape[0]
    hs = np.zeros((T, N, H))
    cs = np.zeros((T, N, H))
    gates = np.zeros((T, N, 4 * H))  # [i | f | g | o] after their nonlinearities
    h, c = h0, c0
    for t in range(T):
        a = x[t] @ W_x + h @ W_h + b
        a_i, a_f, a_g, a_o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        if peephole:
            a_i = a_i + c * layer["p_i"]
            a_f = a_f + c * layer["p_f"]
        i = sigmoid(a_i)
        f = sigmoid(a_f)
        g = np.tanh(a_g)
        c = f * c + i * g
        if peephole:
            a_o = a_o + c * layer["p_o"]
        o = sigmoid(a_o)
        h = o * np.tanh(c)
        hs[t], cs[t] = h, c
        gates[t] = np.concatenate([i, f, g, o], axis=1)
    cache = {"x": x, "layer": layer, "h0": h0, "c0": c0, "hs": hs, "cs": cs, "gates": gates}
    return hs, c, cache


def layer_backward(
    dhs: Array, dc_T: Array, cache: dict[str, Any]
) -> tuple[Array, Layer, Array, Array]:
    """Backpropagation through time for :func:`layer_forward`.

    ``dhs[t]`` is dL/dh_t from outside the layer (the layer above, or the output head),
    ``dc_T`` is dL/dc of the last step from outside (a loss on the final cell; usually 0).
    Going ``t = T-1 .. 0`` with ``dh = dhs[t] + dh_next`` and ``dc = dc_next`` (both zero
    past the end, apart from ``dc_T``)::

        do   = dh * tanh(c_t)           da_o = do * o (1 - o)
        dc  += dh * o * (1 - tanh(c_t)^2) + da_o * p_o
        di   = dc * g                   da_i = di * i (1 - i)
        df   = dc * c_{t-1}             da_f = df * f (1 - f)
        dg   = dc * i                   da_g = dg * (1 - g^2)
        da   = [da_i | da_f | da_g | da_o]                          (N, 4H)
        dW_x += x_t^T da     dW_h += h_{t-1}^T da     db += sum_n da
        dp_i += sum_n da_i * c_{t-1}    dp_f += sum_n da_f * c_{t-1}    dp_o += sum_n da_o * c_t
        dx_t      = da W_x^T
        dh_next   = da W_h^T                                        (dL/dh_{t-1})
        dc_next   = dc * f + da_i * p_i + da_f * p_f                (dL/dc_{t-1})

    Returns:
        ``(dx, grads, dh0, dc0)``: ``dx (T, N, D)``, a dict of gradients with the layer's
        keys, and the gradients of the initial state ``(N, H)``.
    """
    x, layer, h0, c0 = cache["x"], cache["layer"], cache["h0"], cache["c0"]
    hs, cs, gates = cache["hs"], cache["cs"], cache["gates"]
    W_x, W_h = layer["W_x"], layer["W_h"]
    peephole = has_peephole(layer)
    T, N, H = hs.shape
    grads = {key: np.zeros_like(value) for key, value in layer.items()}
    dx = np.zeros_like(x)
    dh_next = np.zeros((N, H))
    dc_next = dc_T.copy()
    for t in reversed(range(T)):
        i, f, g, o = (gates[t][:, k * H : (k + 1) * H] for k in range(4))
        c = cs[t]
        c_prev = cs[t - 1] if t > 0 else c0
        h_prev = hs[t - 1] if t > 0 else h0
        tanh_c = np.tanh(c)
        dh = dhs[t] + dh_next
        do = dh * tanh_c
        da_o = do * o * (1 - o)
        dc = dc_next + dh * o * (1 - tanh_c**2)
        if peephole:
            dc = dc + da_o * layer["p_o"]
        di = dc * g
        df = dc * c_prev
        dg = dc * i
        da_i = di * i * (1 - i)
        da_f = df * f * (1 - f)
        da_g = dg * (1 - g**2)
        da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
        grads["W_x"] += x[t].T @ da
        grads["W_h"] += h_prev.T @ da
        grads["b"] += da.sum(axis=0)
        dx[t] = da @ W_x.T
        dh_next = da @ W_h.T
        dc_next = dc * f
        if peephole:
            grads["p_i"] += (da_i * c_prev).sum(axis=0)
            grads["p_f"] += (da_f * c_prev).sum(axis=0)
            grads["p_o"] += (da_o * c).sum(axis=0)
            dc_next = dc_next + da_i * layer["p_i"] + da_f * layer["p_f"]
    return dx, grads, dh_next, dc_next


def _initial_state(state: Array | None, layers: list[Layer], N: int) -> Array:
    L, H = len(layers), layers[0]["W_h"].shape[0]
    return np.zeros((L, N, H)) if state is None else np.asarray(state, dtype=np.float64)


def lstm_forward(
    x: Array, layers: list[Layer], h0: Array | None = None, c0: Array | None = None
) -> tuple[Array, tuple[Array, Array]]:
    """A stack of LSTM layers: layer ``l`` reads layer ``l-1``'s hidden states.

    Args:
        x: ``(T, N, D)`` inputs (one-hot rows or embeddings).
        layers: one parameter dict per layer (see the module docstring).
        h0, c0: ``(L, N, H)`` initial state, or ``None`` for zeros.

    Returns:
        ``(hs, (h_T, c_T))``: the top layer's hidden states ``(T, N, H)`` and the final state
        of every layer, ``(L, N, H)`` each, as ``nn.LSTM`` returns them.
    """
    hs, h_T, c_T, _ = _stack_forward(x, layers, h0, c0)
    return hs, (h_T, c_T)


def _stack_forward(
    x: Array, layers: list[Layer], h0: Array | None, c0: Array | None
) -> tuple[Array, Array, Array, list[dict[str, Any]]]:
    N = x.shape[1]
    h0 = _initial_state(h0, layers, N)
    c0 = _initial_state(c0, layers, N)
    caches = []
    h_T, c_T = [], []
    inputs = x
    for depth, layer in enumerate(layers):
        inputs, c_last, cache = layer_forward(inputs, layer, h0[depth], c0[depth])
        caches.append(cache)
        h_T.append(inputs[-1])
        c_T.append(c_last)
    return inputs, np.stack(h_T), np.stack(c_T), caches


def log_softmax(logits: Array) -> Array:
    """``log(softmax(logits))`` over the last axis, shifted by the maximum for stability."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def lm_loss_and_grads(
    tokens: Array, params: Params, h0: Array | None = None, c0: Array | None = None
) -> tuple[float, Params]:
    """Mean next-character cross-entropy of a window, and the gradient of every parameter.

    ``tokens`` is ``(T + 1, N)`` integers: inputs are ``tokens[:-1]``, targets ``tokens[1:]``::

        x_t    = E[tokens[t]]                                    (N, D)
        h_t    = top layer of the LSTM stack over x              (N, H)
        z_t    = h_t W_out + b_out                               (N, V)
        loss   = -1/(T N) sum_{t, n} log softmax(z_t)[n, tokens[t + 1, n]]

    Backward: ``dz = (softmax(z) - onehot(targets)) / (T N)``, ``dW_out = sum h^T dz``,
    ``db_out = sum dz``, ``dh = dz W_out^T`` into the top layer; each layer's
    :func:`layer_backward` passes ``dx`` down as the ``dhs`` of the layer below; the bottom
    ``dx`` is scattered into the embedding rows that were looked up:
    ``dE[tokens[t, n]] += dx[t, n]``.

    Args:
        tokens: ``(T + 1, N)`` integer indices into the vocabulary.
        params: the dict described in the module docstring.
        h0, c0: ``(L, N, H)`` initial state, or ``None`` for zeros.

    Returns:
        ``(loss, grads)`` where ``grads`` has the keys and nesting of ``params``.
    """
    tokens = np.asarray(tokens)
    inputs, targets = tokens[:-1], tokens[1:]
    T, N = inputs.shape
    E, layers, W_out, b_out = params["E"], params["layers"], params["W_out"], params["b_out"]

    x = E[inputs]  # (T, N, D)
    hs, _, _, caches = _stack_forward(x, layers, h0, c0)
    logits = hs @ W_out + b_out  # (T, N, V)
    log_probs = log_softmax(logits)
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)
    loss = float(-picked.mean())

    dlogits = np.exp(log_probs)  # softmax
    dlogits[np.arange(T)[:, None], np.arange(N)[None, :], targets] -= 1.0
    dlogits /= T * N
    H, V = W_out.shape
    grads: Params = {
        "W_out": hs.reshape(T * N, H).T @ dlogits.reshape(T * N, V),
        "b_out": dlogits.sum(axis=(0, 1)),
    }
    dhs = dlogits @ W_out.T  # (T, N, H)
    layer_grads: list[Layer] = []
    for cache in reversed(caches):  # top layer first; dx feeds the layer below
        no_cell_loss = np.zeros_like(cache["c0"])
        dhs, grads_l, _, _ = layer_backward(dhs, no_cell_loss, cache)
        layer_grads.insert(0, grads_l)
    grads["layers"] = layer_grads
    dE = np.zeros_like(E)
    np.add.at(dE, inputs, dhs)
    grads["E"] = dE
    return loss, grads
