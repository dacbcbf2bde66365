"""Load test of ``charlstm serve``: N concurrent streaming clients on loopback, against the
same batch written in-process by ``generate`` (what ``charlstm generate --num-samples N``
does) in the same run; then, with ``--soak``, a long mixed run that checks every answer.

For N in ``--clients`` it starts N streaming requests at once (each its own seed, the same
prompt and length) and measures time to first character (p50, p99), the gap between
characters (p50, p99), total characters per second, and the server's RSS before and after.
The reference is ``LanguageModel.generate_many([prompt], length, N)``, timed in this
process with the server's thread count, pinned to the server's cores while the server is
idle. The server runs in its own process (``taskset --server-cores``); this client is
pinned to ``--client-cores``.

``--soak K`` then sends K requests, ``--soak-concurrency`` at a time (:data:`SOAK_KINDS`):
completions streaming and not, with ``logprobs``, ``echo`` scoring a prompt
(``max_tokens`` 0) and ``best_of``; chat completions streaming and not; streams and poems
(a ``form``) cancelled after a moment; requests disconnected while they wait or run;
malformed bodies. It checks that every request that ran to its end wrote exactly
``generate``'s text for its seed (``best_of``: one of its samples; echo: the perplexity
``score_text`` gives), nothing was lost or mixed, every bad body got a 4xx, the server is
healthy at the end, and that its RSS grew less than 10 % (from after one request of each
kind: what the server allocates once is not growth).

``--poem-beside N`` measures instead what one poem (``--poem-form``, ``--poem-candidates``)
costs N running streams: each repeat streams them alone, then again with the poem sent
``--poem-delay`` s after they start; the p99 of their gaps that overlap the poem, with and
without it, and the poem's wall time beside them and alone (:func:`poem_beside`).

Example:
    python scripts/bench_serve.py --checkpoint /work/models/jaychou --length 200 \\
        --server-cores 0 --client-cores 1 --soak 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["分开", "我们说好", "窗外的", "天青色等烟雨", "床前明月光", "春"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cores(text: str | None) -> set[int] | None:
    return None if not text else {int(c) for c in text.split(",")}


class Server:
    def __init__(self, args: argparse.Namespace, max_streams: int) -> None:
        repo = args.server_repo or str(REPO)
        env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": str(args.threads)}
        command = [
            sys.executable, "-m", "charlstm", "serve", args.checkpoint, "--port", "0",
            "--max-streams", str(max_streams), "--max-queue", "4096",
            "--max-length", str(max(args.length, 2000)), "--device", args.device,
        ]  # fmt: skip
        if args.stream_interval is not None:
            command += ["--stream-interval", str(args.stream_interval)]
        if args.server_cores:
            command = ["taskset", "-c", args.server_cores, *command]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        line = self.process.stdout.readline()
        if not line.startswith("charlstm serve: "):
            raise SystemExit(f"the server did not start: {line}")
        self.url = line.split()[2]
        deadline = time.monotonic() + 300
        while httpx.get(f"{self.url}/health").status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become healthy")
            time.sleep(0.2)

    def rss(self) -> float:
        return rss_mib(self.process.pid)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=120)


async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """One streaming request: its text, time to first character, and per-character gaps."""
    start = time.perf_counter()
    first = None
    previous = None
    gaps: list[float] = []
    events: list[tuple[float, int]] = []  # (arrival, characters) of every event with text
    text = ""
    async with client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "text": None}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"status": 599, "text": text, "error": chunk["error"]["message"]}
            written = "".join(c["text"] for c in chunk["choices"])
            if not written:
                continue
            now = time.perf_counter()
            if first is None:
                first = now - start
            elif previous is not None:
                gaps.extend([(now - previous) / len(written)] * len(written))
            previous = now
            events.append((now, len(written)))
            text += written
    end = time.perf_counter()
    return {"status": 200, "text": text, "ttfc": first, "gaps": gaps, "events": events, "end": end}


async def concurrent_streams(url: str, bodies: list[dict]) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, b) for b in bodies))
    return results, time.perf_counter() - start


def reference(model, prompt: str, length: int, n: int, args) -> float:
    """Seconds ``generate`` takes for n samples of ``length`` characters, in this process."""
    from charlstm.generation.settings import SamplingConfig

    sampling = SamplingConfig(temperature=args.temperature)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.generate_many([prompt], length, n, sampling, seed=1)
        best = min(best, time.perf_counter() - start)
    return best


def table(args: argparse.Namespace) -> list[dict]:
    import torch

    from charlstm.api import load_model

    torch.set_num_threads(args.threads)
    clients = [int(n) for n in args.clients.split(",")]
    # the soak sends --soak-concurrency requests at a time, best_of 3 among them (3 rows
    # each), whatever --clients the table measured
    soak_rows = max(args.soak_concurrency, 3) if args.soak else 1
    server = Server(args, max(*clients, soak_rows))
    model = load_model(args.checkpoint, args.device)
    rows = []
    print(f"model {args.checkpoint}: {len(model.vocab)} characters, {model.describe()}")
    print(
        f"{'N':>3} {'TTFC p50':>9} {'p99':>7} {'gap p50':>8} {'p99':>7} {'served c/s':>10} "
        f"{'generate c/s':>12} {'ratio':>6} {'RSS MiB before':>14} {'after':>6}"
    )
    try:
        # warm up: the first requests build the server's step table and caches
        asyncio.run(concurrent_streams(server.url, [body(args, 0)] * 2))
        for n in clients:
            before = server.rss()
            bodies = [body(args, seed) for seed in range(n)]
            results, wall = asyncio.run(concurrent_streams(server.url, bodies))
            after = server.rss()
            bad = [r for r in results if r["status"] != 200]
            if bad:
                raise SystemExit(f"{len(bad)} of {n} streams failed: {bad[:2]}")
            chars = sum(len(r["text"]) for r in results)
            ttfc = [r["ttfc"] for r in results]
            gaps = [g for r in results for g in r["gaps"]]
            served = chars / wall
            own = os.sched_getaffinity(0)
            if cores(args.server_cores):
                os.sched_setaffinity(0, cores(args.server_cores))
            seconds = reference(model, args.prompt, args.length, n, args)
            os.sched_setaffinity(0, own)
            generated = n * args.length / seconds
            row = {
                "n": n,
                "ttfc_p50_ms": 1000 * percentile(ttfc, 50),
                "ttfc_p99_ms": 1000 * percentile(ttfc, 99),
                "gap_p50_ms": 1000 * percentile(gaps, 50),
                "gap_p99_ms": 1000 * percentile(gaps, 99),
                "served_cps": served,
                "generate_cps": generated,
                "ratio": served / generated,
                "rss_before_mib": before,
                "rss_after_mib": after,
            }
            rows.append(row)
            print(
                f"{n:>3} {row['ttfc_p50_ms']:>7.0f}ms {row['ttfc_p99_ms']:>5.0f}ms "
                f"{row['gap_p50_ms']:>6.1f}ms {row['gap_p99_ms']:>5.1f}ms {served:>10.0f} "
                f"{generated:>12.0f} {row['ratio']:>6.2f} {before:>14.0f} {after:>6.0f}",
                flush=True,
            )
        one = next((r for r in rows if r["n"] == 1), None)
        at32 = next((r for r in rows if r["n"] == 32), None)
        if one and at32:
            print(
                f"targets: 32 served / generate 32 = {at32['ratio']:.2f} (>= 0.8); "
                f"32 served / 1 served = {at32['served_cps'] / one['served_cps']:.1f} (>= 10); "
                f"1 served / generate 1 = {one['ratio']:.2f} (>= 0.8); "
                f"TTFC p99 at 32 = {at32['ttfc_p99_ms']:.0f} ms (<= 100)"
            )
        if args.soak:
            soak(args, server, model)
    finally:
        code = server.stop()
        print(f"server exit status after SIGTERM: {code}")
    return rows


def poem_body(args: argparse.Namespace, seed: int) -> dict:
    """The poem of ``--poem-beside``: ``--poem-form`` with ``--poem-candidates`` a line."""
    body = {
        "prompt": "",
        "form": args.poem_form,
        "candidates": args.poem_candidates,
        "seed": seed,
        "temperature": args.temperature,
    }
    if args.no_copy_filter:
        body["copy_filter"] = False
    return body


def gaps_in(results: list[dict], start: float, end: float) -> list[float]:
    """Per-character gaps of every stream whose interval between two events overlaps
    ``[start, end]`` (``time.perf_counter`` seconds)."""
    gaps = []
    for r in results:
        events = r["events"]
        for (before, _), (now, n) in zip(events, events[1:], strict=False):
            if before < end and now > start:
                gaps.extend([(now - before) / n] * n)
    return gaps


async def streams_and_poem(
    url: str, bodies: list[dict], poem: dict | None, delay: float
) -> tuple[float, list[dict], dict | None]:
    """``bodies`` streamed at once and, ``delay`` seconds after they start, one poem (not
    streamed); the start time, the streams' results, and the poem's (its start and end
    relative to the start)."""
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        streams = [asyncio.ensure_future(one_stream(client, url, b)) for b in bodies]
        written = None
        if poem is not None:
            await asyncio.sleep(delay)
            start = time.perf_counter()
            r = await client.post(f"{url}/v1/completions", json=poem)
            end = time.perf_counter()
            text = r.json()["choices"][0]["text"] if r.status_code == 200 else r.text
            written = {"status": r.status_code, "text": text, "start": start - t0, "end": end - t0}
        results = await asyncio.gather(*streams)
    return t0, results, written


def poem_beside(args: argparse.Namespace) -> list[dict]:
    """Issue 32's target: while one poem is written through the server, ``--poem-beside``
    running streams keep their pace. Each repeat streams them alone, then again (same
    seeds) with one poem sent ``--poem-delay`` s after they start; the gaps between their
    characters that overlap the poem's time (the same span after the start in the run
    without it) give p99 with and without the poem. Also the poem's wall time, beside the
    streams and alone."""
    n = args.poem_beside
    server = Server(args, max(64, n + args.poem_candidates))
    rows = []
    print(
        f"{n} streams of {args.length} characters (prompt {args.prompt!r}) beside one "
        f"{args.poem_form} with {args.poem_candidates} candidates; server {server.url} from "
        f"{args.server_repo or REPO}"
    )
    try:
        asyncio.run(concurrent_streams(server.url, [body(args, 0)] * 2))
        alone = []
        for i in range(args.poem_repeats + 1):  # the first one warms up the verse tables
            _, _, poem = asyncio.run(streams_and_poem(server.url, [], poem_body(args, i), 0))
            if poem["status"] != 200:
                raise SystemExit(f"the poem failed: {poem}")
            alone.append(poem["end"] - poem["start"])
        alone = alone[1:]
        print(f"poem alone: {' '.join(f'{1000 * s:.0f}' for s in alone)} ms; {poem['text']!r}")
        print(
            f"{'rep':>3} {'poem ms':>8} {'gap p99 with':>12} {'without':>8} {'ratio':>6} "
            f"{'max with':>9} {'without':>8} {'whole p99 with':>14} {'without':>8} {'gaps':>5}"
        )
        for rep in range(args.poem_repeats):
            bodies = [body(args, 100 * rep + i) for i in range(n)]
            t_plain, plain, _ = asyncio.run(streams_and_poem(server.url, bodies, None, 0))
            t_poem, beside, poem = asyncio.run(
                streams_and_poem(server.url, bodies, poem_body(args, rep), args.poem_delay)
            )
            bad = [r for r in plain + beside if r["status"] != 200]
            if bad or poem["status"] != 200:
                raise SystemExit(f"failed: {bad[:2]} {poem}")
            ends = min(r["end"] for r in beside) - t_poem
            if ends < poem["end"]:
                print(f"  warning: a stream ended {poem['end'] - ends:.2f} s before the poem")
            with_poem = gaps_in(beside, t_poem + poem["start"], t_poem + poem["end"])
            without = gaps_in(plain, t_plain + poem["start"], t_plain + poem["end"])
            row = {
                "rep": rep,
                "poem_ms": 1000 * (poem["end"] - poem["start"]),
                "gap_p99_with_ms": 1000 * percentile(with_poem, 99),
                "gap_p99_without_ms": 1000 * percentile(without, 99),
                "gap_p50_with_ms": 1000 * percentile(with_poem, 50),
                "gap_p50_without_ms": 1000 * percentile(without, 50),
                "gap_max_with_ms": 1000 * max(with_poem),
                "gap_max_without_ms": 1000 * max(without),
                "whole_p99_with_ms": 1000 * percentile([g for r in beside for g in r["gaps"]], 99),
                "whole_p99_without_ms": 1000
                * percentile([g for r in plain for g in r["gaps"]], 99),
                "gaps_during_poem": len(with_poem),
                "poem_alone_ms": 1000 * alone[rep],
            }
            row["ratio"] = row["gap_p99_with_ms"] / row["gap_p99_without_ms"]
            rows.append(row)
            print(
                f"{rep:>3} {row['poem_ms']:>8.0f} {row['gap_p99_with_ms']:>10.1f}ms "
                f"{row['gap_p99_without_ms']:>6.1f}ms {row['ratio']:>6.2f} "
                f"{row['gap_max_with_ms']:>7.0f}ms {row['gap_max_without_ms']:>6.0f}ms "
                f"{row['whole_p99_with_ms']:>12.1f}ms {row['whole_p99_without_ms']:>6.1f}ms "
                f"{len(with_poem):>5}",
                flush=True,
            )
        median = {k: percentile([r[k] for r in rows], 50) for k in rows[0] if k != "rep"}
        print(
            f"medians: poem {median['poem_ms']:.0f} ms beside {n} streams "
            f"({median['poem_alone_ms']:.0f} ms alone); gap p99 during the poem "
            f"{median['gap_p99_with_ms']:.1f} ms, without it {median['gap_p99_without_ms']:.1f} "
            f"ms: ratio {median['ratio']:.2f} (target <= 2); max gap "
            f"{median['gap_max_with_ms']:.0f} vs {median['gap_max_without_ms']:.0f} ms"
        )
        print(json.dumps({"poem_beside": rows}))
    finally:
        code = server.stop()
        print(f"server exit status after SIGTERM: {code}")
    return rows


def body(args: argparse.Namespace, seed: int, prompt: str | None = None) -> dict:
    return {
        "prompt": prompt or args.prompt,
        "max_tokens": args.length,
        "seed": seed,
        "temperature": args.temperature,
    }


#: The soak's kinds of request and their weights.
SOAK_KINDS = {
    "stream": 22,  # streamed completion, checked against generate
    "plain": 14,  # completion, checked
    "logprobs": 8,  # completion with logprobs 2 (streamed or not), text checked
    "echo": 5,  # max_tokens 0, echo, logprobs 0: the prompt's scores against score_text
    "best_of": 5,  # n 1 of best_of 3: one of generate's 3 samples
    "chat": 7,  # chat completion, checked
    "chat_stream": 7,  # streamed chat completion, checked
    "cancel": 8,  # a stream closed after a moment
    "poem_cancel": 5,  # a streamed 七言绝句 closed after a moment
    "disconnect": 9,  # a plain request whose client goes away
    "bad": 10,  # a malformed body: a 4xx
}
BAD_BODIES = [
    b'{"prompt": ',
    b'{"prompt": "\xe5\x88\x86", "max_tokens": -5}',
    b'{"prompt": "\xe5\x88\x86", "top_p": 7}',
    '{"prompt": "分☃"}'.encode(),
    b'{"prompt": "\xe5\x88\x86", "model": "nope"}',
    b'{"prompt": "\xe5\x88\x86", "max_tokens": "x"}',
]


async def chat_stream(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """A streamed chat completion: the deltas' text."""
    text = ""
    async with client.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}
    ) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "text": None}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"status": 599, "text": text, "error": chunk["error"]["message"]}
            text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
    return {"status": 200, "text": text}


