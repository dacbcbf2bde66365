"""The generation engine (issue 32): rows kept, reordered, duplicated and restored with one
``select``; running text and poems stepping as one batch, each writing what it writes
alone; poems with ``--cache`` and ``--dynamic``; a served poem cancelled between lines."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from charlstm.api import LanguageModel, load_model
from charlstm.generation.engine import Engine, Request, open_group, run, write
from charlstm.generation.rules import RepetitionPenalty, pick
from charlstm.generation.settings import CacheConfig, DynamicConfig, SamplingConfig
from charlstm.generation.streams import open_streams
from charlstm.generation.verse.forms import VerseSettings
from charlstm.serve.jobs import End, Job
from charlstm.serve.scheduler import Scheduler
from tests.helpers import invoke

POEM = VerseSettings(line_lengths=[5, 5, 5, 5], rhyme="xinyun", copy_filter=False)


@pytest.fixture(scope="module")
def model(tiny_run: Path) -> LanguageModel:
    return load_model(tiny_run)


def test_select_keeps_reorders_duplicates_and_adds_fresh_rows() -> None:
    values = torch.tensor([[0.0], [1.0], [2.0]])
    source = torch.tensor([[10.0], [11.0]])
    taken = pick(values, torch.tensor([2, 0, 0, -1, 4]), source)
    assert taken.flatten().tolist() == [2.0, 0.0, 0.0, 0.0, 11.0]
    assert pick(["a", "b"], torch.tensor([1, -1, 2]), ["c"], "") == ["b", "", "c"]
    penalty = RepetitionPenalty(SamplingConfig(repetition_penalty=2), 2, 5, "cpu")
    penalty.push(torch.tensor([3, 4]))
    penalty.select(torch.tensor([1, 1]))
    assert penalty.recent[:, 0].tolist() == [4, 4]


def test_duplicated_rows_step_alike_and_a_fresh_row_is_a_zero_state(model: LanguageModel) -> None:
    """After ``select``, a duplicated row's logits are its original's, bit for bit, and a
    fresh row reads from the zero state as a new batch's row does."""
    with torch.inference_mode():
        streams = open_streams(model.model, 0)
        streams.select(torch.tensor([-1, -1]))
        x = torch.stack([model.vocab.encode("我们"), model.vocab.encode("分开")], dim=1)
        streams.read(torch.arange(2), x)
        streams.select(torch.tensor([1, 0, 1, -1]))
        nxt = model.vocab.encode("说的说我")
        logits = streams.step(nxt)[1]
        assert torch.equal(logits[0], logits[2])
        alone = open_streams(model.model, 0)
        alone.select(torch.tensor([-1]))
        fresh = alone.step(model.vocab.encode("我"))[1]
        assert torch.equal(fresh[0], logits[3])


def test_text_and_poems_in_one_batch_write_what_each_writes_alone(model: LanguageModel) -> None:
    """One engine steps a running text, a poem with 3 candidates and a poem with a
    repetition penalty together; each writes exactly its text written alone."""
    requests = [
        Request(("我们",), 2, 30, SamplingConfig(top_k=5), seed=1),
        Request(("分开",), 2, 0, SamplingConfig(), seed=2, verse=POEM),
        Request(("",), 1, 0, SamplingConfig(repetition_penalty=2.0), seed=3, verse=POEM),
    ]
    alone = [write(model.model, model.vocab, r) for r in requests]
    groups = [open_group(r, model.vocab, model.device) for r in requests]
    with torch.inference_mode():
        engine = Engine(open_streams(model.model, 0), model.device)
        run(engine, groups)
    for group, request, texts in zip(groups, requests, alone, strict=True):
        per_prefix = [group.texts()[p * request.n : (p + 1) * request.n] for p in range(1)]
        assert per_prefix == texts
    assert all(t.strip("\n").count("\n") == 3 for t in alone[1][0])


@pytest.mark.parametrize("adapt", [["--cache"], ["--dynamic", "--dynamic-lr", "0.5"]])
def test_a_form_with_cache_or_dynamic_evaluation_is_kept_and_seeded(
    tiny_run: Path, adapt: list[str]
) -> None:
    """``--cache`` and ``--dynamic`` write poems too (each candidate row its own copy of
    the learning weights): the form is kept and the seed repeats the poem."""
    args = [
        "generate", "--checkpoint", tiny_run, "--line-lengths", "5,5,5", "--rhyme", "none",
        "--no-copy-filter", "--num-samples", 2, "--seed", 4, "--format", "jsonl", *adapt,
    ]  # fmt: skip
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    poems = [json.loads(line)["text"] for line in first.stdout.splitlines()]
    assert len(poems) == 2
    for poem in poems:
        lines = poem.strip("\n").split("\n")
        assert [len(line) for line in lines] == [5, 5, 5], poem
    assert invoke(*args).stdout == first.stdout


