"""``charlstm serve`` as OpenAI's clients meet it: the official ``openai`` client and
``langchain-openai`` against a real server process on 127.0.0.1, with every field of
OpenAI's completions request, chat, tokenize, log-probabilities and the API key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import openai
import pytest
import torch

from charlstm.api import load_model
from tests.helpers import ServerProcess, generated, invoke, save_known_model


@pytest.fixture(scope="module")
def server(tiny_run: Path):
    process = ServerProcess(tiny_run)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_completes_and_streams_what_generate_writes(client, tiny_run):
    name = tiny_run.name
    reply = client.completions.create(model=name, prompt="分开", max_tokens=40, seed=7)
    (choice,) = reply.choices
    assert [choice.text] == generated(tiny_run, "分开", 40, 7)
    assert choice.finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 40)
    assert reply.usage.total_tokens == 42
    chunks = list(
        client.completions.create(
            model=name,
            prompt="分开",
            max_tokens=40,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert all(c.usage is None for c in chunks[:-1])


def test_every_field_at_its_neutral_value_writes_the_same_seeded_text(client, tiny_run):
    """What client libraries send on every call (OpenAI's defaults) changes nothing."""
    plain = client.completions.create(model=tiny_run.name, prompt="我们", max_tokens=60, seed=3)
    neutral = client.completions.create(
        model=tiny_run.name,
        prompt="我们",
        max_tokens=60,
        seed=3,
        temperature=1,
        top_p=1,
        n=1,
        best_of=1,
        echo=False,
        frequency_penalty=0,
        presence_penalty=0,
        logit_bias={},
        logprobs=None,
        stop=None,
        suffix=None,
        user="someone",
    )
    scored = client.completions.create(
        model=tiny_run.name, prompt="我们", max_tokens=60, seed=3, logprobs=5
    )
    assert neutral.choices[0].text == plain.choices[0].text == scored.choices[0].text
    assert plain.choices[0].text == generated(tiny_run, "我们", 60, 3)[0]


def test_suffix_is_refused_and_bad_values_get_openais_error_shape(client, server):
    with pytest.raises(openai.BadRequestError, match="insertion is not supported"):
        client.completions.create(model=None, prompt="分开", suffix="的", max_tokens=5)
    for body, param, says in [
        ({"frequency_penalty": 2.5}, "frequency_penalty", "must be in [-2, 2], not 2.5"),
        ({"presence_penalty": -3}, "presence_penalty", "must be in [-2, 2], not -3"),
        ({"logit_bias": {"0": 101}}, "logit_bias", "values must be in [-100, 100]"),
        ({"logit_bias": {"100000": 1}}, "logit_bias", "outside the vocabulary"),
        ({"logprobs": 6}, "logprobs", "logprobs must be in [0, 5], not 6"),
        ({"n": 3, "best_of": 2}, "best_of", "best_of (2) must be at least n (3)"),
        ({"best_of": 2, "stream": True}, "best_of", "best_of cannot be used with stream"),
    ]:
        reply = httpx.post(
            f"{server.url}/v1/completions", json={"prompt": "分开", "max_tokens": 5, **body}
        )
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param and says in error["message"], error
        assert error["type"] == "invalid_request_error" and error["code"] == 400


def test_a_field_of_no_schema_is_ignored_and_logged_once(tiny_run):
    process = ServerProcess(tiny_run)
    try:
        client = openai.OpenAI(base_url=f"{process.url}/v1", api_key="x", max_retries=0)
        for _ in range(2):
            reply = client.completions.create(
                model=None, prompt="分开", max_tokens=3, extra_body={"guided_choice": ["a"]}
            )
            assert len(reply.choices[0].text) == 3
    finally:
        assert process.stop() == 0
    assert process.process.stderr.read().count("'guided_choice'") == 1


def test_logit_bias_and_the_penalties_follow_openais_formula(client, server, tiny_run):
    """The log-probability reported for each character is the one of OpenAI's formula
    computed here from the model: logits[j] - c[j] * frequency - (c[j] > 0) * presence
    + bias[j], c counting the characters generated so far."""
    model = load_model(tiny_run)
    (target,) = httpx.post(f"{server.url}/tokenize", json={"content": "雨"}).json()["tokens"]
    frequency, presence, bias = 0.7, 0.4, 2.5
    reply = client.completions.create(
        model=None,
        prompt="分开",
        max_tokens=20,
        seed=5,
        frequency_penalty=frequency,
        presence_penalty=presence,
        logit_bias={str(target): bias},
        logprobs=1,
    )
    text, logprobs = reply.choices[0].text, reply.choices[0].logprobs
    assert logprobs.tokens == list(text) and len(text) == 20
    ids = model.vocab.encode("分开" + text)
    with torch.no_grad():
        logits = model.model(ids[:-1].view(-1, 1))[0][:, 0]  # (T, V)
    counts = torch.zeros(len(model.vocab))
    for t, char in enumerate(text):
        row = logits[1 + t] - counts * frequency - (counts > 0).float() * presence
        row[target] += bias
        expected = torch.log_softmax(row, -1)[model.vocab.char_to_idx[char]].item()
        assert logprobs.token_logprobs[t] == pytest.approx(expected, abs=1e-4)
        counts[model.vocab.char_to_idx[char]] += 1
    forced = client.completions.create(
        model=None, prompt="分开", max_tokens=10, seed=5, logit_bias={str(target): 100}
    )
    assert forced.choices[0].text == "雨" * 10


def test_streamed_logprobs_equal_the_unstreamed_ones(client):
    body = {"model": None, "prompt": ["分开", "我"], "max_tokens": 30, "seed": 9, "n": 2}
    whole = client.completions.create(**body, logprobs=3, echo=True)
    parts = {i: {"text": "", "tokens": [], "lp": [], "top": [], "offset": []} for i in range(4)}
    for chunk in client.completions.create(**body, logprobs=3, echo=True, stream=True):
        for choice in chunk.choices:
            part = parts[choice.index]
            part["text"] += choice.text
            if choice.logprobs is not None:
                part["tokens"] += choice.logprobs.tokens
                part["lp"] += choice.logprobs.token_logprobs
                part["top"] += choice.logprobs.top_logprobs
                part["offset"] += choice.logprobs.text_offset
    for choice in whole.choices:
        part = parts[choice.index]
        assert part["text"] == choice.text and choice.text.startswith(
            ["分开", "我"][choice.index // 2]
        )
        assert part["tokens"] == choice.logprobs.tokens == list(choice.text)
        assert part["lp"] == choice.logprobs.token_logprobs
        assert part["top"] == choice.logprobs.top_logprobs
        assert part["offset"] == choice.logprobs.text_offset == list(range(len(choice.text)))
        assert choice.logprobs.token_logprobs[0] is None
        assert all(len(top) == 3 for top in choice.logprobs.top_logprobs[1:])


def test_echo_with_no_tokens_scores_a_text_as_charlstm_eval_does(client, tiny_run, tmp_path):
    """``echo`` + ``logprobs`` + ``max_tokens: 0``: exp(-mean(token_logprobs[1:])) is the
    perplexity ``charlstm eval`` and ``score_text`` give the same text (each character
    predicted from those before it, the first one from nothing: it has none)."""
    text = "我们说好不分开\n分开以后的雨天"
    reply = client.completions.create(model=None, prompt=text, max_tokens=0, echo=True, logprobs=0)
    (choice,) = reply.choices
    assert choice.text == text and reply.usage.completion_tokens == 0
    scores = choice.logprobs.token_logprobs
    assert scores[0] is None and len(scores) == len(text)
    served = math.exp(-sum(scores[1:]) / (len(text) - 1))
    assert served == pytest.approx(load_model(tiny_run).perplexity(text), rel=1e-5)
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    result = invoke("eval", path, "--checkpoint", tiny_run, "--json")
    assert result.exit_code == 0, result.output
    assert served == pytest.approx(json.loads(result.stdout)["perplexity"], rel=1e-5)


def test_best_of_returns_the_best_scoring_of_its_samples(client):
    body = {"model": None, "prompt": "分开", "max_tokens": 25, "seed": 13}
    samples = client.completions.create(**body, n=4, logprobs=0).choices
    means = [sum(c.logprobs.token_logprobs) / 25 for c in samples]
    best = client.completions.create(**body, best_of=4, logprobs=0)
    (choice,) = best.choices
    assert choice.text == samples[means.index(max(means))].text
    assert best.usage.completion_tokens == 4 * 25  # every sample was written
    two = client.completions.create(**body, n=2, best_of=4).choices
    ranked = sorted(range(4), key=lambda i: -means[i])[:2]
    assert [c.text for c in two] == [samples[i].text for i in ranked]


def test_token_arrays_tokenize_and_detokenize(client, server):
    tokens = httpx.post(f"{server.url}/tokenize", json={"content": "分开"}).json()["tokens"]
    assert len(tokens) == 2
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": tokens}).json()
    assert back == {"content": "分开"}
    as_ids = client.completions.create(model=None, prompt=tokens, max_tokens=20, seed=2)
    as_text = client.completions.create(model=None, prompt="分开", max_tokens=20, seed=2)
    assert as_ids.choices[0].text == as_text.choices[0].text
    refused = httpx.post(f"{server.url}/tokenize", json={"content": "分☃"})
    assert refused.status_code == 400 and "'☃'" in refused.json()["error"]["message"]
    refused = httpx.post(f"{server.url}/detokenize", json={"tokens": [10**6]})
    assert refused.status_code == 400 and "outside the vocabulary" in refused.text


def test_chat_continues_the_last_user_message_streamed_or_not(client, tiny_run):
    messages = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "窗外"},
        {"role": "assistant", "content": "ignored too"},
        {"role": "user", "content": "分开"},
    ]
    reply = client.chat.completions.create(
        model=tiny_run.name, messages=messages, max_tokens=30, seed=4
    )
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert [choice.message.content] == generated(tiny_run, "分开", 30, 4)
    assert reply.usage.completion_tokens == 30 and reply.object == "chat.completion"
    chunks = list(
        client.chat.completions.create(
            model=tiny_run.name,
            messages=messages,
            max_completion_tokens=30,
            seed=4,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=2,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content and chunks[-1].usage.total_tokens == 32
    content = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert "".join(e.token for e in content) == text
    assert all(len(e.top_logprobs) == 2 for e in content)
    poem = client.chat.completions.create(
        model=None,
        messages=[{"role": "user", "content": ""}],
        seed=3,
        extra_body={"line_lengths": [4, 4, 4, 4], "acrostic": "我分"},
    )
    lines = poem.choices[0].message.content.split("\n")
    assert [len(line) for line in lines[:4]] == [4, 4, 4, 4] and lines[1][0] == "分"
    with pytest.raises(openai.BadRequestError, match="tools is not supported"):
        client.chat.completions.create(
            model=None,
            messages=messages,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )


def test_langchain_openai_llm_and_chat_with_their_defaults(server, tiny_run):
    from langchain_openai import ChatOpenAI, OpenAI

    options = {"base_url": f"{server.url}/v1", "api_key": "unused", "max_retries": 0}
    llm = OpenAI(model=tiny_run.name, max_tokens=20, seed=1, **options)
    text = llm.invoke("分开")
    assert len(text) == 20
    streamed = "".join(llm.stream("分开"))
    assert streamed == text  # same seed, same defaults (temperature 0.7, top_p 1...)
    chat = ChatOpenAI(model=tiny_run.name, max_tokens=20, seed=1, **options)
    assert len(chat.invoke("分开").content) == 20  # its defaults (temperature: the server's)
    warm = ChatOpenAI(model=tiny_run.name, max_tokens=20, seed=1, temperature=0.7, **options)
    assert warm.invoke([("system", "ignored"), ("human", "分开")]).content == text


@pytest.fixture(scope="module")
def keyed(tiny_run: Path):
    process = ServerProcess(tiny_run, "--api-key", "s3cret")
    yield process
    assert process.stop() == 0


def test_with_an_api_key_every_v1_route_needs_it_and_health_stays_open(keyed):
    body = {"prompt": "分开", "max_tokens": 3}
    assert httpx.get(f"{keyed.url}/health").status_code == 200
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}]:
        for method, path, payload in [
            ("POST", "/v1/completions", body),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "分"}]}),
            ("GET", "/v1/models", None),
            ("POST", "/tokenize", {"content": "分"}),
        ]:
            reply = httpx.request(method, keyed.url + path, json=payload, headers=headers)
            assert reply.status_code == 401, (path, headers, reply.text)
            assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    right = {"Authorization": "Bearer s3cret"}
    assert httpx.post(f"{keyed.url}/v1/completions", json=body, headers=right).status_code == 200
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="s3cret", max_retries=0)
    assert (
        len(client.completions.create(model=None, prompt="分开", max_tokens=4).choices[0].text) == 4
    )
    wrong = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=None, prompt="分开", max_tokens=4)


