"""LSTMRecurrence (hand-written BPTT) against the autograd loop, gradcheck and nn.LSTM."""

from __future__ import annotations

import pytest
import torch

from charlstm.lstm_function import (
    LSTMRecurrence,
    lstm_recurrence,
    lstm_recurrence_autograd,
    use_cuda_graphs,
)

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture
def one_thread():
    """Run on one intra-op thread, then restore the setting.

    gradcheck makes thousands of tiny matmul calls. MKL runs some of them multi-threaded, and
    on a CPU shared with other jobs each such call can wait a whole scheduler slice, which
    turns a one-second test into a minute. The numbers do not depend on the thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(
    T: int = 6,
    N: int = 3,
    H: int = 5,
    dtype: torch.dtype = torch.float64,
    peephole: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> list[torch.Tensor | None]:
    """``[gx (T, N, 4H), W_h (H, 4H), h0 (N, H), c0 (N, H), peephole (3, H) or None]``."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        values = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return values.to(device=device, dtype=dtype).requires_grad_()

    return [
        rand(T, N, 4 * H),
        rand(H, 4 * H, scale=0.5),
        rand(N, H),
        rand(N, H),
        rand(3, H, scale=0.5) if peephole else None,
    ]


def loss_of(hs: torch.Tensor, c_T: torch.Tensor) -> torch.Tensor:
    """A loss that reaches every output: all hidden states, ``h_T = hs[-1]`` again, and ``c_T``."""
    T, N, H = hs.shape
    weights = torch.linspace(-1, 1, T * N * H, dtype=hs.dtype, device=hs.device).view(T, N, H)
    return (hs * weights).sum() + (hs[-1] ** 2).sum() + (c_T * c_T.flip(0)).sum()


def grads_of(fn, inputs):
    hs, c_T = fn(*inputs)
    wanted = [x for x in inputs if x is not None]
    return hs, c_T, torch.autograd.grad(loss_of(hs, c_T), wanted)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
def test_forward_and_gradients_equal_autograd_loop(dtype, peephole):
    inputs = make_inputs(T=7, N=4, H=6, dtype=dtype, peephole=peephole)
    hs, c_T, grads = grads_of(lstm_recurrence, inputs)
    hs_ref, c_T_ref, grads_ref = grads_of(lstm_recurrence_autograd, inputs)
    tol = TOLERANCE[dtype]
    assert hs.shape == (7, 4, 6) and c_T.shape == (4, 6)
    torch.testing.assert_close(hs, hs_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(c_T, c_T_ref, rtol=tol, atol=tol)
    names = ["gx", "W_h", "h0", "c0", "peephole"][: len(grads)]
    for name, grad, grad_ref in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=tol, atol=tol, msg=f"d{name} differs")


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
def test_gradcheck(peephole, one_thread):
    inputs = make_inputs(T=4, N=3, H=5, peephole=peephole)
    assert torch.autograd.gradcheck(LSTMRecurrence.apply, tuple(inputs))


def test_gradcheck_grad_of_c_T_only_and_hs_only(one_thread):
    # The output autograd sends no gradient for arrives as None: materialised as zeros.
    gx, W_h, h0, c0, _ = make_inputs(T=4, N=2, H=3)
    assert torch.autograd.gradcheck(lambda *a: LSTMRecurrence.apply(*a, None)[1], (gx, W_h, h0, c0))
    assert torch.autograd.gradcheck(lambda *a: LSTMRecurrence.apply(*a, None)[0], (gx, W_h, h0, c0))


def test_only_requested_gradients_are_computed():
    gx, W_h, h0, c0, _ = make_inputs()
    W_h = W_h.detach()
    h0 = h0.detach()
    hs, c_T = lstm_recurrence(gx, W_h, h0, c0)
    loss_of(hs, c_T).backward()
    assert gx.grad is not None and c0.grad is not None
    assert W_h.grad is None and h0.grad is None
    hs_ref, c_T_ref = lstm_recurrence_autograd(gx, W_h, h0, c0)
    d_gx, d_c0 = torch.autograd.grad(loss_of(hs_ref, c_T_ref), [gx, c0])
    torch.testing.assert_close(gx.grad, d_gx)
    torch.testing.assert_close(c0.grad, d_c0)


def test_peephole_as_tuple_equals_stacked_and_none_state_is_zeros():
    gx, W_h, _, _, peephole = make_inputs(peephole=True)
    N, H = gx.shape[1], W_h.shape[0]
    zeros = torch.zeros(N, H, dtype=gx.dtype)
    hs_a, c_a = lstm_recurrence(gx, W_h, None, None, tuple(peephole.unbind(0)))
    hs_b, c_b = lstm_recurrence(gx, W_h, zeros, zeros, peephole)
    torch.testing.assert_close(hs_a, hs_b)
    torch.testing.assert_close(c_a, c_b)
    p_i, p_f, p_o = (p.detach().clone().requires_grad_() for p in peephole.unbind(0))
    hs, c_T = lstm_recurrence(gx, W_h, None, None, (p_i, p_f, p_o))
    loss_of(hs, c_T).backward()
    assert p_i.grad.shape == p_f.grad.shape == p_o.grad.shape == (H,)


def test_no_grad_forward_matches():
    inputs = make_inputs(dtype=torch.float32)
    with torch.no_grad():
        hs, c_T = lstm_recurrence(*inputs)
        hs_ref, c_T_ref = lstm_recurrence_autograd(*inputs)
    assert not hs.requires_grad
    torch.testing.assert_close(hs, hs_ref)
    torch.testing.assert_close(c_T, c_T_ref)