async def soak_one(client: httpx.AsyncClient, url: str, item: dict) -> dict:
    """Send ``item`` as its kind asks; what came back (status, text, reply)."""
    kind, body = item["kind"], item["body"]
    if kind == "bad":
        r = await client.post(
            f"{url}/v1/completions",
            content=item["raw"],
            headers={"content-type": "application/json"},
        )
        return {"status": r.status_code, "reply": r.text}
    if kind == "chat_stream":
        return await chat_stream(client, url, body)
    if kind in ("stream", "logprobs") and body.get("stream"):
        return await one_stream(client, url, {k: v for k, v in body.items() if k != "stream"})
    if kind in ("cancel", "poem_cancel", "disconnect"):
        # a stream closed after a few events, or a plain request whose client goes away
        task = asyncio.ensure_future(
            one_stream(client, url, body)
            if kind != "disconnect"
            else client.post(f"{url}/v1/completions", json=body)
        )
        await asyncio.sleep(item["after"])
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, httpx.HTTPError):
            pass
        return {"status": "gone"}
    route = "chat/completions" if kind == "chat" else "completions"
    r = await client.post(f"{url}/v1/{route}", json=body)
    if r.status_code != 200:
        return {"status": r.status_code, "text": None, "reply": r.text}
    reply = r.json()
    choice = reply["choices"][0]
    text = choice["message"]["content"] if kind == "chat" else choice["text"]
    return {"status": 200, "text": text, "logprobs": choice.get("logprobs")}


