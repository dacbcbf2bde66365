"""charlstm.model: one interface, two backends that compute the same function."""

from __future__ import annotations

import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.errors import CharLSTMError
from charlstm.model import build_model, convert_state_dict

V = 40


def pair(
    layers: int = 2, dropout: float = 0.0, **options
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A torch-backend model and a scratch model holding the same weights."""
    torch.manual_seed(0)
    reference = build_model(
        ModelConfig(
            vocab_size=V,
            backend="torch",
            hidden_size=24,
            num_layers=layers,
            dropout=dropout,
            **options,
        )
    )
    config = ModelConfig(
        vocab_size=V,
        backend="scratch",
        hidden_size=24,
        num_layers=layers,
        dropout=dropout,
        **options,
    )
    scratch = build_model(config)
    scratch.load_state_dict(convert_state_dict(reference.state_dict(), reference.config, "scratch"))
    return reference, scratch


def grads_by_scratch_name(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The torch-backend model's gradients under the scratch model's parameter names."""
    grads = {name: p.grad for name, p in reference.named_parameters()}
    mapped = convert_state_dict(grads, reference.config, "scratch")
    for layer in range(reference.config.num_layers):
        # b = bias_ih + bias_hh, so its gradient is either one's (not their sum)
        mapped[f"layers.{layer}.b"] = grads[f"layers.{layer}.lstm.bias_ih_l0"]
    return mapped


@pytest.mark.parametrize("impl", ["fused", "autograd"])
@pytest.mark.parametrize("with_state", [False, True])
def test_scratch_equals_nn_lstm_outputs_and_gradients(impl: str, with_state: bool) -> None:
    reference, scratch = pair(layers=2, scratch_impl=impl)
    x = torch.randint(0, V, (9, 5))  # (T, N)
    state = None
    if with_state:
        h0, c0 = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
        state = (h0, c0)
    logits_ref, (h_ref, c_ref) = reference(x, state)
    logits, (h, c) = scratch(x, state)
    assert logits.shape == (9, 5, V) and h.shape == (2, 5, 24)
    torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=1e-5, rtol=0)

    target = torch.randint(0, V, (9 * 5,))
    for output in (logits_ref, logits):
        torch.nn.functional.cross_entropy(output.flatten(0, 1), target).backward()
    grads_ref = grads_by_scratch_name(reference)
    for name, param in scratch.named_parameters():
        torch.testing.assert_close(param.grad, grads_ref[name], atol=1e-5, rtol=1e-4)


def test_conversion_round_trip_keeps_logits() -> None:
    reference, scratch = pair(layers=1)
    back = build_model(reference.config)
    back.load_state_dict(convert_state_dict(scratch.state_dict(), scratch.config, "torch"))
    x = torch.randint(0, V, (6, 3))
    torch.testing.assert_close(back(x)[0], reference(x)[0], atol=1e-5, rtol=0)


def test_three_chunks_with_carried_state_equal_one_pass() -> None:
    _, model = pair(layers=2)
    x = torch.randint(0, V, (12, 4))
    whole, _ = model(x)
    state, parts = None, []
    for chunk in x.split(4):
        out, state = model(chunk, state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-6, rtol=0)


def test_init_state_shape_and_interface() -> None:
    for backend in ("scratch", "torch"):
        model = build_model(ModelConfig(vocab_size=V, backend=backend, hidden_size=8, num_layers=3))
        h, c = model.init_state(5)
        assert h.shape == c.shape == (3, 5, 8) and not h.any()


def test_tied_weights_share_one_matrix() -> None:
    model = build_model(ModelConfig(vocab_size=V, hidden_size=16, tie_weights=True))
    assert model.head.weight is model.embedding.weight
    with pytest.raises(CharLSTMError, match="tie_weights needs"):
        build_model(ModelConfig(vocab_size=V, hidden_size=16, embedding_size=8, tie_weights=True))


def test_variational_dropout_shares_mask_across_time() -> None:
    model = build_model(
        ModelConfig(vocab_size=V, hidden_size=16, embed_dropout=0.5, variational=True)
    )
    model.train()
    x = torch.full((7, 3), 5)  # the same character at every step
    embedded = model.embed_drop(model.embedding(x))
    zero = embedded == 0
    assert zero.any()
    assert torch.equal(zero, zero[:1].expand_as(zero))  # one mask per sequence