def test_double_backward_is_refused():
    gx, W_h, h0, c0, _ = make_inputs(T=2, N=2, H=2)
    hs, c_T = lstm_recurrence(gx, W_h, h0, c0)
    (d_gx,) = torch.autograd.grad(hs.sum(), [gx], create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad and does not have a grad_fn"):
        d_gx.sum().backward()  # the hand-derived backward is not itself differentiable


def test_bad_shapes_and_dtypes_are_rejected():
    gx, W_h, h0, c0, _ = make_inputs(T=3, N=2, H=4)
    with pytest.raises(ValueError, match="W_h"):
        lstm_recurrence(gx, W_h[:, :8], h0, c0)
    with pytest.raises(ValueError, match="h0"):
        lstm_recurrence(gx, W_h, h0[:1], c0)
    with pytest.raises(ValueError, match="gx"):
        lstm_recurrence(gx[:, :, :7], W_h, h0, c0)
    with pytest.raises(ValueError, match="c0"):
        lstm_recurrence(gx, W_h, h0, c0.float())
    with pytest.raises(ValueError, match="peephole"):
        lstm_recurrence(gx, W_h, h0, c0, torch.zeros(2, 4, dtype=gx.dtype))


def port_nn_lstm(lstm: torch.nn.LSTM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-layer ``nn.LSTM`` weights as ``(gx, W_h)``: its gate rows are also i, f, g, o."""
    gx = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0  # (T, N, 4H)
    return gx, lstm.weight_hh_l0.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_nn_lstm_outputs_and_weight_gradients(dtype):
    torch.manual_seed(1)
    T, N, D, H = 9, 4, 7, 6
    lstm = torch.nn.LSTM(D, H).to(dtype)
    x = torch.randn(T, N, D, dtype=dtype)
    h0, c0 = torch.randn(2, 1, N, H, dtype=dtype)
    target = torch.randn(T, N, H, dtype=dtype)

    out, (h_T, c_T) = lstm(x, (h0, c0))
    (((out - target) ** 2).sum() + c_T.sum()).backward()
    expected = {name: p.grad.clone() for name, p in lstm.named_parameters()}
    lstm.zero_grad()

    gx, W_h = port_nn_lstm(lstm, x)
    hs, c_last = lstm_recurrence(gx, W_h, h0[0], c0[0])
    (((hs - target) ** 2).sum() + c_last.sum()).backward()

    tol = TOLERANCE[dtype] * 10
    torch.testing.assert_close(hs, out, rtol=tol, atol=tol)
    torch.testing.assert_close(hs[-1], h_T[0], rtol=tol, atol=tol)
    torch.testing.assert_close(c_last, c_T[0], rtol=tol, atol=tol)
    for name, p in lstm.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
def test_three_chunks_with_carried_state_equal_one_pass(peephole):
    gx, W_h, h0, c0, p = make_inputs(T=12, N=3, H=5, peephole=peephole)
    hs_whole, c_whole = lstm_recurrence(gx, W_h, h0, c0, p)
    grads_whole = torch.autograd.grad(loss_of(hs_whole, c_whole), [gx, W_h, h0, c0])

    h, c = h0, c0
    pieces = []
    for chunk in gx.split([3, 5, 4]):
        hs, c = lstm_recurrence(chunk, W_h, h, c, p)
        h = hs[-1]
        pieces.append(hs)
    hs_chunked = torch.cat(pieces)
    torch.testing.assert_close(hs_chunked, hs_whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_whole, rtol=1e-12, atol=1e-12)
    # The state is not detached here, so the gradient flows through the chunk boundaries.
    grads_chunked = torch.autograd.grad(loss_of(hs_chunked, c), [gx, W_h, h0, c0])
    for grad_chunked, grad_whole in zip(grads_chunked, grads_whole, strict=True):
        torch.testing.assert_close(grad_chunked, grad_whole, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
def test_cuda_matches_cpu(peephole):
    cpu = make_inputs(dtype=torch.float64, peephole=peephole)
    cuda = make_inputs(dtype=torch.float64, peephole=peephole, device="cuda")
    hs, c_T, grads = grads_of(lstm_recurrence, cpu)
    hs_cuda, c_T_cuda, grads_cuda = grads_of(lstm_recurrence, cuda)
    torch.testing.assert_close(hs_cuda.cpu(), hs)
    torch.testing.assert_close(c_T_cuda.cpu(), c_T)
    for grad, grad_cuda in zip(grads, grads_cuda, strict=True):
        torch.testing.assert_close(grad_cuda.cpu(), grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
def test_cuda_graphs_equal_plain_launches(peephole):
    """Graph replay gives what launching the loop op by op gives, call after call.

    Two recurrences of one shape run forward before either runs backward (two layers of a
    model), with fresh values each round: a stale or shared graph buffer would show.
    """

    def two_layers(seed):
        shape = {"T": 9, "N": 4, "H": 8, "dtype": torch.float32, "peephole": peephole}
        leaves = [make_inputs(**shape, seed=seed + k, device="cuda") for k in (0, 1)]
        outs = [lstm_recurrence(*inputs) for inputs in leaves]
        loss = sum(loss_of(hs, c_T) for hs, c_T in outs)
        tensors = [t for inputs in leaves for t in inputs if t is not None]
        grads = torch.autograd.grad(loss, tensors)
        return [o for pair in outs for o in pair] + list(grads)

    previous = use_cuda_graphs(False)
    try:
        plain = [two_layers(seed) for seed in (0, 10, 20)]
        use_cuda_graphs(True)
        graphed = [two_layers(seed) for seed in (0, 10, 20)]
    finally:
        use_cuda_graphs(previous)
    for plain_round, graphed_round in zip(plain, graphed, strict=True):
        for a, b in zip(plain_round, graphed_round, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
