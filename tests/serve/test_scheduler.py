"""The continuous-batching scheduler without HTTP: jobs joining and leaving a shared batch
write exactly what ``generate`` writes for each of them alone, and leave when cancelled."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from charlstm.api import LanguageModel, load_model
from charlstm.fields import SettingError
from charlstm.generation.engine import Request
from charlstm.generation.settings import CacheConfig, DynamicConfig, SamplingConfig
from charlstm.ngram.mixture import NgramMixture
from charlstm.serve.jobs import Chars, End, Job, QueueFull
from charlstm.serve.scheduler import Scheduler

PREFIXES = ["分开", "我们说好", "窗外的风吹过", "不"]


class Collector:
    """Each job's texts (one per row) and its End, as the scheduler delivers them."""

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.scores: dict[int, list[list]] = {}
        self.ends: dict[int, End] = {}
        self.done = threading.Condition()

    def on(self, key: int):
        def on_event(event: Chars | End) -> None:
            with self.done:
                if isinstance(event, Chars):
                    rows = self.texts.setdefault(key, [""] * len(event.texts))
                    scores = self.scores.setdefault(key, [[] for _ in event.texts])
                    for row, text in enumerate(event.texts):
                        rows[row] += text
                        if event.scores is not None:
                            scores[row] += event.scores[row]
                else:
                    self.ends[key] = event
                self.done.notify_all()

        return on_event

    def wait(self, count: int, seconds: float = 120.0) -> None:
        with self.done:
            assert self.done.wait_for(lambda: len(self.ends) >= count, seconds), self.ends


@pytest.fixture(scope="module")
def model(tiny_run: Path) -> LanguageModel:
    return load_model(tiny_run)


@pytest.fixture(scope="module")
def mixed(model: LanguageModel, small_corpus: Path) -> LanguageModel:
    """The tiny model interpolated with a 3-gram, as a run trained with --ngram-mix is."""
    from charlstm.data.corpus import read_text

    text = read_text(small_corpus)
    return LanguageModel(
        model.model, model.vocab, model.checkpoint, NgramMixture(text, model.vocab, 3, 0.25)
    )


def make_job(
    model: str,
    prefixes: list[str],
    length: int,
    sampling: SamplingConfig,
    *,
    seed: int,
    num_samples: int = 1,
    stop: list[str] | None = None,
    timeout: float | None = None,
    on_event=None,
    **request,
) -> Job:
    """A job writing ``Request(prefixes, num_samples, length, sampling, seed, **request)``."""
    stops = tuple(stop or ())
    written = Request(tuple(prefixes), num_samples, length, sampling, seed, stop=stops, **request)
    return Job(model, written, timeout=timeout, on_event=on_event)


def random_job(rng: random.Random, key: int, collector: Collector, model: str = "m") -> Job:
    prefixes = [rng.choice(PREFIXES)] if rng.random() < 0.6 else rng.sample(PREFIXES, 3)
    sampling = SamplingConfig(
        temperature=rng.choice([0.7, 1.0, 1.3]),
        top_k=rng.choice([None, 5]),
        top_p=rng.choice([None, 0.9]),
        repetition_penalty=rng.choice([1.0, 2.0]),
    )
    return make_job(
        model,
        prefixes,
        rng.choice([0, 1, 7, 40, 90]),
        sampling,
        seed=rng.randrange(2**31),
        num_samples=rng.choice([1, 1, 2, 3]),
        stop_at=rng.choice([None, "开"]),
        lines=rng.choice([None, None, 1, 2]),
        top_logprobs=rng.choice([None, None, 2]),  # scores kept: the same characters
        on_event=collector.on(key),
    )


def reference(model: LanguageModel, job: Job) -> list[str]:
    texts = model.write(replace(job.request, top_logprobs=None))
    return [text for per_prefix in texts for text in per_prefix]


@pytest.mark.parametrize("which", ["model", "mixed"])
def test_jobs_sharing_a_batch_write_what_generate_writes_for_each_alone(request, which):
    model = request.getfixturevalue(which)
    rng = random.Random(7)
    collector = Collector()
    scheduler = Scheduler({"m": model}, max_streams=12).start()
    jobs = []
    try:
        for key in range(40):  # more rows than fit: jobs wait, join and leave as others end
            jobs.append(scheduler.submit(random_job(rng, key, collector)))
        collector.wait(len(jobs))
        assert scheduler.counts() == (0, 0, 0)
    finally:
        scheduler.close()
    for key, job in enumerate(jobs):
        expected = reference(model, job)
        assert collector.texts.get(key, [""] * job.rows) == expected, (key, job)
        assert len(collector.ends[key].reasons) == job.rows
        if job.top_logprobs is not None:  # one score per character written
            scores = collector.scores.get(key, [[]] * job.rows)
            assert [len(s) for s in scores] == [len(t) for t in expected]