async def soak_requests(url: str, plan: list[dict], concurrency: int) -> list[dict]:
    limits = httpx.Limits(max_connections=concurrency + 4)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def run(item: dict) -> dict:
            async with gate:
                return {**item, **(await soak_one(client, url, item))}

        return await asyncio.gather(*(run(item) for item in plan))


def soak_plan(args: argparse.Namespace, model) -> list[dict]:
    """``args.soak`` requests of every kind in :data:`SOAK_KINDS`, from ``args.seed``."""
    rng = random.Random(args.seed)
    prompts = [p for p in PROMPTS if not model.vocab.missing(p)]
    plan = []
    for i in range(args.soak):
        kind = rng.choices(list(SOAK_KINDS), list(SOAK_KINDS.values()))[0]
        prompt = rng.choice(prompts)
        body = {
            "max_tokens": rng.randint(10, 120),
            "seed": rng.randrange(2**31),
            "temperature": rng.choice([0.7, 1.0]),
            "top_p": rng.choice([None, 0.9]),
        }
        if kind in ("chat", "chat_stream"):
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if kind == "logprobs":
            body.update(logprobs=2, stream=rng.random() < 0.5)
        elif kind == "best_of":
            body.update(n=1, best_of=3)
        elif kind == "echo":
            long = [p for p in prompts if len(p) > 1]
            body = {"prompt": rng.choice(long), "max_tokens": 0, "echo": True, "logprobs": 0}
        elif kind == "poem_cancel":
            body = {"prompt": rng.choice(["春", ""]), "form": "七言绝句", "seed": body["seed"]}
        item = {"i": i, "kind": kind, "body": body}
        if kind == "bad":
            item["raw"] = rng.choice(BAD_BODIES)
        if kind in ("cancel", "poem_cancel", "disconnect"):
            item["after"] = rng.uniform(0.0, 0.3)
        plan.append(item)
    return plan