def test_the_key_from_the_environment_and_the_warning_without_one(tiny_run, monkeypatch):
    monkeypatch.setenv("CHARLSTM_API_KEY", "from-env")
    process = ServerProcess(tiny_run)
    try:
        url = f"{process.url}/v1/models"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer from-env"}).status_code == 200
    finally:
        assert process.stop() == 0
    monkeypatch.delenv("CHARLSTM_API_KEY")
    # a documentation address (RFC 5737): the warning comes before the bind, which fails
    result = invoke("serve", tiny_run, "--host", "192.0.2.1", "--port", "0")
    warning, error = result.stderr.strip().splitlines()
    assert warning.startswith("warning: listening on 192.0.2.1 without --api-key")
    assert error.startswith("error: cannot listen on 192.0.2.1")


def test_two_models_served_at_once_route_by_model(tiny_run, tmp_path):
    """Requests to two models share the server; each writes its own model's text (the
    seeded one ``generate`` writes with that model), and an unknown one is a 404."""
    known = save_known_model(tmp_path / "known.pt", {"甲": 0.5, "乙": 0.3, "丙": 0.2})
    process = ServerProcess(tiny_run, "--model", f"known={known}")
    try:
        client = openai.OpenAI(base_url=f"{process.url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == [tiny_run.name, "known"]
        for name, run, prompt in [(tiny_run.name, tiny_run, "分开"), ("known", known, "甲")]:
            reply = client.completions.create(model=name, prompt=prompt, max_tokens=30, seed=8)
            assert [reply.choices[0].text] == generated(run, prompt, 30, 8)
            assert reply.model == name
        chat = client.chat.completions.create(
            model="known", messages=[{"role": "user", "content": "乙"}], max_tokens=10
        )
        assert set(chat.choices[0].message.content) <= set("甲乙丙")
        with pytest.raises(openai.NotFoundError, match="unknown model 'nope'"):
            client.completions.create(model="nope", prompt="分开", max_tokens=3)
    finally:
        assert process.stop() == 0


def test_logprobs_stay_with_their_characters_when_a_stop_string_cuts_the_text(client):
    """Text held back while it may begin a stop string keeps its scores with it: a row
    cut by a stop string has the scores of the same row written without it, up to the cut,
    streamed or not."""
    body = {"model": None, "prompt": "分开", "max_tokens": 60, "seed": 21, "logprobs": 2}
    full = client.completions.create(**body).choices[0]
    stop = full.text[30:32]
    cut = full.text.index(stop)
    reply = client.completions.create(**body, stop=[stop, "☃☃☃"]).choices[0]
    assert reply.text == full.text[:cut] and reply.finish_reason == "stop"
    assert reply.logprobs.tokens == full.logprobs.tokens[:cut]
    assert reply.logprobs.token_logprobs == full.logprobs.token_logprobs[:cut]
    assert reply.logprobs.top_logprobs == full.logprobs.top_logprobs[:cut]
    tokens, offsets = [], []
    for chunk in client.completions.create(**body, stop=[stop, "☃☃☃"], stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens
                offsets += choice.logprobs.text_offset
    assert tokens == reply.logprobs.tokens and offsets == list(range(cut))
