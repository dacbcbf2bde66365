"""charlstm.training.loop / pipeline / checkpoint: training, run directories, exact resume."""

from __future__ import annotations

import copy
import json
import math
import random
import signal
import zipfile

import pytest
import torch

from charlstm.cli.report import describe, render_info
from charlstm.errors import CharLSTMError
from charlstm.presets import PRESETS
from charlstm.storage import checkpoint as ckpt
from charlstm.training.loop import TrainingInterrupted, heldout_score
from charlstm.training.start import prepare_training
from tests.helpers import losses, make_trainer, train, write_zip


def test_run_directory_holds_config_vocab_metrics_and_checkpoints(small_corpus, tmp_path):
    trainer, result = train(small_corpus, tmp_path / "run", train_options={"epochs": 2})
    run = tmp_path / "run"
    assert {"config.json", "vocab.json", "metrics.jsonl", "last.pt", "best.pt"} <= {
        p.name for p in run.iterdir()
    }
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["hidden_size"] == 32 and config["train"]["epochs"] == 2
    machine = config["machine"]  # where it trained, for comparing timings later
    assert machine.keys() == {"device", "name", "threads", "torch"}
    assert machine["device"] == str(trainer.device) and machine["torch"] == torch.__version__
    assert isinstance(machine["name"], str) and machine["name"]
    assert isinstance(machine["threads"], int) and machine["threads"] >= 1
    assert json.loads((run / "vocab.json").read_text(encoding="utf-8")) == (
        trainer.vocab.idx_to_char
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in rows)
    last = ckpt.load(run / "last.pt")
    assert last.epoch == 2 and last.vocab == trainer.vocab
    assert last.step == 2 * len(trainer.batches)
    best = ckpt.load(run / "best.pt")
    assert best.best_val_loss == pytest.approx(min(r["val_loss"] for r in rows))


def test_training_lowers_held_out_loss(small_corpus, tmp_path):
    trainer, result = train(small_corpus, tmp_path / "run", train_options={"epochs": 4, "lr": 1e-2})
    vocab_size = len(trainer.vocab)
    first, last = result.metrics[0], result.metrics[-1]
    assert first.val_loss < math.log(vocab_size) - 1  # far better than uniform after 1 epoch
    assert last.val_loss <= first.val_loss
    assert last.train_ppl < 1.5 and last.val_ppl < 1.5  # repetitive lines: easy to learn


@pytest.fixture(scope="module")
def noise_corpus(tmp_path_factory: pytest.TempPathFactory):
    """2,000 random letters: nothing to learn but their frequencies, so a model without
    dropout improves on held-out text for an epoch, then memorises and gets worse."""
    rng = random.Random(0)
    text = "".join(rng.choice("abcdefghijklmnopqrst") for _ in range(2000))
    return write_zip(tmp_path_factory.mktemp("noise") / "noise.zip", {"noise.txt": text.encode()})


def overfit(corpus, run_dir, **train_options):
    """Train the memorising model; returns the result and the lines it logged."""
    options = {"lr": 0.01, **train_options}
    trainer = make_trainer(corpus, run_dir, {"hidden_size": 64, "dropout": 0.0}, options)
    lines: list[str] = []
    trainer.log = lines.append
    return trainer.fit(), lines


def test_patience_stops_early_and_best_pt_keeps_the_best_epoch(noise_corpus, tmp_path):
    result, lines = overfit(noise_corpus, tmp_path / "run", epochs=12, patience=2)
    val = [m.val_loss for m in result.metrics]
    best = val.index(min(val))
    assert result.stopped_early and len(val) == best + 3  # two epochs without a better one
    assert all(v > val[best] for v in val[best + 1 :])
    assert (
        "early stop: held-out loss has not improved for 2 epochs (--patience 2); "
        "best.pt holds the best model"
    ) in lines
    assert ckpt.load(tmp_path / "run" / "best.pt").epoch == best + 1
    assert ckpt.load(tmp_path / "run" / "last.pt").epoch == len(val)


