"""The NumPy reference against nn.LSTM, against torch autograd, and against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charlstm.lstm_function import lstm_recurrence, lstm_recurrence_autograd
from tests import numpy_oracle as reference

V, D, H, L = 11, 6, 5, 2  # vocabulary, embedding, hidden, layers
T, N = 7, 3


def make_params(peephole: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    layers = []
    for depth in range(L):
        d_in = D if depth == 0 else H
        layer = {
            "W_x": rng.normal(0, 0.5, (d_in, 4 * H)),
            "W_h": rng.normal(0, 0.5, (H, 4 * H)),
            "b": rng.normal(0, 0.5, 4 * H),
        }
        if peephole:
            layer.update({key: rng.normal(0, 0.5, H) for key in reference.PEEPHOLE_KEYS})
        layers.append(layer)
    return {
        "E": rng.normal(0, 1.0, (V, D)),
        "layers": layers,
        "W_out": rng.normal(0, 0.5, (H, V)),
        "b_out": rng.normal(0, 0.5, V),
    }


def make_batch(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tokens (T + 1, N)``, ``h0, c0 (L, N, H)``."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, size=(T + 1, N))
    return tokens, rng.normal(0, 0.5, (L, N, H)), rng.normal(0, 0.5, (L, N, H))


def flatten(params: dict) -> dict[str, np.ndarray]:
    """``{"E": .., "layers.0.W_x": .., ...}``: one name per array."""
    flat = {key: value for key, value in params.items() if key != "layers"}
    for depth, layer in enumerate(params["layers"]):
        flat.update({f"layers.{depth}.{key}": value for key, value in layer.items()})
    return flat


def torch_loss_and_grads(tokens, params, h0, c0, recurrence) -> tuple[float, dict]:
    """The same language model built from torch ops, differentiated by autograd."""
    flat = {k: torch.tensor(v, requires_grad=True) for k, v in flatten(params).items()}
    tokens = torch.as_tensor(tokens)
    h = F.embedding(tokens[:-1], flat["E"])  # (T, N, D)
    for depth in range(L):
        prefix = f"layers.{depth}."
        gx = h @ flat[prefix + "W_x"] + flat[prefix + "b"]  # (T, N, 4H)
        peephole = None
        if prefix + "p_i" in flat:
            peephole = tuple(flat[prefix + key] for key in reference.PEEPHOLE_KEYS)
        h, _ = recurrence(
            gx, flat[prefix + "W_h"], torch.tensor(h0[depth]), torch.tensor(c0[depth]), peephole
        )
    logits = h @ flat["W_out"] + flat["b_out"]  # (T, N, V)
    loss = F.cross_entropy(logits.reshape(T * N, V), tokens[1:].reshape(T * N))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in flat.items()}


def test_forward_equals_nn_lstm_with_ported_weights():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(D, H, num_layers=L).double()
    x = torch.randn(T, N, D, dtype=torch.float64)
    h0, c0 = torch.randn(2, L, N, H, dtype=torch.float64)
    with torch.no_grad():
        out, (h_T, c_T) = lstm(x, (h0, c0))
    layers = []
    for depth in range(L):
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        weight = {name: getattr(lstm, f"{name}_l{depth}").detach().numpy() for name in names}
        layers.append(
            {
                "W_x": weight["weight_ih"].T,
                "W_h": weight["weight_hh"].T,
                "b": weight["bias_ih"] + weight["bias_hh"],
            }
        )
    hs, (h_T_ref, c_T_ref) = reference.lstm_forward(x.numpy(), layers, h0.numpy(), c0.numpy())
    np.testing.assert_allclose(hs, out.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_T_ref, h_T.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_T_ref, c_T.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize(
    "recurrence", [lstm_recurrence_autograd, lstm_recurrence], ids=["autograd", "function"]
)
def test_loss_and_every_gradient_equal_torch_autograd(peephole, recurrence):
    params = make_params(peephole)
    tokens, h0, c0 = make_batch()
    loss, grads = reference.lm_loss_and_grads(tokens, params, h0, c0)
    loss_torch, grads_torch = torch_loss_and_grads(tokens, params, h0, c0, recurrence)

    assert loss == pytest.approx(loss_torch, rel=1e-10)
    assert loss == pytest.approx(np.log(V), rel=0.5)  # a sane magnitude, not a degenerate one
    flat = flatten(grads)
    assert flat.keys() == grads_torch.keys()
    for name, grad in flat.items():
        assert grad.shape == flatten(params)[name].shape, name
        np.testing.assert_allclose(grad, grads_torch[name], rtol=1e-6, atol=1e-9, err_msg=name)
        assert np.abs(grad).max() > 0, f"{name}: gradient is all zeros"


def test_default_state_is_zeros():
    params = make_params(peephole=False)
    tokens, _, _ = make_batch()
    zeros = np.zeros((L, N, H))
    loss, grads = reference.lm_loss_and_grads(tokens, params)
    loss_zeros, grads_zeros = reference.lm_loss_and_grads(tokens, params, zeros, zeros)
    assert loss == loss_zeros
    np.testing.assert_array_equal(grads["W_out"], grads_zeros["W_out"])


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
def test_gradients_match_finite_differences(peephole):
    params = make_params(peephole, seed=3)
    tokens, h0, c0 = make_batch(seed=4)
    _, grads = reference.lm_loss_and_grads(tokens, params, h0, c0)
    flat_params, flat_grads = flatten(params), flatten(grads)
    rng = np.random.default_rng(5)
    eps = 1e-6
    names = ["E", "layers.0.W_x", "layers.0.W_h", "layers.1.W_h", "layers.1.b", "W_out", "b_out"]
    if peephole:
        names += ["layers.0.p_i", "layers.0.p_f", "layers.1.p_o"]
    used_rows = np.unique(tokens[:-1])
    for name in names:
        array = flat_params[name]  # a view into params: editing it perturbs the model
        for _ in range(3):
            index = tuple(int(rng.integers(0, size)) for size in array.shape)
            if name == "E":  # an entry of a row that was looked up, so the gradient is not 0
                index = (int(rng.choice(used_rows)), index[1])
            saved = array[index]
            array[index] = saved + eps
            loss_plus, _ = reference.lm_loss_and_grads(tokens, params, h0, c0)
            array[index] = saved - eps
            loss_minus, _ = reference.lm_loss_and_grads(tokens, params, h0, c0)
            array[index] = saved
            numeric = (loss_plus - loss_minus) / (2 * eps)
            assert flat_grads[name][index] == pytest.approx(numeric, rel=1e-5, abs=1e-8), (
                f"{name}{index}"
            )


def test_incomplete_peephole_is_rejected():
    params = make_params(peephole=True)
    del params["layers"][1]["p_f"]
    tokens, h0, c0 = make_batch()
    with pytest.raises(ValueError, match="peephole"):
        reference.lm_loss_and_grads(tokens, params, h0, c0)
