"""Tests for together_lite, against a real HTTP server on 127.0.0.1.

Run with ``python -m pytest -q``. The server plays scripted responses and
records every request; nothing here touches the internet.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import queue
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

import together_lite as tl

# -- Fixtures and helpers -----------------------------------------------------

CHAT_RESPONSE = {
    "id": "chat-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "prompt": [],
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}

COMPLETION_RESPONSE = {
    "id": "cmpl-1",
    "object": "text.completion",
    "created": 1700000000,
    "model": "m",
    "prompt": [],
    "choices": [{"index": 0, "text": " return n", "finish_reason": "length", "logprobs": None}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
}


class Request:
    """One request the server received."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Reply:
    """A scripted response: status, headers and body pieces written with a flush between them."""

    def __init__(
        self,
        status: int = 200,
        json_body: Any = None,
        *,
        body: bytes | None = None,
        chunks: list[bytes] | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        pause: float = 0.0,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.headers = dict(headers or {})
        self.delay = delay
        self.pause = pause
        if chunks is not None:
            self.chunks: list[bytes] | None = chunks
            self.body = b""
            self.headers.setdefault("Content-Type", content_type or "text/event-stream")
        else:
            self.chunks = None
            self.body = body if body is not None else json.dumps(json_body).encode() if json_body is not None else b""
            if json_body is not None or content_type:
                self.headers.setdefault("Content-Type", content_type or "application/json")


def sse(*events: Any, done: bool = True) -> list[bytes]:
    """Stream pieces: one ``data:`` event per item (dicts become JSON), then ``[DONE]``."""
    pieces = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n".encode() for e in events]
    if done:
        pieces.append(b"data: [DONE]\n\n")
    return pieces


Action = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.requests.append(
            Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        self.server.connections.add(self.client_address)
        try:
            action = self.server.script.get_nowait()
        except queue.Empty:
            action = self.server.default
        if callable(action):
            action(self)
        else:
            self.play(action)

    do_GET = do_POST

    def play(self, reply: Reply) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunks is None:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in reply.chunks:
            if piece:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            if reply.pause:
                time.sleep(reply.pause)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of new connections must not be refused

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[Request] = []
        self.connections: set[Any] = set()
        self.script: queue.Queue[Any] = queue.Queue()
        self.default: Any = Reply(200, CHAT_RESPONSE)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-response is what many tests do on purpose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reply(self, *replies: Any) -> None:
        for reply in replies:
            self.script.put(reply)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.startswith("TOGETHER_") or name.startswith("SSL_CERT"):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def client(server: Server) -> Iterator[tl.Together]:
    with tl.Together(api_key="test-key", base_url=server.url, max_retries=0, timeout=5) as c:
        yield c


def make_client(server: Server, **options: Any) -> tl.Together:
    options.setdefault("api_key", "test-key")
    options.setdefault("timeout", 5)
    return tl.Together(base_url=server.url, **options)


def chat(c: tl.Together, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "m")
    kwargs.setdefault("messages", [{"role": "user", "content": "hi"}])
    return c.chat.completions.create(**kwargs)


def raw_reply(data: bytes, *, close: bool = True) -> Action:
    """An action writing raw bytes to the socket, then (by default) closing it."""

    def act(handler: Handler) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        if close:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)

    return act


def hang_up(handler: Handler) -> None:
    """Close the connection without a response."""
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


# -- Smoke --------------------------------------------------------------------


def test_chat_round_trip(server: Server, client: tl.Together) -> None:
    response = chat(client, max_tokens=5)
    assert response.choices[0].message.content == "Hello there."
    assert response.usage.total_tokens == 8
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.json == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert request.headers["authorization"] == "Bearer test-key"


def chunk(content: str | None = None, *, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **extra,
    }


def test_stream_smoke(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"))))
    stream = chat(client, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "Hello"
    assert server.requests[0].json["stream"] is True
    chat(client)
    assert len(server.connections) == 1


def test_async_smoke(server: Server) -> None:
    async def main() -> list[str]:
        async with tl.AsyncTogether(api_key="k", base_url=server.url) as aclient:
            results = await asyncio.gather(*(chat(aclient) for _ in range(5)))
            server.reply(Reply(chunks=sse(chunk("a"), chunk("b", finish="stop"))))
            stream = await chat(aclient, stream=True)
            parts = [c.choices[0].delta.content async for c in stream]
            return [r.choices[0].message.content for r in results] + parts

    assert asyncio.run(main()) == ["Hello there."] * 5 + ["a", "b"]
