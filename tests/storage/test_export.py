"""charlstm.storage.export and ``charlstm export``: a model to share, loaded everywhere a run is.

What a user relies on: the directory holds the weights only (safetensors, read back by the
safetensors library itself), the settings, the vocabulary and a model card; every command
that takes a run takes it and gives the run's results (seeded text, perplexity); loading it
unpickles nothing; bad input and a full disk are one ``error:`` line with nothing left behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from charlstm.api import load_model
from charlstm.cli.options import training_command
from charlstm.storage import checkpoint as ckpt
from tests.helpers import (
    ENV,
    FAST,
    ServerProcess,
    copy_run,
    invoke,
    one_line_error,
    run_charlstm,
    write_zip,
)

FILES = ["README.md", "config.json", "model.safetensors", "vocab.json"]


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    result = invoke("export", tiny_run, out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    return out


def test_export_writes_the_weights_settings_vocabulary_and_a_card(tiny_run, exported):
    assert sorted(p.name for p in exported.iterdir()) == FILES
    checkpoint = ckpt.load(tiny_run / "best.pt")
    stored = load_file(exported / "model.safetensors")  # the safetensors library's reader
    assert stored.keys() == checkpoint.model.keys()
    assert all(torch.equal(stored[k], checkpoint.model[k]) for k in stored)  # no optimizer
    config = json.loads((exported / "config.json").read_text(encoding="utf-8"))
    assert config["format"] == "charlstm-model" and config["dtype"] == "float32"
    assert config["model"]["hidden_size"] == 32 and config["model"]["vocab_size"] == len(
        checkpoint.vocab
    )
    vocab = json.loads((exported / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == checkpoint.vocab.to_list()
    card = (exported / "README.md").read_text(encoding="utf-8")
    perplexity = torch.tensor(checkpoint.best_val_loss).exp().item()
    assert f"held-out perplexity | {perplexity:.2f}" in card
    assert "small.zip" in card and f"charlstm generate --checkpoint {exported.name}" in card
    parameters = sum(t.numel() for t in checkpoint.model.values())
    assert config["parameters"] == parameters
    assert (exported / "model.safetensors").stat().st_size <= 1.05 * parameters * 4


def test_the_cards_training_command_rebuilds_the_runs_settings(tiny_run):
    checkpoint = ckpt.load(tiny_run / "best.pt")
    command = training_command(checkpoint)
    assert command.startswith("charlstm train small.zip ")
    for option in ("--hidden 32", "--batch-size 8", "--num-steps 20", "--epochs 1"):
        assert option in command
    # run as written (on the same corpus), it trains the same model
    words = command.split()[3:]
    run_dir = tiny_run.parent / "from-card"
    result = invoke("train", checkpoint.data_config.path, *words, "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    again = ckpt.load(run_dir / "best.pt").model
    assert all(torch.equal(again[k], checkpoint.model[k]) for k in again)


def test_generate_eval_and_info_give_the_runs_results_from_the_export(tiny_run, exported):
    for command in (
        ["generate", "--prefix", "分开", "--seed", "7", "--length", "40"],
        ["generate", "--prefix", "我", "--line-lengths", "5,7", "--seed", "2"],
    ):
        from_run = invoke(*command, "--checkpoint", tiny_run)
        from_export = invoke(*command, "--checkpoint", exported)
        assert from_run.exit_code == 0 and from_export.exit_code == 0, from_export.output
        assert from_export.stdout == from_run.stdout
    text = "我们说好不分开\n窗外的风吹过\n"
    assert load_model(exported).perplexity(text) == load_model(tiny_run).perplexity(text)
    info = invoke("info", exported)
    assert info.exit_code == 0 and "parameters" in info.stdout


def test_half_halves_the_file_and_barely_moves_the_probabilities(tiny_run, tmp_path):
    out = tmp_path / "half"
    assert invoke("export", tiny_run, out, "--half").exit_code == 0
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["dtype"] == "float16"
    parameters = config["parameters"]
    assert (out / "model.safetensors").stat().st_size <= 1.05 * parameters * 2
    assert all(t.dtype == torch.float16 for t in load_file(out / "model.safetensors").values())
    text = "我们说好不分开\n分开以后的雨天\n窗外的风吹过\n" * 4
    full, half = load_model(tiny_run).perplexity(text), load_model(out).perplexity(text)
    assert abs(half / full - 1) < 0.005
    assert load_model(out).model.head.weight.dtype == torch.float32  # runs in float32


# Loading an export must never unpickle: torch.load and every pickle entry point raise.
NO_PICKLE = """
import pickle, sys, torch
def refuse(*args, **kwargs):
    raise SystemExit("unpickling attempted")
