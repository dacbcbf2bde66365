"""charlstm.data.prepared: a streamed, memory-mapped corpus equals the in-memory one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import Result

from charlstm.config import DataConfig
from charlstm.data import prepared as prep
from charlstm.data.batching import ConsecutiveBatches, RandomBatches
from charlstm.data.corpus import Corpus, read_text, split_point
from charlstm.data.prepared import PreparedCorpus, is_prepared, prepare
from charlstm.errors import CharLSTMError
from charlstm.storage import checkpoint as ckpt
from charlstm.storage import runs
from tests.helpers import ENV, FAST, copy_run, invoke, one_line_error, write_zip
from tests.helpers import command as ddp_command

LYRICS = "\ufeff我们说好不分开\r\n分开以后的雨天\r窗外的风吹过 😀\n\r\n你说的话还在耳边\r"


def quiet(_: str) -> None:
    pass


def assert_same_as_in_memory(
    data: DataConfig, out: Path, val_fraction: float = 0.1, chunk_bytes: int = prep.CHUNK_BYTES
) -> PreparedCorpus:
    """The prepared corpus has read_text's vocabulary, indices, split and fingerprint."""
    corpus = Corpus.from_text(
        read_text(data.path, data.member, data.encoding, data.newlines, data.max_chars)
    )
    result = prepare(data, val_fraction, out, log=quiet, chunk_bytes=chunk_bytes)
    cut = split_point(len(corpus), val_fraction)
    assert result.vocab == corpus.vocab
    assert result.sha256 == corpus.fingerprint()
    assert result.num_chars == len(corpus) == len(result.train) + len(result.val)
    assert np.array_equal(result.train, corpus.indices[:cut].numpy())
    assert np.array_equal(result.val, corpus.indices[cut:].numpy())
    assert result.text() == corpus.text
    assert result.train_text() == corpus.text[:cut]
    counts = np.bincount(corpus.indices.numpy(), minlength=len(corpus.vocab))
    assert np.array_equal(result.counts, counts)
    assert np.array_equal(
        result.train_counts, np.bincount(corpus.indices[:cut].numpy(), minlength=len(counts))
    )
    reopened = PreparedCorpus.open(out)
    assert reopened.vocab == corpus.vocab and np.array_equal(reopened.val, result.val)
    return result


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# chunk sizes 1, 2 and 3 put boundaries inside every multi-byte character and "\r\n"
CHUNKS = [1, 2, 3, 5, prep.CHUNK_BYTES]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(
    ("newlines", "max_chars"), [("keep", None), ("space", None), ("keep", 17), ("space", 17)]
)
def test_utf8_file_with_bom_crlf_and_lone_cr(
    tmp_path: Path, chunk: int, newlines: str, max_chars: int | None
) -> None:
    source = write(tmp_path / "lyrics.txt", LYRICS.encode("utf-8") * 3)
    data = DataConfig(path=source, newlines=newlines, max_chars=max_chars)  # type: ignore[arg-type]
    assert_same_as_in_memory(data, tmp_path / "out", chunk_bytes=chunk)


@pytest.mark.parametrize("max_chars", range(1, 12))
def test_max_chars_cutting_anywhere_near_crlf(tmp_path: Path, max_chars: int) -> None:
    source = write(tmp_path / "crlf.txt", b"ab\r\ncd\r\r\nef\rgh\r\n")
    for newlines in ("keep", "space"):
        data = DataConfig(path=source, newlines=newlines, max_chars=max_chars)  # type: ignore[arg-type]
        assert_same_as_in_memory(data, tmp_path / "out", chunk_bytes=1)


@pytest.mark.parametrize("chunk", [1, 2, 3, prep.CHUNK_BYTES])
def test_gb18030_file_is_detected_as_read_text_does(tmp_path: Path, chunk: int) -> None:
    # valid UTF-8 for its first (ASCII) bytes, so the decoder only fails further in
    text = "intro line\n" * 5 + LYRICS.replace("😀", "") * 4 + "𠀀\n"
    source = write(tmp_path / "gbk.txt", text.encode("gb18030"))
    result = assert_same_as_in_memory(DataConfig(path=source), tmp_path / "out", chunk_bytes=chunk)
    assert result.meta["encodings"] == ["gb18030"]


def test_named_encoding(tmp_path: Path) -> None:
    source = write(tmp_path / "utf16.txt", LYRICS.encode("utf-16"))
    assert_same_as_in_memory(DataConfig(path=source, encoding="utf-16"), tmp_path / "out", 0.2, 3)