def soak_check(result: dict, model, expected) -> str | None:
    """What is wrong with one soak answer (None: nothing); ``expected(body, n)`` is
    ``generate``'s n samples for a body."""
    kind, body = result["kind"], result["body"]
    if kind == "bad":
        return None if 400 <= result["status"] < 500 else "not a 4xx"
    if kind in ("cancel", "poem_cancel", "disconnect"):
        return None
    if result["status"] != 200 or result["text"] is None:
        return "lost"
    text = result["text"]
    if kind == "echo":
        import math

        scores = result["logprobs"]["token_logprobs"]
        if text != body["prompt"] or scores[0] is not None or len(scores) != len(text):
            return "echo: not the prompt and its scores"
        served = math.exp(-sum(scores[1:]) / (len(scores) - 1))
        wanted = model.perplexity(body["prompt"])
        return None if abs(served / wanted - 1) < 1e-4 else f"echo: {served} != {wanted}"
    if kind == "best_of":
        return None if text in expected(body, 3) else "best_of: not one of generate's"
    if kind == "logprobs" and result.get("logprobs") is not None:
        if len(result["logprobs"]["token_logprobs"]) != len(text):
            return "logprobs: not one a character"
    return None if text == expected(body, 1)[0] else "differs from generate"


def soak(args: argparse.Namespace, server: Server, model) -> None:
    from charlstm.generation.settings import SamplingConfig

    plan = soak_plan(args, model)
    # one of each kind first, unchecked: what the server allocates once (the verse
    # decoder's tables, scoring) is not growth
    warm = list({item["kind"]: item for item in plan}.values())
    asyncio.run(soak_requests(server.url, warm, args.soak_concurrency))
    rss_before = server.rss()
    # the server's RSS sampled through the soak: growth that levels off (the allocator
    # settling at 32 requests of every kind) reads apart from a leak, which keeps climbing
    trace, done = [], threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(server, trace, done), daemon=True)
    sampler.start()
    start = time.perf_counter()
    results = asyncio.run(soak_requests(server.url, plan, args.soak_concurrency))
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    rss_after = server.rss()
    trace = trace or [rss_after]

    def expected(body: dict, n: int) -> list[str]:
        prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
        sampling = SamplingConfig(temperature=body["temperature"], top_p=body["top_p"])
        return model.generate_many([prompt], body["max_tokens"], n, sampling, body["seed"])[0]

    checked = 0
    wrong = []
    for result in results:
        problem = soak_check(result, model, expected)
        checked += result["kind"] not in ("bad", "cancel", "poem_cancel", "disconnect")
        if problem is not None:
            wrong.append((problem, result))
    metrics = httpx.get(f"{server.url}/metrics").text
    running = [line for line in metrics.splitlines() if line.startswith("charlstm_rows_running")]
    health = httpx.get(f"{server.url}/health").status_code
    kinds = {k: sum(1 for r in results if r["kind"] == k) for k in SOAK_KINDS}
    growth = 100 * (rss_after / rss_before - 1)
    print(
        f"soak: {len(results)} requests in {wall:.0f} s ({kinds}), {args.soak_concurrency} "
        f"at a time; answers checked (texts against generate, echo scores against "
        f"score_text): {checked}; lost, failed or differing: {len(wrong)}; RSS "
        f"{rss_before:.0f} -> {rss_after:.0f} MiB ({growth:+.1f} %); {running[0]}; "
        f"/health {health}; {'PASS' if not wrong and growth < 10 and health == 200 else 'FAIL'}"
    )
    quarters = [trace[min(len(trace) - 1, q * len(trace) // 4)] for q in (1, 2, 3)]
    print(
        f"soak: RSS at a quarter, half, three quarters, end of its time: "
        f"{', '.join(f'{mib:.0f}' for mib in [*quarters, rss_after])} MiB (peak {max(trace):.0f})"
    )
    for problem, result in wrong[:5]:
        print(f"  {problem}: {result}")


def sample_rss(server: Server, trace: list[float], done: threading.Event) -> None:
    while not done.wait(0.5):
        trace.append(server.rss())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clients", default="1,2,4,8,16,32,64")
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--prompt", default="分开")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--stream-interval", type=float, default=None, help="the server's (default: its own)"
    )
    parser.add_argument("--server-cores", default=None, help="e.g. 0 (taskset -c)")
    parser.add_argument("--client-cores", default=None, help="e.g. 1")
    parser.add_argument("--repeats", type=int, default=2, help="reference timings (best)")
    parser.add_argument("--soak", type=int, default=0, help="requests in the soak (0: none)")
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--server-repo", default=None, help="PYTHONPATH of the server (default: this checkout)"
    )
    parser.add_argument(
        "--poem-beside", type=int, default=0, help="streams beside one poem (0: the table)"
    )
    parser.add_argument("--poem-form", default="jueju7")
    parser.add_argument("--poem-candidates", type=int, default=4)
    parser.add_argument("--poem-delay", type=float, default=1.0, help="s after the streams")
    parser.add_argument("--poem-repeats", type=int, default=5)
    parser.add_argument("--no-copy-filter", action="store_true", help="the poem's")
    args = parser.parse_args()
    if args.client_cores:
        os.sched_setaffinity(0, cores(args.client_cores))
    if args.poem_beside:
        poem_beside(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
