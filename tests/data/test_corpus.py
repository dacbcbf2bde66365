"""charlstm.data.corpus: reading zips and text files, encodings, vocabulary, split, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlstm.config import TrainConfig
from charlstm.data.corpus import Corpus, Vocab, read_text, split_point
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError, build
from tests.helpers import write_zip

LYRICS = "我们说好不分开\n分开以后的雨天\r\n窗外的风吹过\n"


def test_zip_single_member(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "a.zip", {"a.txt": LYRICS.encode()})
    assert read_text(path) == LYRICS.replace("\r\n", "\n")


def test_plain_text_file_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbf" + LYRICS.encode())
    assert read_text(path) == LYRICS.replace("\r\n", "\n")


def test_gb18030_fallback_and_explicit_encoding(tmp_path: Path) -> None:
    path = tmp_path / "gbk.txt"
    path.write_bytes(LYRICS.encode("gbk"))
    expected = LYRICS.replace("\r\n", "\n")
    assert read_text(path) == expected
    assert read_text(path, encoding="gb18030") == expected
    with pytest.raises(CharLSTMError, match="cannot decode"):
        read_text(path, encoding="utf-8")


def test_utf16_text_reads_with_its_encoding_named(tmp_path: Path) -> None:
    path = tmp_path / "utf16.txt"
    path.write_bytes(LYRICS.encode("utf-16"))  # every other byte is NUL
    assert read_text(path, encoding="utf-16") == LYRICS.replace("\r\n", "\n")
    with pytest.raises(CharLSTMError, match="binary file"):
        read_text(path)  # unnamed, NUL bytes still mark a binary file


def _damaged_zip(path: Path, offsets: dict[int, int] | None = None, method: int | None = None):
    """A zip of one deflated member, with bytes overwritten or its compression method set."""
    write_zip(path, {"a.txt": ("x y z\n" * 3000).encode()})
    data = bytearray(path.read_bytes())
    for offset, value in (offsets or {}).items():
        data[offset] = value
    if method is not None:  # in the local header and in the central directory
        data[8:10] = method.to_bytes(2, "little")
        central = data.rfind(b"PK\x01\x02")
        data[central + 10 : central + 12] = method.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


def test_multi_member_zip_in_name_order_and_member_choice(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "m.zip",
        {"b.txt": "第二首\n".encode(), "a.txt": "第一首\n".encode(), "cover.jpg": b"\xff\xd8"},
    )
    assert read_text(path) == "第一首\n\n第二首\n"
    assert read_text(path, member="b.txt") == "第二首\n"
    with pytest.raises(CharLSTMError, match="no member 'c.txt'"):
        read_text(path, member="c.txt")


def test_newlines_space_and_max_chars_follow_d2l(jaychou: Path) -> None:
    text = read_text(jaychou, newlines="space", max_chars=10_000)
    assert len(text) == 10_000
    assert "\n" not in text and "\r" not in text
    assert len(Vocab.from_text(text)) == 1027  # d2l's figure for this setup


def test_real_corpus_figures(jaychou: Path) -> None:
    corpus = Corpus.from_text(read_text(jaychou))
    assert len(corpus) == 63_282 and len(corpus.vocab) == 2_583
    assert corpus.indices.dtype == torch.int64 and corpus.indices.shape == (63_282,)
    train, val = corpus.split(0.1)
    assert len(train) == int(63_282 * 0.9) and len(train) + len(val) == 63_282
    assert corpus.vocab.decode(corpus.indices) == corpus.text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.zip", "corpus not found"),
        (lambda p: p, "is a directory"),
        (lambda p: _write(p / "fake.zip", b"plain text, not a zip"), "not a zip file"),
        (lambda p: _write(p / "empty.txt", b""), "is empty"),
        (lambda p: _write(p / "blank.txt", b" \n\t \n"), "is empty"),
        (lambda p: write_zip(p / "img.zip", {"cover.png": b"\x89PNG"}), "no text member"),
        (lambda p: _write(p / "bin.txt", b"\x00\x01\x02\xff" * 20), "binary"),
        (lambda p: _write(p / "bad.txt", b"\xff\xfe\xfd\x80\x81"), "cannot decode"),
        # the deflate stream starts after the 30-byte header and the name "a.txt"
        (lambda p: _damaged_zip(p / "z.zip", {35: 255, 36: 255}), "cannot read zip file"),
        (lambda p: _damaged_zip(p / "m.zip", method=99), "cannot read zip file"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(CharLSTMError, match=message) as info:
        read_text(make(tmp_path))
    assert "\n" not in str(info.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_vocab_round_trip_and_unknown_characters() -> None:
    vocab = Vocab.from_text(LYRICS)
    assert vocab.idx_to_char == sorted(set(LYRICS))
    assert vocab.decode(vocab.encode("分开以后")) == "分开以后"
    assert vocab.missing("分开吧!") == ["吧", "!"]
    with pytest.raises(CharLSTMError, match="'吧'"):
        vocab.encode("分开吧")
    grown = vocab.extend(["吧", "分"])
    assert grown.idx_to_char[: len(vocab)] == vocab.idx_to_char and grown.idx_to_char[-1] == "吧"


def test_vocabulary_is_identical_across_processes(tmp_path: Path) -> None:
    """Hash randomisation differs per process; the sorted vocabulary must not."""
    path = write_zip(tmp_path / "a.zip", {"a.txt": (LYRICS * 3 + "abcxyz").encode()})
    code = (
        "import sys; from charlstm.data.corpus import Vocab, read_text;"
        f"print(''.join(Vocab.from_text(read_text(r'{path}')).idx_to_char))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2)
    }
    assert len(outputs) == 1


def test_split_point_rule() -> None:
    assert split_point(63_282, 0.1) == 56_953  # the shared README's int(n * 0.9)
    assert split_point(100, 0.0) == 100
    with pytest.raises(SettingError, match=r"^val_fraction must be in \[0, 1\), not 1.0"):
        build(TrainConfig, {"val_fraction": 1.0})  # the one check, where the setting is built