@pytest.mark.parametrize("chunk", [1, 4, prep.CHUNK_BYTES])
def test_zip_members_one_several_and_named(tmp_path: Path, chunk: int) -> None:
    one = write_zip(tmp_path / "one.zip", {"a.txt": LYRICS.encode("utf-8")})
    assert_same_as_in_memory(DataConfig(path=str(one)), tmp_path / "o1", chunk_bytes=chunk)
    several = write_zip(
        tmp_path / "several.zip",
        {
            "b.txt": "第二首\r".encode(),  # ends in "\r": with the joining "\n" it is one newline
            "a.txt": LYRICS.encode("utf-8"),
            "c.lrc": "第三首 gb\r\n".encode("gb18030") * 3,
            "cover.jpg": b"\xff\xd8\x00\x00",
            "__MACOSX/._a.txt": b"\x00\x05",
        },
    )
    result = assert_same_as_in_memory(
        DataConfig(path=str(several)), tmp_path / "o2", chunk_bytes=chunk
    )
    assert result.meta["encodings"] == ["utf-8-sig", "utf-8-sig", "gb18030"]
    named = DataConfig(path=str(several), member="c.lrc", newlines="space")
    assert_same_as_in_memory(named, tmp_path / "o3", chunk_bytes=chunk)


def test_jaychou_equals_the_in_memory_corpus(jaychou: Path, tmp_path: Path) -> None:
    result = assert_same_as_in_memory(DataConfig(path=str(jaychou)), tmp_path / "out")
    assert (len(result.vocab), result.num_chars, result.train.dtype) == (2583, 63_282, np.uint16)
    assert len(result.val) == 6_329
    d2l = DataConfig(path=str(jaychou), newlines="space", max_chars=10_000)
    assert len(assert_same_as_in_memory(d2l, tmp_path / "d2l", chunk_bytes=1000).vocab) == 1027


@pytest.mark.parametrize(("distinct", "dtype"), [(65_535, np.uint16), (65_536, np.uint32)])
def test_index_dtype_switches_to_uint32_above_65535_characters(
    tmp_path: Path, distinct: int, dtype: type
) -> None:
    # CJK Extension B and on: four UTF-8 bytes each, one of each character
    text = "".join(chr(0x20000 + i) for i in range(distinct))
    source = write(tmp_path / "big_vocab.txt", text.encode("utf-8"))
    result = prepare(DataConfig(path=source), 0.1, tmp_path / "out", log=quiet)
    assert result.train.dtype == dtype and result.meta["dtype"] == np.dtype(dtype).name
    assert len(result.vocab) == distinct and result.text() == text
    assert int(result.val[-1]) == distinct - 1


def test_val_fraction_zero_gives_an_empty_val(tmp_path: Path) -> None:
    source = write(tmp_path / "t.txt", b"hello world\n")
    result = assert_same_as_in_memory(DataConfig(path=source), tmp_path / "out", 0.0)
    assert len(result.val) == 0 and PreparedCorpus.open(tmp_path / "out").text(0) == "hello world\n"


@pytest.mark.parametrize(
    ("content", "data"),
    [
        (b"ok\x00ok", {}),
        (b"\xff\xfe\xfa\xfb\x80\x80", {}),
        (b" \r\n\t ", {}),
        (b"abc", {"encoding": "no-such-codec"}),
        ("é".encode("latin-1") * 3, {"encoding": "utf-8"}),
        (b"abc", {"member": "a.txt"}),
    ],
)
def test_bad_sources_fail_with_read_texts_message(
    tmp_path: Path, content: bytes, data: dict
) -> None:
    config = DataConfig(path=write(tmp_path / "bad.txt", content), **data)
    with pytest.raises(CharLSTMError) as expected:
        read_text(config.path, config.member, config.encoding, config.newlines, config.max_chars)
    with pytest.raises(CharLSTMError) as got:
        prepare(config, 0.1, tmp_path / "out", log=quiet, chunk_bytes=2)
    assert str(got.value) == str(expected.value)
    assert not (tmp_path / "out").exists()


def test_missing_file_and_bad_val_fraction(tmp_path: Path) -> None:
    with pytest.raises(CharLSTMError, match="corpus not found"):
        prepare(DataConfig(path=str(tmp_path / "nope.txt")), 0.1, tmp_path / "out", log=quiet)
    source = write(tmp_path / "t.txt", b"text")
    result = invoke("prepare", source, "--out", tmp_path / "out", "--val-fraction", "1.0")
    one_line_error(result, "--val-fraction must be in [0, 1), not 1.0")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_prepare_leaves_nothing_that_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write(tmp_path / "t.txt", LYRICS.encode("utf-8") * 10)
    original = prep._Pass2.add

    def add_then_die(self: prep._Pass2, text: str) -> None:
        original(self, text)
        raise KeyboardInterrupt

    monkeypatch.setattr(prep._Pass2, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(DataConfig(path=source), 0.1, tmp_path / "out", log=quiet, chunk_bytes=8)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "t.txt"]  # no temporary directory left