torch.load = pickle.load = pickle.loads = refuse
pickle.Unpickler = refuse
from charlstm.api import load_model
print(load_model(sys.argv[1]).generate("分开", length=5, seed=1))
"""


def test_loading_an_export_unpickles_nothing(tiny_run, exported):
    def child(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", NO_PICKLE, str(path)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
            check=False,
        )

    loaded = child(exported)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == load_model(tiny_run).generate("分开", length=5, seed=1) + "\n"
    assert "unpickling attempted" in child(tiny_run).stderr  # the check does bite


def test_serve_answers_from_an_export(tiny_run, exported):
    server = ServerProcess(exported)
    try:
        body = {"prompt": "分开", "max_tokens": 12, "seed": 4}
        reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    finally:
        assert server.stop() == 0
    expected = load_model(tiny_run).generate("分开", length=12, seed=4)
    assert "分开" + reply["choices"][0]["text"] == expected
    assert reply["model"] == exported.name


def test_fine_tuning_from_an_export_starts_from_its_weights(tiny_run, exported, tmp_path):
    corpus = write_zip(tmp_path / "new.zip", {"new.txt": "我们说好不分开。新字\n".encode() * 300})
    for source, name in ((tiny_run, "from-run"), (exported, "from-export")):
        result = invoke(
            "train", corpus, "--init-from", source, "--extend-vocab", "--epochs", "1",
            "--run-dir", tmp_path / name, *FAST[-2:], "--batch-size", "8", "--num-steps", "20",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    a = ckpt.load(tmp_path / "from-run" / "best.pt").model
    b = ckpt.load(tmp_path / "from-export" / "best.pt").model
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_export_cannot_be_resumed_and_says_what_to_do_instead(exported):
    line = one_line_error(invoke("train", "--resume", exported), "is an exported model")
    assert "fine-tune it with --init-from" in line


def test_a_non_empty_target_is_refused_and_overwrite_replaces_it(tiny_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    one_line_error(invoke("export", tiny_run, out), "is not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert invoke("export", tiny_run, out, "--overwrite").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary left


def test_a_run_without_a_checkpoint_is_one_error_line(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        (run / name).unlink()
    one_line_error(invoke("export", run, tmp_path / "out"), "no checkpoint")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_nothing_half_written(tiny_run, tmp_path):
    out = tmp_path / "model"
    result = run_charlstm("export", tiny_run, out, limit=5_000)  # the weights need more
    assert result.returncode == 1 and result.stdout == ""
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: cannot write {out}: ")
    assert "File too large" in line and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def _broken(exported: Path, to: Path) -> Path:
    return Path(shutil.copytree(exported, to))


def test_damaged_or_foreign_exports_are_one_error_line(exported, tiny_run, tmp_path):
    truncated = _broken(exported, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(
        invoke("generate", "--checkpoint", truncated, "--prefix", "我"),
        "not a readable safetensors file",
    )

    foreign = _broken(exported, tmp_path / "foreign")  # another model's weights
    save_file({"wte.weight": torch.zeros(4, 4)}, str(foreign / "model.safetensors"))
    one_line_error(
        invoke("generate", "--checkpoint", foreign, "--prefix", "我"),
        "model.safetensors does not match config.json",
    )

    mismatched = _broken(exported, tmp_path / "mismatched")
    config = json.loads((mismatched / "config.json").read_text(encoding="utf-8"))
    config["model"]["hidden_size"] = 64
    (mismatched / "config.json").write_text(json.dumps(config), encoding="utf-8")
    one_line_error(
        invoke("eval", tiny_run / "best.pt", "--checkpoint", mismatched),
        "does not match config.json",
    )

    not_json = _broken(exported, tmp_path / "not-json")
    (not_json / "config.json").write_text("{", encoding="utf-8")
    one_line_error(invoke("info", not_json), "config.json is not valid JSON")

    wrong_vocab = _broken(exported, tmp_path / "wrong-vocab")
    (wrong_vocab / "vocab.json").write_text('["a", "b"]', encoding="utf-8")
    one_line_error(invoke("info", wrong_vocab), "is inconsistent")
