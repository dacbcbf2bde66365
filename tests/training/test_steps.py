"""Training by steps: --max-steps, --eval-every, --eval-chars, the time limit between steps,
exact resume mid-epoch, and progress lines when the output is not a terminal."""

from __future__ import annotations

import json

import pytest

from charlstm.errors import CharLSTMError
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from charlstm.training.loop import heldout_score
from tests.helpers import FAST, invoke, make_trainer, train


def step_losses(run_dir) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in runs.read_steps(run_dir)]


def test_max_steps_stops_mid_epoch_with_a_score_and_a_resumable_checkpoint(small_corpus, tmp_path):
    trainer, result = train(small_corpus, tmp_path / "run", train_options={"max_steps": 7})
    assert 7 < len(trainer.batches)  # the limit falls inside the first epoch
    last = ckpt.load(tmp_path / "run" / "last.pt")
    assert (last.epoch, last.batch, last.step) == (0, 7, 7)
    assert [m.step for m in result.metrics] == [7] and result.stopped_early
    assert [s for s, _ in step_losses(tmp_path / "run")] == list(range(1, 8))


def test_eval_every_scores_between_epochs_and_resume_mid_epoch_is_exact(small_corpus, tmp_path):
    options = {"eval_every": 5, "epochs": 2}
    trainer, straight = train(small_corpus, tmp_path / "a", train_options=options)
    per_epoch = len(trainer.batches)
    total = 2 * per_epoch
    expected = list(range(5, total + 1, 5)) + ([total] if total % 5 else [])
    assert [m.step for m in straight.metrics] == expected
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1 if s <= per_epoch else 2 for s in expected]
    # stopped by --max-steps in the middle of epoch 1, then resumed to the end
    train(small_corpus, tmp_path / "b", train_options={**options, "max_steps": 10})
    _, resumed = train(small_corpus, None, train_options={"max_steps": 0}, resume=tmp_path / "b")
    assert step_losses(tmp_path / "b") == step_losses(tmp_path / "a")
    assert [(m.step, m.train_loss, m.val_loss) for m in resumed.metrics] == [
        (m.step, m.train_loss, m.val_loss) for m in straight.metrics[2:]
    ]


def test_eval_chars_scores_the_first_part_of_the_held_out_text(small_corpus, tmp_path):
    trainer, result = train(
        small_corpus, tmp_path / "run", train_options={"epochs": 1, "eval_chars": 100}
    )
    assert len(trainer.data.val) > 100
    trainer.model.load_state_dict(ckpt.load(tmp_path / "run" / "last.pt").model)
    part = heldout_score(trainer.data, trainer.model, max_chars=100)
    assert part.chars == 100
    assert result.metrics[-1].val_loss == pytest.approx(part.loss, rel=1e-6)
    assert heldout_score(trainer.data, trainer.model).chars == len(trainer.data.val)


def test_time_limit_is_honoured_between_steps(small_corpus, tmp_path):
    """A limit far shorter than one epoch ends the run after the step that passes it,
    with its held-out score and a checkpoint that resumes mid-epoch."""
    lines: list[str] = []
    trainer = make_trainer(small_corpus, tmp_path / "run", train_options={"time_limit": 1e-6})
    trainer.log = lines.append
    result = trainer.fit()
    last = ckpt.load(tmp_path / "run" / "last.pt")
    assert (last.epoch, last.step) == (0, 1) and last.batch < len(trainer.batches)
    assert result.stopped_early and len(result.metrics) == 1
    assert any(line.startswith("time limit:") for line in lines)


def test_progress_lines_when_the_output_is_not_a_terminal(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLSTM_PROGRESS_EVERY", "0")  # a line after every step
    steps = ["--max-steps", "4", "--sample-every", "0"]
    result = invoke("train", small_corpus, "--run-dir", tmp_path / "run", *FAST, *steps)
    assert result.exit_code == 0, result.output
    lines = [
        line for line in result.output.splitlines() if line.startswith("step ") and "/" in line
    ]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("chars/s" in line and "loss" in line and "left" in line for line in lines)
    assert "step limit: 4 optimizer steps (--max-steps 4)" in result.output


def test_a_prepared_corpus_trains_exactly_as_the_text_it_was_prepared_from(small_corpus, tmp_path):
    """charlstm prepare, then train DIR: the same vocabulary, split and losses as train CORPUS."""
    prepared = tmp_path / "prepared"
    result = invoke("prepare", small_corpus, "--out", prepared)
    assert result.exit_code == 0, result.output
    assert f"train with: charlstm train {prepared}" in result.output
    options = {"max_steps": 12, "eval_every": 6}
    text_run, _ = train(small_corpus, tmp_path / "text", train_options=options)
    dir_run, _ = train(prepared, tmp_path / "dir", train_options=options)
    assert dir_run.vocab == text_run.vocab
    assert (len(dir_run.data.train), len(dir_run.data.val)) == (
        len(text_run.data.train),
        len(text_run.data.val),
    )
    assert dir_run.data.fingerprint == text_run.data.fingerprint
    assert step_losses(tmp_path / "dir") == step_losses(tmp_path / "text")
    text_rows = runs.read_metrics(tmp_path / "text")
    assert [r["val_loss"] for r in runs.read_metrics(tmp_path / "dir")] == [
        r["val_loss"] for r in text_rows
    ]
    # charlstm eval DIR scores the held-out part as training did
    scored = invoke("eval", prepared, "--checkpoint", tmp_path / "dir" / "last.pt", "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["loss"] == pytest.approx(text_rows[-1]["val_loss"], rel=1e-6)
    # resumed from the prepared directory, it goes on; its normalisation cannot change
    _, more = train(prepared, None, train_options={"max_steps": 18}, resume=tmp_path / "dir")
    assert [m.step for m in more.metrics] == [18]
    with pytest.raises(CharLSTMError, match="fixed by charlstm prepare"):
        train(prepared, tmp_path / "bad", data={"newlines": "space"})
