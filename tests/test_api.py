"""The Python API: ``from charlstm import load_model``, generation keywords (adaptive
generation included), perplexity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from charlstm import load_model
from charlstm.api import LanguageModel, read_prefix_file
from charlstm.errors import CharLSTMError
from charlstm.fields import SettingError
from charlstm.generation.settings import CacheConfig, DynamicConfig, SamplingConfig
from tests.helpers import save_known_model as save_known_checkpoint
from tests.helpers import shown

PROBS = {"\n": 0.1, "a": 0.4, "b": 0.3, "c": 0.2}


def save_known_model(path: Path, probs: dict[str, float] = PROBS) -> Path:
    """A run directory whose ``best.pt`` predicts ``probs`` after any text."""
    return save_known_checkpoint(path / "best.pt", probs)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("api") / "run"
    save_known_model(run)
    return run


@pytest.fixture(scope="module")
def model(run_dir: Path) -> LanguageModel:
    return load_model(run_dir)


def test_load_model_from_a_run_directory_or_file(run_dir: Path, model: LanguageModel):
    assert model.checkpoint.path == run_dir / "best.pt"
    assert load_model(run_dir / "best.pt").vocab == model.vocab
    assert not model.model.training
    with pytest.raises(CharLSTMError, match="checkpoint not found"):
        load_model(run_dir / "missing.pt")


def test_loading_leaves_the_callers_random_state_alone(run_dir: Path):
    """Building the model to load the weights into draws no random numbers of the caller's:
    text sampled without a seed after loading is what the caller's seed gives."""
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    loaded = load_model(run_dir)
    assert torch.equal(torch.rand(3), expected)
    assert loaded.model.training is False


def test_generate_returns_the_prefix_and_length_characters(model: LanguageModel):
    text = model.generate("ab", length=30, temperature=0.8, seed=1)
    assert text.startswith("ab") and len(text) == 32
    assert set(text) <= set(PROBS)
    assert model.generate("ab", length=30, temperature=0.8, seed=1) == text
    assert model.generate("ab", length=30, temperature=0.8, seed=2) != text


def test_generate_keyword_controls(model: LanguageModel):
    assert model.generate("c", 6, greedy=True) == "caaaaaa"
    assert model.generate("c", 6, greedy=True, repetition_penalty=100, penalty_window=2) == (
        "cabcabc"
    )
    assert set(model.generate("c", 200, top_k=2, seed=0)[1:]) == {"a", "b"}
    assert set(model.generate("c", 200, top_p=0.5, seed=0)[1:]) == {"a", "b"}
    stopped = model.generate("c", 200, stop_at="b", seed=3)
    assert stopped.endswith("b") and stopped.count("b") == 1
    two_lines = model.generate("c", 500, lines=2, seed=3)
    assert two_lines.count("\n") == 2 and two_lines.endswith("\n")


def test_generate_many_is_one_call_for_every_prefix_and_sample(model: LanguageModel):
    texts = model.generate_many(["a", "bc"], 12, num_samples=3, temperature=0.5, seed=4)
    assert [len(group) for group in texts] == [3, 3]
    assert all(len(text) == 12 for group in texts for text in group)
    config = SamplingConfig(temperature=0.5)
    assert model.generate_many(["a", "bc"], 12, 3, config, seed=4) == texts
    # keywords override the config
    greedy = model.generate_many(["a"], 5, sampling=config, temperature=1.0, greedy=True)
    assert greedy == [["aaaaa"]]
    with pytest.raises(TypeError):
        model.generate_many(["a"], 5, temprature=0.5)


def test_adaptive_generation_keywords(model: LanguageModel):
    before = {key: value.clone() for key, value in model.model.state_dict().items()}
    dynamic = DynamicConfig(lr=2.0, segment=5)
    first = model.generate("abc\nab", 60, seed=2, dynamic=dynamic)
    assert model.generate("abc\nab", 60, seed=2, dynamic=dynamic) == first  # the same again
    assert first != model.generate("abc\nab", 60, seed=2)  # it learnt from its text
    for key, value in model.model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the loaded model never changes
    # the known model always says a; a cache of "cb" (one pair: c -> b) makes it say b
    assert model.generate("cb", 3, greedy=True, cache=CacheConfig(mix=0.9)) == "cbbbb"
    texts = model.generate_many(
        ["a", "bc"], 12, 2, seed=4, cache=CacheConfig(), dynamic=dynamic, temperature=0.5
    )
    assert texts == model.generate_many(
        ["a", "bc"], 12, 2, SamplingConfig(temperature=0.5), 4, cache=CacheConfig(), dynamic=dynamic
    )
    with pytest.raises(SettingError, match=r"cache\.mix must be in \[0, 1\)"):
        model.generate("a", 5, cache=CacheConfig(mix=2.0))


def test_perplexity_of_a_known_distribution(model: LanguageModel):
    text = "abca\nb"
    # every character after the first is predicted with PROBS, whatever came before
    expected = math.exp(-sum(math.log(PROBS[ch]) for ch in text[1:]) / (len(text) - 1))
    assert model.perplexity(text) == pytest.approx(expected, rel=1e-5)
    assert model.score_text(text).chars == len(text) - 1
    with pytest.raises(CharLSTMError, match="at least two characters"):
        model.perplexity("a")


def test_read_prefix_file(tmp_path: Path):
    path = tmp_path / "prefixes.txt"
    path.write_text("\ufeff分开\n\n 我们\r\n不分开\n", encoding="utf-8")
    assert read_prefix_file(path) == ["分开", " 我们", "不分开"]
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(CharLSTMError, match="has no prefixes"):
        read_prefix_file(tmp_path / "empty.txt")
    with pytest.raises(CharLSTMError, match="prefix file not found"):
        read_prefix_file(tmp_path / "none.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CharLSTMError, match="not UTF-8"):
        read_prefix_file(tmp_path / "latin1.txt")


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ({"greedy": True, "temperature": 0.5}, "--greedy always takes the likeliest"),
        ({"greedy": True, "top_p": 0.9}, "--greedy always takes the likeliest"),
        ({"penalty_window": 8}, "--penalty-window is a setting of --repetition-penalty"),
    ],
)
def test_the_api_refuses_what_the_cli_refuses(model: LanguageModel, controls, message):
    """One rule in SamplingConfig.validate: settings that cannot act are refused here too."""
    with pytest.raises(SettingError, match="^[^\n]*$") as err:
        model.generate("a", 5, **controls)
    assert message in shown(err.value)