def test_partial_or_foreign_directories_are_refused_on_one_line(tmp_path: Path) -> None:
    source = write(tmp_path / "t.txt", LYRICS.encode("utf-8") * 10)
    out = tmp_path / "out"
    prepare(DataConfig(path=source), 0.1, out, log=quiet)
    assert is_prepared(out)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))

    def refused(match: str) -> None:
        with pytest.raises(CharLSTMError, match=match) as info:
            PreparedCorpus.open(out)
        assert "\n" not in str(info.value)

    (out / "meta.json").rename(out / "meta.json.away")  # as a killed prepare would leave it
    assert not is_prepared(out)
    refused("no meta.json")
    (out / "meta.json").write_text(json.dumps({**meta, "version": 99}), encoding="utf-8")
    refused("format version 99")
    (out / "meta.json").write_text(json.dumps({**meta, "format": "other"}), encoding="utf-8")
    refused("does not describe a prepared corpus")
    (out / "meta.json").write_text("{not json", encoding="utf-8")
    refused("cannot read prepared corpus")
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with open(out / "train.bin", "r+b") as train:
        train.truncate(10)
    refused("wrong size")
    with pytest.raises(CharLSTMError, match="not a prepared corpus directory"):
        PreparedCorpus.open(tmp_path / "t.txt")


def test_prepare_replaces_a_prepared_directory_but_nothing_else(tmp_path: Path) -> None:
    first = write(tmp_path / "a.txt", b"first text")
    second = write(tmp_path / "b.txt", b"the second text")
    out = tmp_path / "out"
    prepare(DataConfig(path=first), 0.1, out, log=quiet)
    assert prepare(DataConfig(path=second), 0.1, out, log=quiet).text() == "the second text"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CharLSTMError, match="not a prepared corpus; choose a new directory"):
        prepare(DataConfig(path=first), 0.1, other, log=quiet)
    assert (other / "notes.txt").read_text() == "mine"


def test_meta_records_the_settings(tmp_path: Path) -> None:
    source = write(tmp_path / "t.txt", LYRICS.encode("utf-8"))
    data = DataConfig(path=source, newlines="space", max_chars=20)
    result = prepare(data, 0.25, tmp_path / "out", log=quiet)
    assert result.data == data and result.val_fraction == 0.25
    assert result.meta["train_chars"] == 15 and result.meta["val_chars"] == 5
    assert result.text(13, 17) == result.train_text()[13:] + result.text(15, 17)


@pytest.mark.parametrize("sampling", ["consecutive", "random"])
def test_memmap_batches_equal_tensor_batches(tmp_path: Path, sampling: str) -> None:
    source = write(tmp_path / "t.txt", LYRICS.encode("utf-8") * 40)
    result = prepare(DataConfig(path=source), 0.1, tmp_path / "out", log=quiet)
    assert isinstance(result.train, np.memmap)
    tensor = torch.from_numpy(result.train.astype(np.int64))
    if sampling == "consecutive":
        ours, theirs = ConsecutiveBatches(result.train, 4, 7), ConsecutiveBatches(tensor, 4, 7)
    else:
        ours, theirs = RandomBatches(result.train, 4, 7, seed=3), RandomBatches(tensor, 4, 7, 3)
    assert len(ours) == len(theirs) > 3
    for i in range(len(ours)):
        (x, y), (tx, ty) = ours[i], theirs[i]
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x, tx) and torch.equal(y, ty)
        assert torch.equal(ours.positions(i), theirs.positions(i))


# ---------------------------------------------------------------------- train CORPUS, big


def steps_of(run: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in runs.read_steps(run)]


