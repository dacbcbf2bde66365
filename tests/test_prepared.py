"""charlstm.prepared: a streamed, memory-mapped corpus equals the in-memory one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_zip

from charlstm import prepared as prep
from charlstm.batching import ConsecutiveBatches, RandomBatches
from charlstm.config import DataConfig
from charlstm.corpus import Corpus, read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.prepared import PreparedCorpus, is_prepared, prepare

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
        (b"abc", {"max_chars": 0}),
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
    with pytest.raises(CharLSTMError, match="--val-fraction"):
        prepare(DataConfig(path=source), 1.0, tmp_path / "out", log=quiet)


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
