"""``charlstm generate``, ``info`` and ``plot`` end to end through CliRunner, and the
terminal display they use."""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from charlstm import load_model
from charlstm.cli.display import BOLD, RESET, SampleStream, format_sample, sparkline, use_style
from charlstm.config import DataConfig, ModelConfig, TrainConfig
from charlstm.generation.settings import CacheConfig, DynamicConfig
from charlstm.model import build_model
from charlstm.storage import runs
from tests.helpers import invoke, save_known_model

PROBS = {"\n": 0.15, "分": 0.3, "开": 0.25, "我": 0.2, "们": 0.1}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose model predicts PROBS after any text, with four epochs of metrics."""
    run = tmp_path_factory.mktemp("cli") / "run"
    save_known_model(
        run / "best.pt",
        PROBS,
        train_config=TrainConfig(epochs=4),
        data_config=DataConfig(path="lyrics.zip"),
        epoch=3,
        step=30,
        best_val_loss=1.5,
    )
    for epoch, (train, val) in enumerate([(3.0, 2.5), (2.0, 1.8), (1.6, 1.5), (1.2, 1.7)], 1):
        runs.append_metrics(
            run,
            {
                "epoch": epoch,
                "step": 10 * epoch,
                "train_loss": train,
                "train_ppl": math.exp(train),
                "val_loss": val,
                "val_ppl": math.exp(val),
                "lr": 0.002,
                "seconds": 1.0,
                "chars_per_sec": 1000.0,
                "best": epoch <= 3,
            },
        )
    return run


def test_text_output_is_the_streamed_samples(run_dir: Path):
    args = ["--checkpoint", run_dir, "--prefix", "分开", "--prefix", "我", "--num-samples", "3"]
    result = invoke("generate", *args, "--length", "20", "--seed", "9", "--lines", "1")
    assert result.exit_code == 0, result.output
    texts = load_model(run_dir).generate_many(["分开", "我"], 20, 3, seed=9, lines=1)
    expected = "".join(
        format_sample(p, text)
        for p, group in zip(["分开", "我"], texts, strict=True)
        for text in group
    )
    assert result.stdout == expected  # the CLI runs the API's function, plain when piped
    assert "\x1b[" not in result.stdout
    assert sum(line.startswith(("分开", "我")) for line in result.stdout.splitlines()) == 6


def test_jsonl_has_prefix_text_settings_checkpoint_and_a_repeatable_seed(run_dir: Path):
    result = invoke(
        "generate", "--checkpoint", run_dir, "--prefix", "分", "--prefix", "们",
        "--num-samples", "2", "--length", "15", "--top-k", "3", "--format", "jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["prefix"], r["sample"]) for r in records] == [
        ("分", 0), ("分", 1), ("们", 0), ("们", 1),
    ]  # fmt: skip
    for record in records:
        assert record["text"].startswith(record["prefix"])
        assert len(record["text"]) == len(record["prefix"]) + 15
        assert record["checkpoint"] == str(run_dir / "best.pt")
        assert record["settings"]["top_k"] == 3 and record["settings"]["length"] == 15
        assert {"temperature", "top_p", "greedy", "repetition_penalty", "stop_at"} <= set(
            record["settings"]
        )
    seed = records[0]["seed"]
    assert isinstance(seed, int) and {r["seed"] for r in records} == {seed}
    again = invoke(
        "generate", "--checkpoint", run_dir, "--prefix", "分", "--prefix", "们",
        "--num-samples", "2", "--length", "15", "--top-k", "3", "--format", "jsonl",
        "--seed", seed,
    )  # fmt: skip
    assert again.stdout == result.stdout  # the recorded seed repeats the run


def test_out_file_and_prefix_file(run_dir: Path, tmp_path: Path):
    prefixes = tmp_path / "prefixes.txt"
    prefixes.write_text("分开\n\n我们\n", encoding="utf-8")
    out = tmp_path / "samples.jsonl"
    result = invoke(
        "generate", "--checkpoint", run_dir, "--prefix-file", prefixes, "--prefix", "开",
        "--stop-at", "\\n", "--length", "50", "--seed", "1", "--format", "jsonl", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"wrote 3 samples to {out}" in result.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prefix"] for r in records] == ["开", "分开", "我们"]
    for record in records:
        assert record["settings"]["stop_at"] == "\n"
        assert record["text"].count("\n") <= 1
    text_out = tmp_path / "samples.txt"
    result = invoke(
        "generate", "--checkpoint", run_dir, "--prefix-file", prefixes, "--stop-at", "\\n",
        "--length", "50", "--seed", "1", "--out", text_out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = text_out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and lines[0].startswith("分开") and lines[1].startswith("我们")


def test_cache_and_dynamic_adapt_each_sample_and_are_recorded(tiny_run: Path):
    args = ["--checkpoint", tiny_run, "--prefix", "分开", "--prefix", "我们说好不分开"]
    args += ["--num-samples", "2", "--length", "60", "--seed", "3"]
    adapt = ["--cache", "--cache-window", "200", "--dynamic", "--dynamic-segment", "10"]
    result = invoke("generate", *args, *adapt, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    cache, dynamic = CacheConfig.for_generation(window=200), DynamicConfig(segment=10)
    for record in records:
        assert record["settings"]["cache"] == asdict(cache)  # generation's own default mix
        assert record["settings"]["dynamic"] == asdict(dynamic)
    model = load_model(tiny_run)
    prefixes = ["分开", "我们说好不分开"]
    texts = model.generate_many(prefixes, 60, 2, seed=3, cache=cache, dynamic=dynamic)
    expected = [p + t for p, group in zip(prefixes, texts, strict=True) for t in group]
    assert [r["text"] for r in records] == expected
    assert invoke("generate", *args, *adapt, "--format", "jsonl").stdout == result.stdout
    text = invoke("generate", *args, *adapt)  # streamed text: the same samples
    assert text.stdout == "".join(
        format_sample(r["prefix"], r["text"][len(r["prefix"]) :]) for r in records
    )
    plain = invoke("generate", *args, "--format", "jsonl")
    plain_records = [json.loads(line) for line in plain.stdout.splitlines()]
    assert {r["settings"]["cache"] for r in plain_records} == {None}
    assert {r["settings"]["dynamic"] for r in plain_records} == {None}
    assert [r["text"] for r in plain_records] != [r["text"] for r in records]
    for off in (["--cache", "--cache-mix", "0"], ["--dynamic", "--dynamic-lr", "0"]):
        assert invoke("generate", *args, *off).stdout == invoke("generate", *args).stdout


def test_generate_help_lists_the_controls():
    result = invoke("generate", "--help")
    assert result.exit_code == 0
    for option in (
        "--prefix-file", "--repetition-penalty", "--penalty-window", "--stop-at", "--lines",
        "--format", "--out", "--num-samples", "--top-p", "--cache", "--cache-window",
        "--cache-flatness", "--cache-mix", "--dynamic", "--dynamic-lr", "--dynamic-segment",
    ):  # fmt: skip
        assert option in result.output
    # each help names its own default: writing uses a lighter cache than scoring
    help_text = " ".join(result.output.split())
    assert "--cache-mix <float> Cache: its weight in the mixture, in [0, 1). [default: 0.05]" in (
        help_text
    )
    assert "--length <int> Characters to generate" in help_text and "[default: 100]" in help_text
    eval_help = " ".join(invoke("eval", "--help").output.split())
    assert "in [0, 1). [default: 0.45]" in eval_help and "--lstm-only" in eval_help


# -- the stream ----------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stream_follows_one_sample_at_a_time_and_writes_early():
    writes: list[str] = []
    stream = SampleStream(["ab", "c", "d"], writes.append)
    steps = [["x", "y", "z"], ["\n", "y", ""], ["", "y", ""], ["", "\n", ""]]
    stream.on_step(steps[0])
    assert "".join(writes) == "abx"  # the first sample appears while it is written
    for step in steps[1:]:
        stream.on_step(step)
    stream.close()
    assert "".join(writes) == "abx\n" + "cyyy\n" + "dz\n"
    texts = ["x\n", "yyy\n", "z"]
    assert "".join(writes) == "".join(map(format_sample, ["ab", "c", "d"], texts))


def test_stream_of_nothing_is_the_prefixes():
    writes: list[str] = []
    stream = SampleStream(["ab", "c\n"], writes.append)
    stream.close()  # --length 0
    assert "".join(writes) == "ab\n" + "c\n" == format_sample("ab", "") + format_sample("c\n", "")


def test_prefix_is_bold_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    terminal = Terminal()
    assert use_style(terminal) and not use_style(io.StringIO())
    stream = SampleStream(["分开"], terminal.write, style=use_style(terminal))
    stream.on_step(["我"])
    stream.close()
    assert terminal.getvalue() == f"{BOLD}分开{RESET}我\n"
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_style(terminal)


# -- info and plot -------------------------------------------------------------------------


def test_info_describes_the_run(run_dir: Path):
    result = invoke("info", run_dir)
    assert result.exit_code == 0, result.output
    out = result.stdout
    parameters = build_model(ModelConfig(vocab_size=len(PROBS), hidden_size=8)).num_parameters()
    assert "scratch backend" in out and "1 LSTM layer x 8 hidden" in out
    assert f"parameters   {parameters:,}" in out
    assert "vocabulary   5 characters" in out
    assert "lyrics.zip" in out
    assert "4 trained (of 4 planned)" in out
    assert f"best perplexity {math.exp(1.5):.2f}" in out and "at epoch 3" in out
    assert "held-out loss" in out and "train loss" in out
    table_rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in table_rows] == ["1", "2", "3", "4"]
    spark = next(line for line in out.splitlines() if line.startswith("train loss  "))
    assert "█▄▃▁" in spark  # 3.0, 2.0, 1.6, 1.2 on the shared 1.2..3.0 scale


def test_info_json_and_a_checkpoint_file(run_dir: Path):
    result = invoke("info", run_dir / "best.pt", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["vocab_size"] == 5 and report["epochs"] == 4
    assert report["best_val_ppl"] == pytest.approx(math.exp(1.5))
    assert [m["epoch"] for m in report["metrics"]] == [1, 2, 3, 4]


def test_info_on_a_missing_path_is_one_line(tmp_path: Path):
    result = invoke("info", tmp_path / "nothing")
    assert result.exit_code == 2
    assert result.output.strip() == f"error: checkpoint not found: {tmp_path / 'nothing'}"


def test_sparkline_scale():
    assert sparkline([0.0, 0.5, 1.0, None], 0.0, 1.0) == "▁▅█ "
    assert sparkline([2.0, 2.0], 2.0, 2.0) == "▁▁"


def test_plot_without_matplotlib_says_how_to_install_it(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = invoke("plot", run_dir, "--out", tmp_path / "p.png")
    assert result.exit_code == 2
    assert result.output.strip() == "error: plot needs matplotlib: pip install 'charlstm[plot]'"
    assert not (tmp_path / "p.png").exists()


def test_plot_writes_a_png(run_dir: Path, tmp_path: Path):
    pytest.importorskip("matplotlib", reason="matplotlib (the [plot] extra) is not installed")
    out = tmp_path / "curves.png"
    result = invoke("plot", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 0 and height > 0 and len(data) > 10_000  # a drawn figure, not an empty file
    folder = tmp_path / "figures"
    folder.mkdir()
    into = invoke("plot", run_dir, "--out", folder)  # a directory: perplexity.png in it
    assert into.stdout.strip() == f"wrote {folder / 'perplexity.png'}"
    assert (folder / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_metrics(tmp_path: Path):
    (tmp_path / "run").mkdir()
    result = invoke("plot", tmp_path / "run")
    assert result.exit_code == 2
    assert "no metrics in" in result.output