def test_without_patience_rising_held_out_loss_is_warned_about_once(noise_corpus, tmp_path):
    result, lines = overfit(noise_corpus, tmp_path / "run", epochs=6)
    assert not result.stopped_early and len(result.metrics) == 6
    warnings = [i for i, line in enumerate(lines) if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "held-out loss has risen for 3 epochs while training loss falls" in lines[warnings[0]]
    epochs_before = [line for line in lines[: warnings[0]] if line.startswith("epoch")]
    val = [m.val_loss for m in result.metrics]
    best = val.index(min(val))
    assert len(epochs_before) == best + 4  # logged after the third epoch without a better one


def test_plateau_halves_the_lr_after_each_worse_epoch_and_resumes_with_it(noise_corpus, tmp_path):
    straight, _ = overfit(noise_corpus, tmp_path / "a", epochs=5, schedule="plateau")
    worse = 0
    for m in straight.metrics:  # the lr each epoch ends with, as the next one uses it
        worse += not m.best
        assert m.lr == pytest.approx(0.01 * 0.5**worse)
    assert worse >= 2
    overfit(noise_corpus, tmp_path / "b", epochs=3, schedule="plateau")
    model = {"hidden_size": 64, "dropout": 0.0}  # as overfit() trained it
    _, resumed = train(noise_corpus, None, model, {"epochs": 5}, resume=tmp_path / "b")
    assert losses(resumed) == losses(straight)[3:]
    assert [m.lr for m in resumed.metrics] == [m.lr for m in straight.metrics[3:]]


def test_label_smoothing_trains_on_smoothed_targets_and_reports_the_true_loss(
    small_corpus, tmp_path
):
    s, lr = 0.2, 0.5
    options = {"label_smoothing": s, "optimizer": "sgd", "lr": lr, "clip": 0}
    trainer = make_trainer(small_corpus, tmp_path / "run", {"dropout": 0.0}, options)
    x, y = trainer.batches[0]
    model = copy.deepcopy(trainer.model)  # the same step, written with torch's own loss
    logits, _ = model(x)
    F = torch.nn.functional
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), label_smoothing=s).backward()
    true_loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    reported, grad_norm, _ = trainer.train_step(x, y, None, None)
    assert reported == pytest.approx(true_loss, rel=1e-6)  # the log shows the unsmoothed loss
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert grad_norm == pytest.approx(norm.item(), rel=1e-5)  # --clip 0: measured, not clipped
    with torch.no_grad():
        for (name, stepped), expected in zip(
            trainer.model.named_parameters(), model.parameters(), strict=True
        ):
            torch.testing.assert_close(stepped, expected - lr * expected.grad, msg=name)


@pytest.mark.parametrize("sampling", ["consecutive", "random"])
def test_two_epochs_plus_resume_equals_four_straight(small_corpus, tmp_path, sampling):
    options = {"sampling": sampling}
    _, straight = train(small_corpus, tmp_path / "a", train_options={**options, "epochs": 4})
    train(small_corpus, tmp_path / "b", train_options={**options, "epochs": 2})
    _, resumed = train(small_corpus, None, train_options={"epochs": 4}, resume=tmp_path / "b")
    assert losses(straight)[2:] == losses(resumed)
    rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3, 4]


def test_interrupt_mid_epoch_saves_and_resume_continues_the_same_trajectory(small_corpus, tmp_path):
    _, straight = train(small_corpus, tmp_path / "a", train_options={"epochs": 2})
    trainer = make_trainer(small_corpus, tmp_path / "b", train_options={"epochs": 2})
    stop_at = len(trainer.batches) + 3  # in the middle of epoch 2

    def interrupt(t):
        if t.progress.step == stop_at:
            signal.raise_signal(signal.SIGINT)

    trainer.on_step = interrupt
    with pytest.raises(TrainingInterrupted, match="charlstm train --resume") as info:
        trainer.fit()
    assert info.value.exit_code == 130
    saved = ckpt.load(tmp_path / "b" / "last.pt")
    assert (saved.epoch, saved.batch, saved.step) == (1, 3, stop_at)
    _, resumed = train(small_corpus, None, train_options={"epochs": 2}, resume=tmp_path / "b")
    assert losses(resumed) == losses(straight)[1:]


def test_ema_scores_and_saves_the_average_and_resumes_exactly(small_corpus, tmp_path):
    options = {"ema": 0.9, "epochs": 4}
    trainer = make_trainer(small_corpus, tmp_path / "a", train_options=options)
    average = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def follow(t):  # the documented update, step by step
        step = t.progress.step - 1
        decay = min(0.9, (1 + step) / (10 + step))
        for key, value in t.model.state_dict().items():
            average[key] = decay * average[key] + (1 - decay) * value

    trainer.on_step = follow
    straight = trainer.fit()
    last = ckpt.load(tmp_path / "a" / "last.pt")
    for key, value in last.model.items():
        torch.testing.assert_close(value, average[key])
    assert last.training_model is not None
    assert all(
        torch.equal(last.training_model[k], v) for k, v in trainer.model.state_dict().items()
    )
    assert not torch.equal(last.model["head.weight"], last.training_model["head.weight"])
    assert "weights averaged (--ema 0.9)" in render_info(describe(tmp_path / "a"))
    # What was scored at the last epoch is the average, and it is what eval reads.
    model = trainer.model
    model.load_state_dict(last.model)
    val = heldout_score(trainer.data, model).loss
    assert val == pytest.approx(straight.metrics[-1].val_loss, rel=1e-6)
    # The average changes what is scored, not the training trajectory.
    _, plain = train(small_corpus, tmp_path / "plain", train_options={"epochs": 4})
    assert [m.train_loss for m in plain.metrics] == [m.train_loss for m in straight.metrics]
    assert [m.val_loss for m in plain.metrics] != [m.val_loss for m in straight.metrics]
    assert ckpt.load(tmp_path / "plain" / "last.pt").training_model is None
    train(small_corpus, tmp_path / "b", train_options={**options, "epochs": 2})
    _, resumed = train(small_corpus, None, train_options={"epochs": 4}, resume=tmp_path / "b")
    assert losses(resumed) == losses(straight)[2:]


