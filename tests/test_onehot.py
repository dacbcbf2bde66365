"""``--embedding-size 0``: d2l's own one-hot model, a row lookup instead of a matrix product.

The function must be d2l's: ``one_hot(x) @ W_x + h @ W_h + b`` into the gates, then the
output layer, with the same outputs and the same gradients as a model that builds the
one-hot vectors and multiplies them (ordinary autograd, and d2l's ``nn.LSTM`` model).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from charlstm.cli.app import app
from charlstm.config import ModelConfig
from charlstm.errors import CharLSTMError
from charlstm.model import build_model
from charlstm.storage import checkpoint as ckpt
from charlstm.storage.convert import convert_checkpoint

V, H, T, N = 11, 6, 5, 3


class OneHotReference(nn.Module):
    """d2l's parameterisation written out with one-hot vectors and matrix products."""

    def __init__(self, W_x: torch.Tensor, W_h: torch.Tensor, b: torch.Tensor, head: nn.Linear):
        super().__init__()
        self.W_x, self.W_h, self.b = (nn.Parameter(t.detach().clone()) for t in (W_x, W_h, b))
        self.head = nn.Linear(H, V).double()
        self.head.load_state_dict(head.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = torch.zeros(x.shape[1], H, dtype=torch.float64)
        outputs = []
        for X in nn.functional.one_hot(x, V).double():  # (N, V)
            a_i, a_f, a_g, a_o = (X @ self.W_x + h @ self.W_h + self.b).chunk(4, -1)
            c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
            h = torch.sigmoid(a_o) * torch.tanh(c)
            outputs.append(self.head(h))
        return torch.stack(outputs)  # (T, N, V)


def one_hot_model(impl: str = "fused", **fields: object) -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=V, hidden_size=H, embedding_size=0, dropout=0.0, scratch_impl=impl, **fields
    )
    return build_model(config).double()


@pytest.mark.parametrize("impl", ["fused", "autograd"])
def test_one_hot_model_computes_d2ls_function_with_its_gradients(impl):
    model = one_hot_model(impl)
    layer = model.layers[0]
    assert layer.W_x is None and model.embedding.weight.shape == (V, 4 * H)  # the table is W_x
    reference = OneHotReference(model.embedding.weight, layer.W_h, layer.b, model.head)
    x = torch.randint(0, V, (T, N), generator=torch.Generator().manual_seed(1))
    weights = torch.randn(T, N, V, dtype=torch.float64)  # any loss of the logits

    logits, _ = model(x)
    expected = reference(x)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)

    (logits * weights).sum().backward()
    (expected * weights).sum().backward()
    pairs = {
        "W_x": (model.embedding.weight, reference.W_x),
        "W_h": (layer.W_h, reference.W_h),
        "b": (layer.b, reference.b),
        "head": (model.head.weight, reference.head.weight),
    }
    for name, (ours, theirs) in pairs.items():
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12, msg=name)
    unseen = sorted(set(range(V)) - set(x.flatten().tolist()))
    assert unseen, "the test needs characters that are never looked up"
    assert torch.count_nonzero(model.embedding.weight.grad[unseen]) == 0  # only rows looked up


def test_one_hot_model_equals_d2ls_nn_lstm_model_and_steps_alike():
    """d2l's ``RNNModel``: ``nn.LSTM`` over ``one_hot(x)``, ported weights, same logits."""
    model = one_hot_model().eval()
    lstm = nn.LSTM(V, H).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(model.embedding.weight.t())
        lstm.weight_hh_l0.copy_(model.layers[0].W_h.t())
        lstm.bias_ih_l0.copy_(model.layers[0].b)
        lstm.bias_hh_l0.zero_()
    x = torch.randint(0, V, (T, N), generator=torch.Generator().manual_seed(2))
    out, _ = lstm(nn.functional.one_hot(x, V).double())
    logits, state = model(x)
    torch.testing.assert_close(logits, model.head(out))

    stepped = model.init_state(N)  # the one-step path of generation, with and without table
    table = model.step_table()
    for t in range(T):
        step_logits, stepped = model.step(x[t], stepped, table if t % 2 else None)
        torch.testing.assert_close(step_logits, logits[t])
    torch.testing.assert_close(stepped, state)


def test_one_hot_layers_stack_and_keep_peepholes():
    model = one_hot_model(num_layers=2, peephole=True).eval()
    x = torch.randint(0, V, (T, N))
    logits, state = model(x)
    stepped = model.init_state(N)
    for t in range(T):
        step_logits, stepped = model.step(x[t], stepped)
        torch.testing.assert_close(step_logits, logits[t])
    assert model.layers[1].W_x.shape == (H, 4 * H)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "torch"}, "embedding_size.* 0 .*one-hot.* needs .*backend.* scratch"),
        ({"tie_weights": True}, "tie_weights.* needs an embedding"),
        ({"embed_dropout": 0.1}, "embed_dropout.* needs an embedding"),
        ({"embedding_size": -1}, "must be >= 0"),
    ],
)
def test_one_hot_refuses_what_it_cannot_combine_with(fields, message):
    config = {"vocab_size": V, "hidden_size": H, "embedding_size": 0} | fields
    with pytest.raises(CharLSTMError, match=message):
        build_model(ModelConfig(**config))


def test_train_generate_resume_convert_with_embedding_size_zero(small_corpus, tmp_path):
    run = tmp_path / "run"
    common = ["--max-chars", "1500", "--hidden", "16", "--batch-size", "4", "--num-steps", "8"]
    trained = CliRunner().invoke(
        app,
        ["train", str(small_corpus), *common, "--embedding-size", "0", "--epochs", "1",
         "--run-dir", str(run), "--sample-every", "0"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    saved = ckpt.load(run / "last.pt")
    assert saved.model_config.embedding_size == 0
    assert saved.model["embedding.weight"].shape == (saved.model_config.vocab_size, 4 * 16)
    assert (run / "best.pt").stat().st_ino == (run / "last.pt").stat().st_ino  # written once

    resumed = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]

    written = CliRunner().invoke(
        app, ["generate", "--checkpoint", str(run), "--prefix", "分开", "--length", "10"]
    )
    assert written.exit_code == 0, written.output
    assert written.output.startswith("分开")

    copy = convert_checkpoint(run, "scratch", tmp_path / "copy.pt")
    assert ckpt.load(copy).model_config.embedding_size == 0
    refused = CliRunner().invoke(
        app, ["convert", str(run), "--to", "torch", "--out", str(tmp_path / "torch.pt")]
    )
    assert refused.exit_code != 0
    assert refused.output.strip().splitlines()[-1].startswith("error: a one-hot model")

    clash = CliRunner().invoke(
        app, ["train", str(small_corpus), *common, "--embedding-size", "0", "--backend", "torch"]
    )
    assert clash.exit_code == 2
    assert "--embedding-size 0 (one-hot inputs) needs --backend scratch" in clash.output