def test_a_served_poem_is_cancelled_between_lines_and_the_batch_goes_on(
    model: LanguageModel,
) -> None:
    """A poem steps with the other rows, so it can be cancelled after its first line; the
    running text beside it still writes exactly what it writes alone."""
    long_poem = VerseSettings(line_lengths=[5] * 12, rhyme="none", copy_filter=False)
    events: dict[str, list[object]] = {"poem": [], "text": []}
    first_line = threading.Event()
    done = threading.Event()

    def on_poem(event: object) -> None:
        events["poem"].append(event)
        first_line.set()
        if isinstance(event, End):
            done.set()

    text_done = threading.Event()

    def on_text(event: object) -> None:
        events["text"].append(event)
        if isinstance(event, End):
            text_done.set()

    scheduler = Scheduler({"m": model}).start()
    try:
        text_request = Request(("我们",), 1, 300, SamplingConfig(), seed=5)
        scheduler.submit(Job("m", text_request, on_event=on_text))
        poem = Job("m", Request(("",), 1, 0, seed=6, verse=long_poem), on_event=on_poem)
        scheduler.submit(poem)
        assert first_line.wait(60)
        scheduler.cancel(poem)
        assert done.wait(60) and text_done.wait(120)
    finally:
        scheduler.close()
    end = events["poem"][-1]
    assert isinstance(end, End) and end.reasons == ["cancelled"]
    written = "".join(e.texts[0] for e in events["poem"] if not isinstance(e, End))
    assert 1 <= written.count("\n") < 12  # some lines, not the whole poem
    text = "".join(e.texts[0] for e in events["text"] if not isinstance(e, End))
    assert text == write(model.model, model.vocab, text_request)[0][0]


def test_dynamic_rows_learn_apart(model: LanguageModel) -> None:
    """Duplicated learning rows are copies: training one leaves the other's weights."""
    config = DynamicConfig(lr=0.5, segment=2)
    streams = open_streams(model.model, 0, dynamic=config)
    streams.select(torch.tensor([-1]))
    with torch.no_grad():
        streams.read(torch.tensor([0]), model.vocab.encode("我们说").view(-1, 1))
        streams.select(torch.tensor([0, 0]))
        inner = streams.streams.rows
        assert inner[0].model is not inner[1].model
        streams.step(model.vocab.encode("好不"))
        streams.step(model.vocab.encode("分开"))
    weights = [dict(row.model.named_parameters()) for row in streams.streams.rows]
    name = next(iter(weights[0]))
    assert not torch.equal(weights[0][name], weights[1][name])
    assert CacheConfig.for_generation().window > 0


def test_a_stop_string_ends_a_sample_before_it_in_generate_and_the_server(
    tiny_run: Path, model: LanguageModel
) -> None:
    """``charlstm generate --stop`` (OpenAI's ``stop``) ends each sample before the first
    stop string it writes, as the server's ``stop`` does for the same seed."""
    args = ["generate", "--checkpoint", tiny_run, "--prefix", "我", "--length", 80]
    args += ["--num-samples", 6, "--seed", 9, "--format", "jsonl"]
    free = [json.loads(line)["text"] for line in invoke(*args).stdout.splitlines()]
    stopped = invoke(*args, "--stop", "分开", "--stop", "雨")
    assert stopped.exit_code == 0, stopped.output
    texts = [json.loads(line)["text"] for line in stopped.stdout.splitlines()]
    cuts = [min((t.find(s) for s in ("分开", "雨") if s in t), default=len(t)) for t in free]
    assert texts == [t[:cut] for t, cut in zip(free, cuts, strict=True)]
    assert any(cut < len(t) for t, cut in zip(free, cuts, strict=True))  # some did stop
    events: list[object] = []
    finished = threading.Event()

    def on_event(event: object) -> None:
        events.append(event)
        if isinstance(event, End):
            finished.set()

    scheduler = Scheduler({"m": model}).start()
    try:
        request = Request(("我",), 6, 80, SamplingConfig(), seed=9, stop=("分开", "雨"))
        scheduler.submit(Job("m", request, on_event=on_event))
        assert finished.wait(60)
    finally:
        scheduler.close()
    served = [""] * 6
    for event in events[:-1]:
        served = [a + b for a, b in zip(served, event.texts, strict=True)]  # type: ignore[attr-defined]
    assert ["我" + s for s in served] == texts  # (jsonl texts begin with the prefix)