def test_adapted_jobs_run_beside_the_batch_and_match_generate(model):
    collector = Collector()
    scheduler = Scheduler({"m": model}).start()
    sampling = SamplingConfig(temperature=0.9)
    jobs = [
        make_job("m", ["分开"], 60, sampling, seed=1, num_samples=2, on_event=collector.on(0)),
        make_job(
            "m",
            ["分开"],
            60,
            sampling,
            seed=1,
            cache=CacheConfig.for_generation(),
            on_event=collector.on(1),
        ),
        make_job(
            "m",
            ["我们"],
            60,
            sampling,
            seed=2,
            dynamic=DynamicConfig(segment=10),
            on_event=collector.on(2),
        ),
    ]
    try:
        for job in jobs:
            scheduler.submit(job)
        collector.wait(3)
    finally:
        scheduler.close()
    for key, job in enumerate(jobs):
        assert collector.texts[key] == reference(model, job)


def test_a_cancelled_job_ends_and_frees_its_rows(model):
    collector = Collector()
    scheduler = Scheduler({"m": model}, max_streams=2).start()
    try:
        long = scheduler.submit(
            make_job(
                "m",
                ["分开"],
                10**6,
                SamplingConfig(),
                seed=1,
                num_samples=2,
                on_event=collector.on(0),
            )
        )
        waiting = scheduler.submit(
            make_job("m", ["分开"], 10, SamplingConfig(), seed=2, on_event=collector.on(1))
        )
        with collector.done:
            collector.done.wait_for(lambda: 0 in collector.texts, 30)
        assert scheduler.counts() == (1, 2, 1)  # the long job holds both rows; one waits
        scheduler.cancel(long)
        collector.wait(2)
        assert collector.ends[0].reasons == ["cancelled", "cancelled"]
        assert collector.ends[1].reasons == ["length"]  # it got the rows once they were free
        assert len(collector.texts[1][0]) == 10
        assert scheduler.counts() == (0, 0, 0)
        assert waiting.ended
    finally:
        scheduler.close()


def test_a_full_queue_refuses_and_a_closed_scheduler_ends_every_job(model):
    collector = Collector()
    scheduler = Scheduler({"m": model}, max_streams=1, max_queue=1).start()
    job = make_job("m", ["分开"], 10**6, SamplingConfig(), seed=1, on_event=collector.on(0))
    scheduler.submit(job)
    with collector.done:
        collector.done.wait_for(lambda: 0 in collector.texts, 30)
    scheduler.submit(make_job("m", ["分开"], 5, SamplingConfig(), seed=1, on_event=collector.on(1)))
    with pytest.raises(QueueFull):
        scheduler.submit(make_job("m", ["分开"], 5, SamplingConfig(), seed=1))
    scheduler.close()
    assert collector.ends[0].reasons == ["shutdown"]
    assert collector.ends[1].reasons == ["shutdown"]


def test_stop_strings_end_a_row_before_them_and_are_never_written(model):
    collector = Collector()
    scheduler = Scheduler({"m": model}).start()
    plain = make_job("m", ["分开"], 200, SamplingConfig(), seed=5, on_event=collector.on(0))
    full = reference(model, plain)[0]
    stop = full[20:23]  # a string this seed writes (and maybe earlier too)
    try:
        scheduler.submit(
            make_job(
                "m", ["分开"], 200, SamplingConfig(), seed=5, stop=[stop], on_event=collector.on(1)
            )
        )
        collector.wait(1)
    finally:
        scheduler.close()
    assert collector.texts[1] == [full[: full.index(stop)]]
    assert collector.ends[1].reasons == ["stop"]


def test_bad_jobs_get_generates_messages_before_they_queue(model):
    scheduler = Scheduler({"m": model}, max_length=100)
    with pytest.raises(SettingError, match="top_p must be in"):
        scheduler.submit(make_job("m", ["分开"], 10, SamplingConfig(top_p=2.0), seed=1))
    with pytest.raises(Exception, match="not in the model's vocabulary: '☃'"):
        scheduler.submit(make_job("m", ["分☃"], 10, SamplingConfig(), seed=1))
    with pytest.raises(SettingError, match="length 500 is more than this server writes"):
        scheduler.submit(make_job("m", ["分开"], 500, SamplingConfig(), seed=1))
    assert scheduler.counts() == (0, 0, 0)


def test_the_handover_to_the_event_loop_keeps_order_and_holds_steps_between_events():
    """A job's first characters and its end go to the loop at once; the steps between wait
    for the interval (here longer than the test) or for the end, in order, none lost."""
    import asyncio

    from charlstm.serve.app import Handover

    async def main() -> list[Chars | End]:
        got: list[Chars | End] = []
        job = make_job("m", ["分开"], 3, SamplingConfig(), seed=1, on_event=got.append)
        job.id = 1
        handover = Handover(asyncio.get_running_loop(), interval=3600.0)
        handover([(job, Chars(["我"]))])
        for _ in range(3):
            await asyncio.sleep(0)
        handover([(job, Chars(["们"]))])
        handover([(job, Chars(["说"]))])
        for _ in range(3):
            await asyncio.sleep(0)
        assert [e.texts for e in got] == [["我"]]
        handover([(job, End(["length"]))])
        for _ in range(3):
            await asyncio.sleep(0)
        return got

    got = asyncio.run(main())
    assert [e.texts if isinstance(e, Chars) else e.reasons for e in got] == [
        ["我"],
        ["们"],
        ["说"],
        ["length"],
    ]