def test_resume_keeps_the_architecture(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "run", train_options={"epochs": 1})
    with pytest.raises(CharLSTMError, match="hidden_size 64 differs from the checkpoint's 32"):
        train(
            small_corpus,
            None,
            model={"hidden_size": 64},
            train_options={"epochs": 2},
            resume=tmp_path / "run",
        )
    with pytest.raises(CharLSTMError, match="already trained 1 epochs"):
        train(small_corpus, None, train_options={"epochs": 1}, resume=tmp_path / "run")


def test_resume_reads_the_same_text_wherever_the_file_is(small_corpus, tmp_path):
    """A corpus with the same characters in another order is not the run's text."""
    train(small_corpus, tmp_path / "run", train_options={"epochs": 1})
    with zipfile.ZipFile(small_corpus) as archive:
        text = archive.read("small.txt").decode("utf-8")
    moved = write_zip(tmp_path / "moved.zip", {"small.txt": text.encode("utf-8")})
    lines = text.splitlines(keepends=True)
    shuffled = write_zip(tmp_path / "other.zip", {"small.txt": "".join(lines[::-1]).encode()})
    with pytest.raises(CharLSTMError, match="is not the text this run trained on"):
        train(shuffled, None, train_options={"epochs": 2}, resume=tmp_path / "run")
    _, result = train(moved, None, train_options={"epochs": 2}, resume=tmp_path / "run")
    assert [m.epoch for m in result.metrics] == [2]


def test_existing_run_directory_is_not_overwritten(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "run", train_options={"epochs": 1})
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(CharLSTMError, match="already holds a run"):
        train(small_corpus, tmp_path / "run", train_options={"epochs": 1})
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    train(small_corpus, tmp_path / "run", train_options={"epochs": 1, "seed": 9}, overwrite=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() != before


def test_non_finite_loss_stops_with_a_clear_message(small_corpus, tmp_path):
    with pytest.raises(CharLSTMError, match=r"loss became (nan|inf) at step \d+.*last good"):
        train(
            small_corpus,
            tmp_path / "run",
            # Adam moves every weight by about lr at once: products overflow whatever the
            # device (SGD's step follows the gradient, and on a GPU could stay finite).
            train_options={"epochs": 3, "optimizer": "adam", "lr": 1e36, "clip": 0},
        )
    last = ckpt.load(tmp_path / "run" / "last.pt")  # the last good state, resumable
    assert all(torch.isfinite(weights).all() for weights in last.model.values())


def test_checkpoint_is_plain_data_and_written_atomically(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "run", train_options={"epochs": 1})
    data = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert data["format_version"] == ckpt.FORMAT_VERSION
    assert data["char_to_idx"] == {c: i for i, c in enumerate(data["idx_to_char"])}
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_checkpoint_loads_on_cpu(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "run", train_options={"epochs": 1, "device": "cuda"})
    loaded = ckpt.load(tmp_path / "run" / "last.pt")
    assert all(t.device.type == "cpu" for t in loaded.model.values())


def test_cosine_schedule_under_a_time_limit_follows_the_clock(small_corpus, tmp_path):
    """A run stopped by --time-limit reaches the end of its cosine, whatever its --epochs."""
    options = {"schedule": "cosine", "epochs": 1000, "lr": 1.0, "time_limit": 2.0}
    trainer = make_trainer(small_corpus, tmp_path / "run", train_options=options)
    assert trainer.current_lr() == pytest.approx(1.0)
    trainer.progress.total_seconds = 45.0  # one epoch of 45 s, then 15 s into the next
    trainer.progress.seconds = 15.0
    assert trainer.current_lr() == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2)))
    trainer.progress.total_seconds = 200.0  # past the limit: the floor, 5 % of the rate
    assert trainer.current_lr() == pytest.approx(0.05)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_apply_and_given_options_override_them(small_corpus, tmp_path, name):
    preset = PRESETS[name]
    trainer = prepare_training(
        small_corpus,
        {"hidden_size": 16},
        {"device": "cpu", "batch_size": 4, "num_steps": 10, "sample_every": 0},
        {},
        run_dir=tmp_path / "run",
        preset=name,
        log=lambda _: None,
        progress_bar=False,
    )
    for key, value in preset["model"].items():
        if key != "hidden_size":  # --softmax auto: full for small_corpus's 38 characters
            expected = "full" if (key, value) == ("softmax", "auto") else value
            assert getattr(trainer.model_config, key) == expected
    for key, value in preset["train"].items():
        if key not in ("device", "batch_size", "num_steps"):
            assert getattr(trainer.config, key) == value
    assert trainer.model_config.hidden_size == 16 and trainer.config.batch_size == 4
    assert (trainer.teacher is not None) == bool(preset["train"].get("ngram_teacher"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    assert saved["train"]["num_steps"] == 10
