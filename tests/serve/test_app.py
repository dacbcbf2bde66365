"""``charlstm serve`` as clients see it: a real server process on 127.0.0.1 (uvicorn),
real HTTP (httpx), real disconnects and a real SIGTERM. Starlette's TestClient would
buffer the streams and never deliver a disconnect."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, generated, invoke, one_line_error, raw_post, sse_events

LONG = 10**6  # characters: a request that runs until it is ended


@pytest.fixture(scope="module")
def server(tiny_run: Path):
    process = ServerProcess(tiny_run, "--max-streams", 4, "--max-queue", 2, "--max-length", LONG)
    yield process
    assert process.stop() == 0


def post(server: ServerProcess, body: object, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=120, **kwargs)


def stream(server: ServerProcess, body: dict) -> list[object]:
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response.iter_lines())


def test_health_models_and_metrics(server, tiny_run):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    models = httpx.get(f"{server.url}/v1/models").json()
    (model,) = models["data"]
    assert model["id"] == tiny_run.name and model["vocab_size"] > 10
    assert model["heldout_perplexity"] > 1 and "repetition_penalty" in model["options"]
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "charlstm_requests_running",
        "charlstm_requests_waiting",
        "charlstm_chars_generated_total",
        "charlstm_time_to_first_char_seconds_count",
        "charlstm_chars_per_second",
    ):
        assert f"\n{name} " in "\n" + text


def test_a_completion_and_a_stream_have_openais_shapes(server, tiny_run):
    body = {"prompt": ["分开", "我们"], "max_tokens": 30, "seed": 3, "n": 2, "temperature": 0.8}
    reply = post(server, body).json()
    assert reply["object"] == "text_completion" and reply["seed"] == 3
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    assert {c["finish_reason"] for c in reply["choices"]} == {"length"}
    assert reply["usage"]["completion_tokens"] == 4 * 30
    events = stream(server, body)
    assert events[-1] == "[DONE]"
    texts = ["", "", "", ""]
    for event in events[:-2]:
        assert event["object"] == "text_completion" and event["id"] == events[0]["id"]
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
            assert choice["finish_reason"] is None
    assert [c["finish_reason"] for c in events[-2]["choices"]] == ["length"] * 4
    assert texts == [c["text"] for c in reply["choices"]]  # same request, same seed
    cli = generated(
        tiny_run, "分开", 30, 3, "--prefix", "我们", "--num-samples", 2, "--temperature", 0.8
    )
    assert texts == cli


def test_seeded_requests_in_a_shared_batch_write_what_generate_writes(server, tiny_run):
    """Six requests at once (four rows step together, two wait and join as rows free up),
    streamed and not: each writes exactly its ``generate --seed`` text."""
    requests = [
        {
            "prompt": prompt,
            "max_tokens": length,
            "seed": seed,
            "top_p": 0.9,
            "stream": seed % 2 == 0,
        }
        for seed, (prompt, length) in enumerate(
            [
                ("分开", 80),
                ("我", 50),
                ("窗外的风", 120),
            ]
            * 2
        )
    ]

    def run(body: dict) -> str:
        if body["stream"]:
            events = stream(server, body)
            return "".join(c["text"] for e in events[:-1] for c in e["choices"])
        return post(server, body).json()["choices"][0]["text"]

    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(run, requests))
    for body, text in zip(requests, texts, strict=True):
        assert [text] == generated(
            tiny_run, body["prompt"], body["max_tokens"], body["seed"], "--top-p", 0.9
        )


def open_stream(
    server: ServerProcess, length: int = LONG
) -> tuple[httpx.Client, httpx.Response, object]:
    """A streaming request (by default one that runs until ended); returns once its first
    event came, with its lines (dropping that iterator would close the response: a
    disconnect)."""
    client = httpx.Client(timeout=60)
    body = {"prompt": "分开", "max_tokens": length, "seed": 1, "stream": True}
    request = client.build_request("POST", f"{server.url}/v1/completions", json=body)
    response = client.send(request, stream=True)
    lines = response.iter_lines()
    assert next(line for line in lines if line.startswith("data: "))
    return client, response, lines


def open_long_stream(server: ServerProcess) -> tuple[httpx.Client, httpx.Response, object]:
    return open_stream(server)


def waiting_request(server: ServerProcess) -> object:
    """A short request that will wait for a row, over a socket the test closes."""
    return raw_post(server.url, "/v1/completions", b'{"prompt": "\xe5\x88\x86", "max_tokens": 5}')


def test_a_disconnected_stream_and_a_disconnected_waiting_request_free_their_rows(server):
    held = [open_long_stream(server) for _ in range(4)]  # every row busy
    assert server.wait_metric("charlstm_rows_running", 4) == 4
    waiting = waiting_request(server)
    assert server.wait_metric("charlstm_requests_waiting", 1) == 1
    waiting.close()  # goes away while it waits
    assert server.wait_metric("charlstm_requests_waiting", 0) == 0
    for client, response, _ in held:
        response.close()
        client.close()
    assert server.wait_metric("charlstm_rows_running", 0) == 0
    assert server.wait_metric("charlstm_requests_running", 0) == 0
    text = httpx.get(f"{server.url}/metrics").text
    assert 'charlstm_requests_finished_total{reason="cancelled"} ' in text


def test_a_plain_request_whose_client_goes_away_mid_way_frees_its_row(server):
    """Not streamed: nothing is sent until the end, so only the closed socket tells; the
    row is freed at once and counted as cancelled, not left writing to nobody."""
    before = finished(server, "cancelled")
    body = json.dumps({"prompt": "分开", "max_tokens": LONG}).encode("utf-8")
    sock = raw_post(server.url, "/v1/completions", body)
    assert server.wait_metric("charlstm_rows_running", 1) == 1
    sock.close()  # the client goes away while its text is being written
    assert server.wait_metric("charlstm_rows_running", 0) == 0
    assert server.wait_metric("charlstm_requests_running", 0) == 0
    assert finished(server, "cancelled") == before + 1


def finished(server: ServerProcess, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    line = f'charlstm_requests_finished_total{{reason="{reason}"}} '
    return next((float(x.split()[1]) for x in text.splitlines() if x.startswith(line)), 0.0)


def test_the_cancelled_count_is_exact(server):
    """Three streams closed while they run and one request closed while it waits: four
    more cancelled, and requests that ended by themselves are not among them."""
    before = finished(server, "cancelled")
    done = post(server, {"prompt": "分开", "max_tokens": 5})
    assert done.status_code == 200
    held = [open_long_stream(server) for _ in range(4)]
    assert server.wait_metric("charlstm_rows_running", 4) == 4
    waiting = waiting_request(server)
    assert server.wait_metric("charlstm_requests_waiting", 1) == 1
    waiting.close()
    assert server.wait_metric("charlstm_requests_waiting", 0) == 0
    for client, response, _ in held[:3]:
        response.close()
        client.close()
    assert server.wait_metric("charlstm_rows_running", 1) == 1
    assert finished(server, "cancelled") == before + 4
    client, response, _ = held[3]
    response.close()
    client.close()
    assert server.wait_metric("charlstm_rows_running", 0) == 0
    assert finished(server, "cancelled") == before + 5


def test_a_full_queue_answers_503_with_retry_after(server):
    held = [open_long_stream(server) for _ in range(4)]
    clients = [waiting_request(server) for _ in range(2)]
    assert server.wait_metric("charlstm_requests_waiting", 2) == 2
    refused = post(server, {"prompt": "分开", "max_tokens": 5})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "waiting" in refused.json()["error"]["message"]
    for client in clients:
        client.close()
    for client, response, _ in held:
        response.close()
        client.close()
    assert server.wait_metric("charlstm_rows_running", 0) == 0
    assert server.wait_metric("charlstm_requests_waiting", 0) == 0


BAD = [
    (b'{"prompt": "\xe5\x88\x86', 400, "not valid JSON"),
    (b'{"prompt": "x", "max_tokens": "many"}', 400, "max_tokens: Input should be a valid integer"),
    (b'{"prompt": "\xe5\x88\x86", "max_tokens": -1}', 400, "max_tokens must be >= 0, not -1"),
    (
        b'{"prompt": "\xe5\x88\x86", "max_tokens": 10000000}',
        400,
        "max_tokens 10000000 is more than this server writes",
    ),
    (b'{"prompt": "\xe5\x88\x86", "top_p": 1.5}', 400, "top_p must be in (0, 1], not 1.5"),
    ('{"prompt": "分☃"}'.encode(), 400, "prefix has characters not in the model's vocabulary: '☃'"),
    (b'{"prompt": "\xe5\x88\x86", "model": "nope"}', 404, "unknown model 'nope'"),
    (
        b'{"prompt": "\xe5\x88\x86", "frequency_penalty": 3}',
        400,
        "frequency_penalty must be in [-2, 2], not 3",
    ),
    (b'{"prompt": "\xe5\x88\x86", "suffix": "x"}', 400, "insertion is not supported"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"prompt": "' + b"a" * 70000 + b'"}', 413, "over 65536 bytes"),
]


def test_while_the_models_load_health_and_requests_get_503_then_it_serves(tiny_run):
    """The models load in a thread after uvicorn listens: until they are in, ``/health``
    says "loading" and a completion is 503 with Retry-After (a load balancer waits, a
    client retries); then both answer. The load here is the real one, held until the test
    has asked, behind a real uvicorn on 127.0.0.1."""
    import socket

    import uvicorn

    from charlstm.api import load_model
    from charlstm.serve.app import create_app

    release = threading.Event()

    def load():
        release.wait(60)
        return {"tiny": load_model(tiny_run)}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(load, ["tiny"]), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        body = {"prompt": "分开", "max_tokens": 5, "seed": 1}
        refused = httpx.post(f"{url}/v1/completions", json=body)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "loading" in refused.json()["error"]["message"]
        release.set()
        while httpx.get(f"{url}/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        served = httpx.post(f"{url}/v1/completions", json=body)
        assert served.status_code == 200
        assert served.json()["choices"][0]["text"] == generated(tiny_run, "分开", 5, 1)[0]
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)


def test_each_bad_request_gets_one_message_and_the_running_stream_is_untouched(server, tiny_run):
    body = {"prompt": "分开", "max_tokens": 400, "seed": 11}
    result: list[str] = []
    running = threading.Thread(
        target=lambda: result.append(post(server, body).json()["choices"][0]["text"])
    )
    running.start()
    for payload, status, message in BAD:
        reply = httpx.post(
            f"{server.url}/v1/completions",
            content=payload,
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == status, (payload[:40], reply.text)
        error = reply.json()["error"]
        assert message in error["message"] and "\n" not in error["message"]
    running.join(120)
    assert result == generated(tiny_run, "分开", 400, 11)
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_the_page_is_served(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "AbortController" in page.text and "/v1/completions" in page.text


@pytest.mark.slow
def test_sigterm_lets_short_streams_finish_ends_long_ones_and_exits_0(tiny_run):
    process = ServerProcess(tiny_run, "--grace", 15, "--max-length", LONG)
    try:
        short_client, _, short = open_stream(process, 2000)  # finishes within the grace
        long_client, _, long = open_stream(process)  # never would
        process.process.send_signal(signal.SIGTERM)
        # while it drains it still answers: /health and new requests get 503
        health = httpx.get(f"{process.url}/health")
        for _ in range(200):  # (until the server has handled the signal)
            if health.status_code == 503:
                break
            time.sleep(0.05)
            health = httpx.get(f"{process.url}/health")
        assert health.status_code == 503 and health.json() == {"status": "shutting down"}
        refused = post(process, {"prompt": "分开", "max_tokens": 5})
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
        finished = sse_events(short)
        assert finished[-1] == "[DONE]"
        assert finished[-2]["choices"][0]["finish_reason"] == "length"
        ended = sse_events(long)
        assert ended[-1] == "[DONE]" and "shutting down" in ended[-2]["error"]["message"]
        assert process.process.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{process.url}/health")
        short_client.close()
        long_client.close()
    finally:
        process.process.kill()  # (a no-op once it has exited)


def test_a_request_over_its_time_gets_504(tiny_run):
    process = ServerProcess(tiny_run, "--request-timeout", 0.5, "--max-length", LONG)
    try:
        reply = post(process, {"prompt": "分开", "max_tokens": LONG})
        assert reply.status_code == 504 and "ran out of time" in reply.json()["error"]["message"]
        assert process.wait_metric("charlstm_rows_running", 0) == 0
    finally:
        assert process.stop() == 0


def test_a_missing_run_or_a_bad_model_option_is_one_line_before_anything_listens(tmp_path):
    one_line_error(invoke("serve", tmp_path / "missing"), "checkpoint not found")
    line = one_line_error(invoke("serve", "--model", "just-a-name"), "takes NAME=RUN")
    assert "--model" in line


def test_a_poem_in_a_form_is_what_generate_writes_and_its_mistakes_are_one_message(
    server, tiny_run
):
    """A verse request (the CLI's form options, by the same names) writes exactly the poem
    ``charlstm generate --form ... --seed`` writes, streamed or not; the combinations the
    CLI refuses get 400 with one message, and the server stays healthy."""
    # a poem's candidates are rows of the batch: 2 samples x 2 candidates fill its 4 rows
    form = {"line_lengths": [4, 4, 4, 4], "acrostic": "我分", "rhyme": "shisanzhe"}
    form["candidates"] = 2
    options = ["--line-lengths", "4,4,4,4", "--acrostic", "我分", "--rhyme", "shisanzhe"]
    options += ["--candidates", "2"]
    result = invoke(
        "generate", "--checkpoint", tiny_run, *options, "--num-samples", 2, "--seed", 3,
        "--format", "jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    poems = [json.loads(line)["text"] for line in result.stdout.splitlines()]
    assert all(len(p.split("\n")) == 5 and p[0] == "我" for p in poems), poems
    body = {"prompt": "", "n": 2, "seed": 3, **form}
    reply = post(server, body).json()
    assert [c["text"] for c in reply["choices"]] == poems
    events = stream(server, body)
    texts = ["", ""]
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == poems
    for bad, says in [
        ({"acrostic": "我分"}, "acrostic is a setting of a verse form; add form or line_lengths"),
        ({**form, "max_tokens": 10}, "max_tokens cannot be used with a verse form"),
        ({**form, "acrostic": "我分我分我"}, "has 5 characters, but 4,4,4,4 has 4 lines"),
        ({"form": "sonnet"}, "form"),
    ]:
        reply = post(server, {"prompt": "", **bad})
        assert reply.status_code == 400, reply.text
        message = reply.json()["error"]["message"]
        assert says in message and "\n" not in message, message
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_free_length_rhymed_lyrics_are_what_generate_writes(server, tiny_run):
    """A rhyme and no form over HTTP (the CLI's options, by the same names) writes exactly
    the lyrics ``charlstm generate --rhyme ... --seed`` writes, streamed or not."""
    lyric = {"rhyme": "shisanzhe", "min_line": 3, "max_line": 7, "lines": 4, "candidates": 2}
    lyric["max_tokens"] = 40  # what --length is, as for any text
    options = ["--rhyme", "shisanzhe", "--min-line", 3, "--max-line", 7, "--lines", 4]
    options += ["--length", 40]
    options += ["--candidates", 2]
    result = invoke(
        "generate", "--checkpoint", tiny_run, *options, "--num-samples", 2, "--seed", 3,
        "--format", "jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lyrics = [json.loads(line)["text"] for line in result.stdout.splitlines()]
    assert all(text.count("\n") == 4 for text in lyrics), lyrics
    body = {"prompt": "", "n": 2, "seed": 3, **lyric}
    reply = post(server, body).json()
    assert [c["text"] for c in reply["choices"]] == lyrics
    texts = ["", ""]
    for event in stream(server, body)[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == lyrics
    reply = post(server, {"prompt": "", "min_line": 3})
    assert reply.status_code == 400 and "add rhyme" in reply.json()["error"]["message"]