def test_dropconnect_drops_recurrent_weights_in_training_only() -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=V, hidden_size=16, dropout=0.0, weight_drop=0.5)
    model = build_model(config)
    plain = build_model(ModelConfig(vocab_size=V, hidden_size=16, dropout=0.0))
    plain.load_state_dict(model.state_dict())
    x = torch.randint(0, V, (6, 3))
    model.eval()
    torch.testing.assert_close(model(x)[0], plain(x)[0], atol=0, rtol=0)  # off when scoring
    model.train()
    first, second = model(x)[0], model(x)[0]
    assert not torch.allclose(first, second)  # a new mask each forward pass
    # From a zero state the first step never reads W_h: only later steps change
    torch.testing.assert_close(first[0], plain(x)[0][0], atol=1e-6, rtol=0)
    assert not torch.allclose(first[1:], plain(x)[0][1:])


def test_peephole_model_does_not_convert_to_nn_lstm(tmp_path) -> None:
    from charlstm.config import DataConfig, TrainConfig
    from charlstm.data.corpus import Vocab
    from charlstm.storage import checkpoint as ckpt
    from charlstm.storage.convert import convert_checkpoint

    config = ModelConfig(vocab_size=3, hidden_size=8, peephole=True)
    source = ckpt.save(
        ckpt.Checkpoint(
            model_config=config,
            vocab=Vocab(list("abc")),
            model=build_model(config).state_dict(),
            train_config=TrainConfig(epochs=1),
            data_config=DataConfig("corpus.txt"),
        ),
        tmp_path / "peephole.pt",
    )
    with pytest.raises(CharLSTMError, match="peephole connections: nn.LSTM has none"):
        convert_checkpoint(source, "torch", tmp_path / "torch.pt")
    assert not (tmp_path / "torch.pt").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "keras"}, "unknown backend 'keras'"),
        ({"backend": "torch", "peephole": True}, "peephole needs backend scratch"),
        ({"hidden_size": 0}, "hidden_size must be positive"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_model_configs_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(CharLSTMError, match=message):
        build_model(ModelConfig(vocab_size=V, **options))


@pytest.mark.parametrize("regularised", [[], ["--weight-drop", "0.5", "--tie-weights"]])
def test_convert_command_gives_same_logits_and_text(small_corpus, tmp_path, regularised) -> None:
    """``charlstm convert`` both ways: same logits (1e-5) and, with a seed, the same text.

    DropConnect only acts in training, so a model trained with it converts too."""
    from charlstm.api import load_model
    from tests.helpers import invoke

    run = tmp_path / "run"
    size = ["--hidden", "24", "--layers", "2", "--batch-size", "8", "--num-steps", "10"]
    trained = invoke("train", small_corpus, "--epochs", "1", *size, "--sample-every", "0",
                     "--run-dir", run, *regularised)  # fmt: skip
    assert trained.exit_code == 0 and (run / "best.pt").is_file(), trained.output
    as_torch, back = tmp_path / "torch.pt", tmp_path / "scratch.pt"
    for source, backend, out in ((run, "torch", as_torch), (as_torch, "scratch", back)):
        result = invoke("convert", source, "--to", backend, "--out", out)
        assert result.exit_code == 0, result.output
        assert result.stdout == f"wrote {out} ({backend} backend)\n"
    original, converted = load_model(run), load_model(as_torch)
    assert converted.model.config.backend == "torch" and converted.model.config.weight_drop == 0
    x = original.vocab.encode("我们说好不分开分开以后的雨天").view(-1, 1)
    for other in (converted, load_model(back)):
        torch.testing.assert_close(other.model(x)[0], original.model(x)[0], atol=1e-5, rtol=0)
        assert other.generate("分开", length=40, seed=5) == original.generate(
            "分开", length=40, seed=5
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scratch_equals_cudnn_lstm_on_cuda() -> None:
    """On a GPU the scratch model (CUDA-graph replay) and cuDNN's LSTM agree, in float64.

    cuDNN's float64 LSTM differs from exact float64 arithmetic by up to ~3e-9 (measured on
    an H100), hence the tolerance; float32 differences would be a thousand times larger.
    """
    reference, scratch = (model.double().cuda() for model in pair(layers=2))
    x = torch.randint(0, V, (9, 5), device="cuda")
    target = torch.randint(0, V, (9 * 5,), device="cuda")
    results = []
    for model in (reference, scratch):
        logits, (h, c) = model(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), target).backward()
        results.append((logits, h, c, model.embedding.weight.grad, model.head.weight.grad))
    for ours, theirs in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-5)
    grads = grads_by_scratch_name(reference)
    for name, param in scratch.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], atol=1e-7, rtol=1e-5)