@pytest.fixture
def big_means_any(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every corpus file counts as big: train CORPUS prepares it inside the run directory."""
    monkeypatch.setenv(prep.PREPARE_ABOVE_ENV, "0")


def test_a_big_corpus_is_prepared_in_the_run_and_trains_as_in_memory(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [*FAST, "--max-steps", "6", "--eval-every", "3"]
    small = invoke("train", small_corpus, "--run-dir", tmp_path / "memory", *steps)
    assert small.exit_code == 0, small.output
    assert not (tmp_path / "memory" / prep.RUN_CORPUS).exists()  # below the threshold
    monkeypatch.setenv(prep.PREPARE_ABOVE_ENV, str(small_corpus.stat().st_size - 1))
    big = invoke("train", small_corpus, "--run-dir", tmp_path / "big", *steps)
    assert big.exit_code == 0, big.output
    assert f"preparing {small_corpus}" in big.output
    inside = PreparedCorpus.open(tmp_path / "big" / prep.RUN_CORPUS)
    text = Corpus.from_text(read_text(small_corpus))
    assert inside.vocab == text.vocab and inside.sha256 == text.fingerprint()
    assert steps_of(tmp_path / "big") == steps_of(tmp_path / "memory")
    val_losses = [
        [r["val_loss"] for r in runs.read_metrics(tmp_path / d)] for d in ("memory", "big")
    ]
    assert val_losses[0] == val_losses[1]
    config = json.loads((tmp_path / "big" / "config.json").read_text(encoding="utf-8"))
    assert config["data"]["path"] == str(small_corpus.resolve())  # the run names its file
    # charlstm eval RUN/corpus scores the held-out part as training did
    last = tmp_path / "big" / "last.pt"
    scored = invoke("eval", tmp_path / "big" / prep.RUN_CORPUS, "--checkpoint", last, "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["loss"] == pytest.approx(val_losses[1][-1], rel=1e-6)


def test_resume_reuses_the_prepared_corpus_even_without_the_file(
    small_corpus: Path, tmp_path: Path, big_means_any: None
) -> None:
    source = tmp_path / "lyrics.zip"
    source.write_bytes(small_corpus.read_bytes())
    run = tmp_path / "run"
    first = invoke("train", source, "--run-dir", run, *FAST, "--max-steps", "4")
    assert first.exit_code == 0, first.output
    meta = run / prep.RUN_CORPUS / "meta.json"
    written = meta.stat().st_mtime_ns
    source.unlink()
    more = invoke("train", "--resume", run, "--max-steps", "8")
    assert more.exit_code == 0, more.output
    assert "preparing" not in more.output and meta.stat().st_mtime_ns == written
    assert [step for step, _ in steps_of(run)] == list(range(1, 9))


def test_resume_prepares_again_when_the_corpus_in_the_run_is_not_the_runs(
    small_corpus: Path, tmp_path: Path, big_means_any: None
) -> None:
    run = tmp_path / "run"
    assert invoke("train", small_corpus, "--run-dir", run, *FAST, "--max-steps", "4").exit_code == 0
    meta_file = run / prep.RUN_CORPUS / "meta.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta_file.write_text(json.dumps({**meta, "sha256": "0" * 64}), encoding="utf-8")
    more = invoke("train", "--resume", run, "--max-steps", "6")
    assert more.exit_code == 0, more.output
    assert f"preparing {small_corpus}" in more.output
    assert PreparedCorpus.open(run / prep.RUN_CORPUS).sha256 == meta["sha256"]


def test_a_new_run_that_fails_after_preparing_leaves_no_directory(
    small_corpus: Path, tmp_path: Path, big_means_any: None
) -> None:
    run = tmp_path / "run"
    result = invoke("train", small_corpus, "--run-dir", run, *FAST, "--prefix", "xyz")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr.strip() == (
        "error: --prefix 'xyz' has characters not in the corpus's vocabulary: 'x' 'y' 'z'"
    )
    assert not run.exists()


def test_a_run_directory_holding_a_run_is_refused_before_preparing(
    tiny_run: Path, small_corpus: Path, tmp_path: Path, big_means_any: None
) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    result = invoke("train", small_corpus, "--run-dir", run, *FAST)
    one_line_error(result, "already holds a run")
    assert not (run / prep.RUN_CORPUS).exists()


def test_a_bad_threshold_in_the_environment_is_one_line(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(prep.PREPARE_ABOVE_ENV, "lots")
    result = invoke("train", small_corpus, "--run-dir", tmp_path / "run", *FAST)
    one_line_error(result, f"{prep.PREPARE_ABOVE_ENV}='lots' is not a number of bytes")


# ---------------------------------------------------------------------- --init-from, prepared

#: A corpus with fewer characters than tiny_run's (its own vocabulary orders them otherwise)
#: and, with NEW, some that tiny_run lacks.
PART = "我们说好不分开\n窗外的风吹过\n" * 60
NEW = "晴天的雨下个不停\n" * 30


def fine_tuned(corpus: Path, base: Path, run: Path, *extra: object) -> Result:
    return invoke("train", corpus, "--init-from", base, "--run-dir", run, *FAST, *extra)


def test_init_from_trains_on_a_prepared_directory_as_on_its_text(
    tiny_run: Path, tmp_path: Path
) -> None:
    """train DIR --init-from RUN: the prepared indices are rewritten in the checkpoint's
    vocabulary inside the run, and the run is the one train FILE --init-from RUN makes."""
    text = tmp_path / "part.txt"
    text.write_text(PART + NEW, encoding="utf-8")
    prepared = tmp_path / "part.prepared"
    assert invoke("prepare", text, "--out", prepared).exit_code == 0
    steps = ["--max-steps", "4", "--extend-vocab"]
    from_text = fine_tuned(text, tiny_run, tmp_path / "text", *steps)
    assert from_text.exit_code == 0, from_text.output
    from_dir = fine_tuned(prepared, tiny_run, tmp_path / "dir", *steps)
    assert from_dir.exit_code == 0, from_dir.output
    assert steps_of(tmp_path / "dir") == steps_of(tmp_path / "text")
    base, tuned = (ckpt.load(run / "last.pt") for run in (tiny_run, tmp_path / "dir"))
    assert tuned.vocab == ckpt.load(tmp_path / "text" / "last.pt").vocab
    assert tuned.vocab.idx_to_char[: len(base.vocab)] == base.vocab.idx_to_char
    inside = PreparedCorpus.open(tmp_path / "dir" / prep.RUN_CORPUS)
    assert inside.vocab == tuned.vocab and inside.sha256 == PreparedCorpus.open(prepared).sha256
    assert inside.text() == PreparedCorpus.open(prepared).text()
    more = invoke("train", "--resume", tmp_path / "dir", "--max-steps", "6")
    assert more.exit_code == 0, more.output
    assert [step for step, _ in steps_of(tmp_path / "dir")] == list(range(1, 7))


def test_init_from_a_prepared_directory_without_extend_vocab_is_one_line(
    tiny_run: Path, tmp_path: Path
) -> None:
    text = tmp_path / "new.txt"
    text.write_text(PART + NEW, encoding="utf-8")
    prepared = tmp_path / "new.prepared"
    assert invoke("prepare", text, "--out", prepared).exit_code == 0
    result = fine_tuned(prepared, tiny_run, tmp_path / "run", "--max-steps", "2")
    missing = sorted(set(NEW) - set(ckpt.load(tiny_run / "best.pt").vocab.idx_to_char))
    line = one_line_error(result, "characters of the new corpus are not in the checkpoint's")
    assert " ".join(repr(ch) for ch in missing) in line
    assert line.endswith("pass --extend-vocab to add them")
    assert not (tmp_path / "run").exists()


def test_init_from_a_big_file_prepares_it_in_the_run(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file over the threshold is prepared inside the run, as train FILE does, not read
    into memory; the run is the one the in-memory text makes."""
    text = tmp_path / "part.txt"
    text.write_text(PART, encoding="utf-8")
    steps = ["--max-steps", "4"]
    memory = fine_tuned(text, tiny_run, tmp_path / "memory", *steps)
    assert memory.exit_code == 0, memory.output
    assert not (tmp_path / "memory" / prep.RUN_CORPUS).exists()
    monkeypatch.setenv(prep.PREPARE_ABOVE_ENV, str(text.stat().st_size - 1))
    big = fine_tuned(text, tiny_run, tmp_path / "big", *steps)
    assert big.exit_code == 0, big.output
    assert f"preparing {text}" in big.output
    inside = PreparedCorpus.open(tmp_path / "big" / prep.RUN_CORPUS)
    assert inside.vocab == ckpt.load(tiny_run / "last.pt").vocab
    assert steps_of(tmp_path / "big") == steps_of(tmp_path / "memory")


@pytest.mark.slow
@pytest.mark.skipif(
    os.name != "posix" or not torch.distributed.is_available(), reason="needs torch.distributed"
)
def test_under_torchrun_rank_0_prepares_and_the_other_waits(
    small_corpus: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    env = {**ENV, prep.PREPARE_ABOVE_ENV: "0"}
    args = ["train", small_corpus, "--run-dir", run, *FAST, "--max-steps", "3", "--device", "cpu"]
    done = subprocess.run(ddp_command(2, *args), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("preparing") == 1
    assert is_prepared(run / prep.RUN_CORPUS) and len(steps_of(run)) == 3
    nameless = subprocess.run(
        ddp_command(2, "train", small_corpus, "--runs-root", tmp_path, *FAST),
        capture_output=True,
        text=True,
        env=env,
    )
    assert nameless.returncode != 0 and "give --run-dir DIR" in nameless.stderr
