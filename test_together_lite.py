"""Tests for together_lite, against real servers on 127.0.0.1.

Run with ``python -m pytest -q``. Nothing here touches the internet: one scripted HTTP server,
started once per session, plays each test's responses and records its requests; a raw-socket
server does what an HTTP server cannot (resets, stalls, HTTP/1.0, malformed bytes).

The sections follow together_lite.py: fixtures and helpers; errors; result types; requests;
server-sent events; streams; transport; retries; clients; async; command line; logging;
multimodal helpers; security, leaks and soak. Whatever reaches into the module's private
names goes through the helpers of "Fixtures: internals", so a rename there is one edit here.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import contextlib
import contextvars
import copy
import email.utils
import functools
import gc
import gzip
import http.client
import importlib.util
import io
import json
import logging
import os
import pathlib
import pickle
import queue
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import types
import urllib.parse
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

import together_lite as tl

# -- Fixtures and helpers -----------------------------------------------------


# -- Fixtures: responses ------------------------------------------------------

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


def chat_response(content: str = "Hello there.", **choice: Any) -> dict[str, Any]:
    """A copy of CHAT_RESPONSE with this content, and these keys replaced in its first choice."""
    response = copy.deepcopy(CHAT_RESPONSE)
    response["choices"][0]["message"]["content"] = content
    response["choices"][0].update(choice)
    return response


def completion_response(*texts: str, finish_reason: str = "length") -> dict[str, Any]:
    """A copy of COMPLETION_RESPONSE with one choice per text (or the default one)."""
    response = copy.deepcopy(COMPLETION_RESPONSE)
    if texts:
        response["choices"] = [
            {"index": i, "text": text, "finish_reason": finish_reason, "logprobs": None} for i, text in enumerate(texts)
        ]
    return response


def chat_json(content: str = "Hello there.") -> bytes:
    """chat_response(content) as the bytes of a body."""
    return json.dumps(chat_response(content)).encode()


def error_body(message: str = "boom") -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def error_reply(status: int, message: str, **headers: str) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "invalid_request_error"}}, headers=headers)


def parsed_reply(content: str | None, finish: str = "stop", **message: Any) -> Reply:
    body = json.loads(json.dumps(CHAT_RESPONSE))
    body["choices"][0]["message"].update(content=content, **message)
    body["choices"][0]["finish_reason"] = finish
    return Reply(200, body)


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


def delta_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat chunk with an arbitrary delta."""
    body = chunk(finish=finish, **extra)
    body["choices"][0]["delta"] = delta
    return body


def text_chunk(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A text completion chunk as Together sends it (choices[].text plus token)."""
    return {
        "id": "cmpl-1",
        "object": "completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None, "seed": None}],
        "token": {"id": 7, "text": text, "logprob": -0.25, "special": False},
        **extra,
    }


def sse(*events: Any, done: bool = True) -> list[bytes]:
    """Stream pieces: one ``data:`` event per item (dicts become JSON), then ``[DONE]``."""
    pieces = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n".encode() for e in events]
    if done:
        pieces.append(b"data: [DONE]\n\n")
    return pieces


def data_event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def stream_bytes(*contents: str) -> bytes:
    """A complete chat stream: one chunk per content, a finish chunk and [DONE]."""
    return b"".join(sse(*(chunk(c) for c in contents), chunk(finish="stop")))


def stream_reply(*texts: str) -> Reply:
    """A chat stream: one chunk per text, a finish chunk, then [DONE]."""
    return Reply(chunks=sse(*(chunk(text) for text in texts), chunk(finish="stop")))


def chunked(*pieces: bytes) -> bytes:
    """Pieces in HTTP chunked framing (empty pieces left out; no final empty chunk)."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece)


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def http_message(
    body: bytes = b"",
    *,
    status: str = "200 OK",
    content_type: str = "application/json",
    version: str = "HTTP/1.1",
    length: int | None = None,
    extra: str = "",
) -> bytes:
    """A raw response head (with Content-Length, unless ``length`` is -1) followed by ``body``."""
    head = f"{version} {status}\r\nContent-Type: {content_type}\r\n{extra}"
    if length != -1:
        head += f"Content-Length: {len(body) if length is None else length}\r\n"
    return head.encode() + b"\r\n" + body


def http_answer(content: str) -> bytes:
    return http_message(chat_json(content))


def http_stream(content: str) -> bytes:
    head = http_message(length=-1, content_type="text/event-stream", extra="Transfer-Encoding: chunked\r\n")
    return head + chunked(stream_bytes(content)) + b"0\r\n\r\n"


def gzip_members(data: bytes, members: int = 1) -> bytes:
    cut = len(data) // members + 1
    return b"".join(gzip.compress(data[i : i + cut]) for i in range(0, len(data), cut))


# -- Fixtures: the loopback HTTP server ---------------------------------------
#
# One ThreadingHTTPServer on 127.0.0.1 serves the whole session (a second one plays another
# origin, a third speaks TLS). Each test's ``server`` fixture resets it: the script of replies,
# the recorded requests, the connections seen and counted and the default reply are the
# test's own. Connections accepted before the reset (a previous test's) are not counted.


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


Action = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    """Records each request, then plays the next scripted reply or action (or the default one).

    ``self.body`` is the request's body and ``self.received`` the recorded Request, so that
    an action can answer from what was asked.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: Server
    body = b""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length)
        self.received = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.body)
        action = self.server.next_action(self.received, self.client_address)
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
    """The scripted server: ``reply()`` queues replies or actions; ``requests`` records what came.

    It counts connections accepted and closed (after the client's EOF or its own hang-up), and
    over TLS (``context``) the handshakes; ``wait_for(predicate)`` waits on those counts.
    """

    daemon_threads = True
    block_on_close = False  # server_close() must not wait for a previous test's idle keep-alives
    request_queue_size = 128  # bursts of new connections must not be refused

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.context = context
        self.condition = threading.Condition()
        self.generation = 0
        self.open: dict[int, int] = {}  # id(socket) -> the generation that accepted it
        self.reset()

    def reset(self, default: Any = None) -> None:
        """Forget the previous test: script, requests, connections, counts and default reply."""
        with self.condition:
            self.generation += 1
            self.script: queue.Queue[Any] = queue.Queue()
            self.requests: list[Request] = []
            self.connections: set[Any] = set()
            self.default: Any = Reply(200, CHAT_RESPONSE) if default is None else default
            self.accepted = 0
            self.closed = 0
            self.handshakes = 0
            self.failed_handshakes = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.port}/v1"

    def reply(self, *replies: Any) -> None:
        for reply in replies:
            self.script.put(reply)

    def next_action(self, request: Request, client_address: Any) -> Any:
        with self.condition:
            self.requests.append(request)
            self.connections.add(client_address)
            self.condition.notify_all()
        try:
            return self.script.get_nowait()
        except queue.Empty:
            return self.default

    def wait_for(self, predicate: Callable[[Server], bool], timeout: float = 2.0) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked whenever a request comes or a connection opens or closes)."""
        with self.condition:
            return self.condition.wait_for(lambda: predicate(self), timeout)

    def get_request(self) -> Any:
        sock, address = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.condition:
            self.open[id(sock)] = self.generation
            self.accepted += 1
            self.condition.notify_all()
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.context is not None:  # the handshake runs in the handler's thread, and is counted
            request.settimeout(2)
            try:
                request.do_handshake()
            except OSError:
                with self.condition:
                    self.failed_handshakes += 1
                return
            request.settimeout(None)
            with self.condition:
                self.handshakes += 1
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self.condition:
            if self.open.pop(id(request), None) == self.generation:
                self.closed += 1
            self.condition.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-response is what many tests do on purpose


@contextlib.contextmanager
def serving(httpd: Any) -> Iterator[Any]:
    """Run a server (Server or Proxy) on a thread until the block ends."""
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith(("_proxy", "_ca_bundle")) or name.startswith(("TOGETHER_", "SSL_CERT")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def session_server() -> Iterator[Server]:
    with serving(Server()) as httpd:
        yield httpd


@pytest.fixture(scope="session")
def session_other_server() -> Iterator[Server]:
    with serving(Server()) as httpd:
        yield httpd


@pytest.fixture
def server(session_server: Server) -> Server:
    """The loopback server, this test's own: it answers CHAT_RESPONSE unless scripted."""
    session_server.reset()
    return session_server


@pytest.fixture
def echo_server(server: Server) -> Server:
    """The loopback server answering each chat with its own last message (``echo``)."""
    server.default = echo
    return server


@pytest.fixture
def other_server(session_other_server: Server) -> Server:
    """A second origin: the same kind of server on another port, echoing."""
    session_other_server.reset(default=echo)
    return session_other_server


@pytest.fixture
def client(server: Server) -> Iterator[tl.Together]:
    with make_client(server) as c:
        yield c


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


def abort_connection(handler: Handler) -> None:
    """Abort the connection (RST) without a response."""
    handler.close_connection = True
    abort(handler.connection)


def request_of(handler: Handler) -> Request:
    """The request this handler is answering."""
    return handler.received


def answer(handler: Handler, text: str) -> None:
    """Reply with a chat or text completion (whichever was asked for) whose text is ``text``."""
    if "prompt" in request_of(handler).json:
        handler.play(Reply(200, completion_response(text)))
    else:
        handler.play(Reply(200, chat_response(text)))


def echo_body(handler: Handler) -> tuple[bytes, str]:
    """The echo of a chat request as one body: (bytes, content type); a stream when it asked for one."""
    request = json.loads(handler.body)
    marker = request["messages"][0]["content"]
    if request.get("stream"):
        return b"".join(sse(chunk(marker[:2]), chunk(marker[2:], finish="stop"))), "text/event-stream"
    return json.dumps(chat_response(marker)).encode(), "application/json"


def echo(handler: Handler) -> None:
    """Answer with messages[0].content as the content (kept alive; a chunked stream if asked)."""
    request = json.loads(handler.body)
    marker = request["messages"][0]["content"]
    if request.get("stream"):
        handler.play(Reply(chunks=sse(chunk(marker[:2]), chunk(marker[2:], finish="stop"))))
    else:
        handler.play(Reply(200, chat_response(marker)))


def echo_re(handler: Handler) -> None:
    """Answer ``re: <prompt>`` (or ``re: <last message>``), so every result names its own request."""
    body = request_of(handler).json
    asked = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
    answer(handler, f"re: {asked}")


def start_stream(handler: Handler, *events: Any) -> None:
    """Send stream headers (chunked) and these events, leaving the body open."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for piece in sse(*events, done=False):
        handler.wfile.write(chunked(piece))
    handler.wfile.flush()


def write_piece(handler: Handler, piece: bytes) -> None:
    handler.wfile.write(chunked(piece))
    handler.wfile.flush()


def wait_for_hangup(handler: Handler, seconds: float) -> bool:
    """Block until the client closes the connection (True) or ``seconds`` pass (False)."""
    sock = handler.connection
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        readable, _, _ = select.select([sock], [], [], min(remaining, 0.05))
        if not readable:
            continue
        try:
            if not sock.recv(1, socket.MSG_PEEK):
                return True
        except OSError:
            return True
        time.sleep(0.01)  # the client sent something else: keep waiting for the close


def stall(seconds: float, hung_up: threading.Event | None = None) -> Action:
    """An action that answers (an echo) only after ``seconds``; it gives up as soon as the client hangs up."""

    def act(handler: Handler) -> None:
        if wait_for_hangup(handler, seconds):
            handler.close_connection = True
            if hung_up is not None:
                hung_up.set()
            return
        with contextlib.suppress(OSError):
            echo_re(handler)

    return act


def slow_stream(hung_up: threading.Event, seconds: float = 2.0) -> Action:
    """A stream that sends one chunk ("Hel"), then stalls ``seconds`` unless the client hangs up first."""

    def act(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(chunked(sse(chunk("Hel"), done=False)[0]))
        handler.wfile.flush()
        if wait_for_hangup(handler, seconds):
            handler.close_connection = True
            hung_up.set()
            return
        with contextlib.suppress(OSError):
            for piece in sse(chunk(finish="stop")):
                handler.wfile.write(chunked(piece))
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()

    return act


def capture(reply: Reply, seen: list[Any]) -> Callable[[Any], None]:
    """An action that records the request line's method and the raw header list, then plays reply."""

    def act(handler: Any) -> None:
        seen.append((handler.command, list(handler.headers.items())))
        handler.play(reply)

    return act


def status_with_reason(status: int, reason: str) -> Callable[[Any], None]:
    """An action answering with a custom reason phrase and an empty body."""

    def act(handler: Any) -> None:
        handler.send_response(status, reason)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return act


def close_after_answer(version: str, *, length: bool, connection_close: bool) -> Callable[[Handler], None]:
    """An action answering (echo) with a raw response, then closing the connection."""

    def act(handler: Handler) -> None:
        body, kind = echo_body(handler)
        head = f"{version} 200 OK\r\nContent-Type: {kind}\r\n"
        if length:
            head += f"Content-Length: {len(body)}\r\n"
        if connection_close:
            head += "Connection: close\r\n"
        raw_reply(head.encode() + b"\r\n" + body)(handler)

    return act


def answer_then_close(delay: float, *, how: str, every: int) -> tuple[Callable[[Handler], None], threading.Event]:
    """An action that answers with keep-alive (echo), and on every ``every``-th request of a
    connection waits ``delay`` seconds and then gives up on it: ``how`` is "FIN" (shutdown),
    "RST" (abort), or "408" (an unsolicited 408 answer, the socket closed only once the next
    request came, on another connection). The event is set once the connection was given up."""
    closed = threading.Event()
    next_request = threading.Event()

    def act(handler: Handler) -> None:
        next_request.set()
        echo(handler)
        count = getattr(handler, "answered", 0) + 1
        handler.answered = count  # type: ignore[attr-defined]
        if count % every:
            return
        time.sleep(delay)
        handler.close_connection = True
        if how == "RST":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
        elif how == "FIN":
            handler.connection.shutdown(socket.SHUT_RDWR)
        else:
            next_request.clear()
            handler.wfile.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            closed.set()
            next_request.wait(2)  # still open: a request sent on it now would be written without error
            handler.connection.shutdown(socket.SHUT_RDWR)
        closed.set()

    return act, closed


def held_second_chunk(blank: bytes, proceed: threading.Event, stalled: list[bool]) -> Action:
    """Send chunk 1 and its framing, then hold chunk 2 until the test has received chunk 1."""

    def act(handler: Handler) -> None:
        start_stream(handler)
        write_piece(handler, b"data: " + json.dumps(chunk("first")).encode() + blank)
        if not proceed.wait(2):  # the client never saw chunk 1 while we held chunk 2 back
            stalled.append(True)
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        write_piece(handler, b"data: " + json.dumps(chunk("second", finish="stop")).encode() + blank)
        write_piece(handler, b"data: [DONE]" + blank)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    return act


def done_then_hold(release: threading.Event, stalled: list[bool]) -> Callable[[Handler], None]:
    """Send a finished stream and [DONE], but hold the body open (no final empty chunk)."""

    def act(handler: Handler) -> None:
        start_stream(handler)
        write_piece(handler, b"".join(sse(chunk("a", finish="stop"))))
        if not release.wait(3):
            stalled.append(True)
        handler.close_connection = True

    return act


def hold_open(first: list[bytes], client_closed: threading.Event, held: list[str]) -> Callable[[Handler], None]:
    """Send the first pieces, then keep the stream open until the client closes the connection."""

    def act(handler: Handler) -> None:
        start_stream(handler)
        for piece in first:
            write_piece(handler, piece)
        handler.close_connection = True
        handler.connection.settimeout(2)
        try:
            got = handler.connection.recv(1)
        except socket.timeout:
            held.append("client never closed the connection")
            return
        except ConnectionResetError:
            got = b""
        if got == b"":
            client_closed.set()
        else:
            held.append(f"client sent {got!r} on a busy connection")

    return act


def cut_mid_stream(handler: Handler) -> None:
    """A stream that sends one chunk, then drops the connection."""
    start_stream(handler, chunk("Hel"))
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


# -- Fixtures: TLS and the proxy ----------------------------------------------


def make_cert(folder: Any, names: str = "DNS:localhost,IP:127.0.0.1") -> tuple[str, str]:
    """A self-signed certificate for ``names`` (subjectAltName) in ``folder``: (cert file, key file).
    An EC key: an RSA one takes a tenth of a second or more to generate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=localhost", "-addext", f"subjectAltName={names}", "-keyout", key, "-out", cert,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {result.stderr.decode(errors='replace')}")
    return cert, key


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert file, key file)."""
    return make_cert(tmp_path_factory.mktemp("tls"))


def server_context(cert: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return context


@pytest.fixture(scope="session")
def session_tls_server(cert: tuple[str, str]) -> Iterator[Server]:
    with serving(Server(server_context(cert))) as httpd:
        yield httpd


@pytest.fixture
def tls_server(session_tls_server: Server) -> Server:
    """The loopback server over TLS (echoing), this test's own."""
    session_tls_server.reset(default=echo)
    return session_tls_server


@pytest.fixture
def trusting(cert: tuple[str, str]) -> ssl.SSLContext:
    """A client SSL context that trusts the test certificate."""
    return ssl.create_default_context(cafile=cert[0])


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound by nobody listening: connecting to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes (or 5 s of silence)."""
    try:
        while True:
            readable, _, _ = select.select([client, upstream], [], [], 5.0)
            if not readable:
                return
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                (upstream if source is client else client).sendall(data)
    except OSError:
        return
    finally:
        upstream.close()


class ProxyHandler(BaseHTTPRequestHandler):
    """CONNECT host:port -> 200 and a byte pipe; an absolute-URI request -> forwarded to the origin."""

    protocol_version = "HTTP/1.1"
    server: Proxy

    def log_message(self, *args: Any) -> None:
        pass

    def record(self, body: bytes = b"") -> None:
        self.server.seen.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.server.clients.add(self.client_address)

    def do_CONNECT(self) -> None:
        self.record()
        self.close_connection = True
        if self.server.connect_status != 200:
            self.send_response(self.server.connect_status)
            self.send_header("Proxy-Authenticate", 'Basic realm="tp"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=2)
        except (OSError, ValueError):
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        pipe(self.connection, upstream)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.record(body)
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            self.send_error(400, "a proxy wants an absolute http:// URI")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
        try:
            upstream.request(self.command, url.path + ("?" + url.query if url.query else ""), body, headers)
            response = upstream.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.send_error(502)
            return
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP | {"content-length", "server", "date"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Proxy(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.reset()

    def reset(self) -> None:
        self.seen: list[Request] = []
        self.clients: set[Any] = set()
        self.connect_status = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture(scope="session")
def session_proxy() -> Iterator[Proxy]:
    with serving(Proxy()) as httpd:
        yield httpd


@pytest.fixture
def proxy(session_proxy: Proxy) -> Proxy:
    session_proxy.reset()
    return session_proxy


def origin_for(request: pytest.FixtureRequest, scheme: str) -> tuple[Server, dict[str, Any]]:
    """The origin server for a scheme, and the client options that reach it."""
    if scheme == "https":
        return request.getfixturevalue("tls_server"), {"ssl_context": request.getfixturevalue("trusting")}
    return request.getfixturevalue("echo_server"), {}


# -- Fixtures: the raw-socket server ------------------------------------------


def read_request(conn: socket.socket) -> bytes | None:
    """One HTTP request (head and Content-Length body) from a raw socket; None at end of stream."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            return None
        body += piece
    return head + b"\r\n\r\n" + body


def abort(conn: socket.socket) -> None:
    """Close with a TCP reset (RST) instead of an orderly FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


Behaviour = Callable[["RawServer", socket.socket], bool]


class RawServer:
    """A bare TCP server on 127.0.0.1 for what ThreadingHTTPServer cannot do (resets, stalls, HTTP/1.0).

    Each request read on a connection is recorded, then ``behaviour(server, conn)`` answers it
    and returns whether to keep the connection for another request. With ``read_requests=False``
    the behaviour gets each new connection unread and does its own reading. ``stop`` is set at
    teardown, so behaviours that stall wait on it instead of sleeping.
    """

    def __init__(self, behaviour: Behaviour, *, read_requests: bool = True, receive_buffer: int | None = None) -> None:
        self.behaviour = behaviour
        self.read_requests = read_requests
        self.requests: list[bytes] = []
        self.connections = 0
        self.received = 0  # for behaviours that count what they read themselves
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # small, so the client waits on us (accepted sockets inherit it)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed at teardown
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with conn:
                if not self.read_requests:
                    self.behaviour(self, conn)
                    return
                while not self.stop.is_set():
                    request = read_request(conn)
                    if request is None:
                        return
                    self.requests.append(request)
                    if not self.behaviour(self, conn):
                        return
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    """Start raw servers with a behaviour; all are stopped at teardown."""
    servers: list[RawServer] = []

    def start(behaviour: Behaviour, **options: Any) -> RawServer:
        servers.append(RawServer(behaviour, **options))
        return servers[-1]

    yield start
    for started in servers:
        started.close()


def send_then(data: bytes, then: str = "close") -> Behaviour:
    """Send ``data``, then "close" (FIN), "reset" (RST), "keep" the connection, or "stall" until teardown."""

    def act(server: RawServer, conn: socket.socket) -> bool:
        if data:
            conn.sendall(data)
        if then == "reset":
            abort(conn)
        elif then == "stall":  # bounded, so a client without a timeout fails instead of hanging
            server.stop.wait(3)
        return then == "keep"

    return act


def trickle(head: bytes, body: bytes, every: float, most: int = 6) -> Behaviour:
    """Send ``head`` at once, then the first ``most`` bytes of ``body`` one per ``every`` seconds, then close."""

    def act(server: RawServer, conn: socket.socket) -> bool:
        conn.sendall(head)
        for byte in body[:most]:
            if server.stop.wait(every):
                break
            conn.sendall(bytes([byte]))
        return False

    return act


Answer = Callable[[int, int], Any]


def per_connection(answer: Answer) -> Behaviour:
    """Answer the n-th request (from 1) of the c-th connection (from 1) with ``answer(c, n)``:
    bytes (sent, the connection kept), or (bytes, then) with ``then`` as send_then takes it."""
    local = threading.local()  # RawServer serves each connection on a thread of its own
    numbers = iter(range(1, 1000))
    lock = threading.Lock()

    def act(server: RawServer, conn: socket.socket) -> bool:
        if not hasattr(local, "connection"):
            with lock:
                local.connection = next(numbers)
            local.requests = 0
        local.requests += 1
        reply = answer(local.connection, local.requests)
        data, then = (reply, "keep") if isinstance(reply, bytes) else reply
        return send_then(data, then)(server, conn)

    return act


def early_answer(answer: bytes) -> Behaviour:
    """Read a request's head only, answer at once and hang up on the unread body."""

    def act(server: RawServer, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(answer)
        return False  # closing with most of the body unread sends a reset, which fails the client's write

    return act


def slow_reader(piece: int, every: float | None, slow_bytes: int) -> Behaviour:
    """Read the first ``slow_bytes`` of a request ``piece`` bytes every ``every`` seconds (or nothing
    at all, if ``every`` is None), then the rest as fast as it comes, and answer ``got <bytes>``."""

    def act(server: RawServer, conn: socket.socket) -> bool:
        if every is None:
            server.stop.wait(5)
            return False
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(piece)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        server.received = len(body)
        while server.received < length and not server.stop.is_set():
            if server.received < slow_bytes:
                server.stop.wait(every)
            server.received += len(conn.recv(piece))
        conn.sendall(http_answer(f"got {server.received}"))
        server.stop.wait(1)
        return False

    return act


def host_port(server: Any) -> str:
    """``127.0.0.1:PORT`` of a Server or RawServer, as errors name it."""
    return f"127.0.0.1:{server.port}"


def connects_hanging(port: int) -> int:
    """How many of this machine's TCP connects to 127.0.0.1:``port`` wait unanswered (SYN_SENT, Linux)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[2] == f"0100007F:{port:04X}" and row[3] == "02")


def wait_until(predicate: Callable[[], Any], seconds: float = 5.0) -> bool:
    """Poll ``predicate()`` every few milliseconds until it is true (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused_url() -> str:
    """A base URL on a loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}/v1"


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair: (client side, server side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return near, far


# -- Fixtures: clients ----------------------------------------------------------


def make_client(target: Any, **options: Any) -> tl.Together:
    """A client of a server (or a base URL): test key, 5 s timeout and no retries unless given."""
    options.setdefault("api_key", "test-key")
    options.setdefault("timeout", 5)
    options.setdefault("max_retries", 0)
    return tl.Together(base_url=target if isinstance(target, str) else target.url, **options)


def make_async_client(target: Any, **options: Any) -> tl.AsyncTogether:
    """make_client's twin: an AsyncTogether with the same defaults."""
    options.setdefault("api_key", "test-key")
    options.setdefault("timeout", 5)
    options.setdefault("max_retries", 0)
    return tl.AsyncTogether(base_url=target if isinstance(target, str) else target.url, **options)


def client_and_delays(target: Any, max_retries: int, **options: Any) -> tuple[tl.Together, list[float]]:
    """A client that retries, its retry sleeps recorded instead of slept."""
    c = make_client(target, max_retries=max_retries, **options)
    return c, record_delays(c)


@pytest.fixture
def recorded_delays() -> list[float]:
    return []


@pytest.fixture
def retrying_client(server: Server, recorded_delays: list[float]) -> Iterator[tl.Together]:
    """A client that would retry three times, with the retry sleep recorded instead of slept."""
    with make_client(server, max_retries=3, timeout=1) as c:
        record_delays(c, recorded_delays)
        yield c


def chat(c: tl.Together, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "m")
    kwargs.setdefault("messages", [{"role": "user", "content": "hi"}])
    return c.chat.completions.create(**kwargs)


def say(c: Any, text: str, **kwargs: Any) -> Any:
    """A chat call with one user message ``text`` (a coroutine for an AsyncTogether)."""
    return chat(c, messages=[{"role": "user", "content": text}], **kwargs)


def ask(client: Any, marker: str, *, stream: bool = False, **kwargs: Any) -> str:
    """One chat call whose user message is ``marker``; the content that came back."""
    result = chat(client, messages=[{"role": "user", "content": marker}], stream=stream, **kwargs)
    if stream:
        with result:
            return "".join(c.choices[0].delta.content or "" for c in result)
    return str(result.choices[0].message.content)


def call_text(client: tl.Together, stream: bool = False) -> str:
    if stream:
        return "".join(texts(chat(client, stream=True)))
    return str(chat(client).choices[0].message.content)


def break_off_stream(client: tl.Together, marker: str) -> None:
    stream = chat(client, messages=[{"role": "user", "content": marker}], stream=True)
    next(iter(stream))
    stream.close()


def contents(chunks: list[Any]) -> list[Any]:
    return [c.choices[0].delta.content for c in chunks]


def texts(stream: Any) -> list[str]:
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


def collect(stream: Any, into: list[Any]) -> None:
    for item in stream:
        into.append(item)


async def until(predicate: Callable[[], Any], seconds: float = 3.0) -> None:
    """Wait (without blocking the loop) until ``predicate()`` is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.01)


async def count_ticks(ticks: list[int]) -> None:
    """Count event-loop turns: one tick every 10 ms while the loop is free."""
    while True:
        await asyncio.sleep(0.01)
        ticks[0] += 1


def run_async(coroutine: Any, seconds: float = 10.0) -> Any:
    """``asyncio.run(coroutine)``, failing with a TimeoutError instead of hanging the suite."""
    return asyncio.run(asyncio.wait_for(coroutine, seconds))


context_tag: contextvars.ContextVar[str] = contextvars.ContextVar("context_tag", default="unset")


# -- Fixtures: internals --------------------------------------------------------
#
# Every access to together_lite's private names, but for the tests of private helpers
# themselves (the SSE decoder, URL parsing, no_proxy matching, the retry policy).


def record_delays(client: Any, delays: list[float] | None = None) -> list[float]:
    """Make a client (sync or async) record the delay of each sleep between attempts instead of
    sleeping; returns the list it appends to."""
    delays = [] if delays is None else delays
    if isinstance(client, tl.AsyncTogether):

        async def record(seconds: float) -> None:
            delays.append(seconds)

        client._sleep = record
    else:
        client._sleep = lambda seconds, cancel: delays.append(seconds)
    return delays


def skip_sleeps(client: Any) -> None:
    """Make a client (sync or async) go on at once where it would sleep between attempts."""
    record_delays(client)


def is_dropped(connection: Any) -> bool:
    """A pooled connection the server has closed, or written to unasked."""
    return bool(connection.is_dropped())


def notify_sleeps(client: Any) -> threading.Event:
    """An event set whenever a client (sync or async) begins a real sleep between attempts."""
    sleep, began = client._sleep, threading.Event()
    if isinstance(client, tl.AsyncTogether):

        async def noted_async(seconds: float) -> None:
            began.set()
            await sleep(seconds)

        client._sleep = noted_async
    else:

        def noted(seconds: float, cancel: Any) -> Any:
            began.set()
            return sleep(seconds, cancel)

        client._sleep = noted
    return began


def idle_connections(client: Any) -> list[Any]:
    """The kept-alive connections waiting in a client's pool (sync or async), all origins together."""
    pool = getattr(client, "_sync", client)._transport.pool
    with pool._lock:
        return [connection for idle in pool._idle.values() for connection, _ in idle]


def set_pool_limits(
    monkeypatch: pytest.MonkeyPatch, *, maxsize: int | None = None, idle_seconds: float | None = None
) -> None:
    """Shrink the connection pool: how many idle connections it keeps, and for how long."""
    if maxsize is not None:
        monkeypatch.setattr(tl, "_POOL_MAXSIZE", maxsize)
    if idle_seconds is not None:
        monkeypatch.setattr(tl, "_POOL_IDLE_SECONDS", idle_seconds)


def connection_on(sock: socket.socket) -> Any:
    """The module's connection object over a connected socket."""
    return tl._Connection(sock)


def new_cancel() -> Any:
    """A cancel handle, as AsyncTogether makes one for each call."""
    return tl._Cancel()


def cancellable_chat(c: tl.Together, cancel: Any, **kwargs: Any) -> Any:
    """A chat call that ``cancel`` can abandon from another thread, as AsyncTogether runs one."""
    call = c.chat.completions._prepare({"model": "m", "messages": [{"role": "user", "content": "hi"}], **kwargs})
    call.cancel = cancel
    return c._execute(call)


def shorten_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait less for a stream's tail after [DONE] before giving its connection up."""
    monkeypatch.setattr(tl, "_DRAIN_SECONDS", 0.05)


def forget_addresses() -> None:
    """Forget the hosts' addresses looked up so far: the next connection to each looks it up."""
    tl._looked_up.clear()


def status_error(response: tl.Response) -> tl.APIStatusError:
    """The error the module raises for an error response."""
    return tl._status_error(response)


def parse_as(cls: Any, data: Any) -> Any:
    """A result type built from JSON data, as the module builds it from a response."""
    return cls._parse(data)


def origin_of(client: tl.Together) -> tuple[str, str, int]:
    """(scheme, host, port) the client connects to."""
    return client._origin  # type: ignore[no-any-return]


def is_released(stream: Any) -> bool:
    """A sync stream is closed and its HTTP response read to the end or dropped."""
    return bool(stream._closed and stream._http._finished)


def wrap_next_available(stream: Any, wrapper: Callable[[Callable[[], Any]], Callable[[], Any]]) -> None:
    """Replace a sync stream's read of its next chunk by ``wrapper(original)``."""
    stream._next_available = wrapper(stream._next_available)


def next_available(stream: Any) -> Any:
    """One read of a sync stream's next chunk, as an async stream's worker makes it."""
    return stream._next_available()


def wrap_chunk_parse(
    monkeypatch: pytest.MonkeyPatch, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Make the chat streams opened from now on parse each event with ``wrapper(original)``."""
    parse = wrapper(tl.ChatCompletionChunk._parse)

    class Wrapped(tl.ChatCompletionChunk):
        _parse = staticmethod(parse)  # type: ignore[assignment]

    monkeypatch.setattr(tl.ChatCompletions, "_chunk", Wrapped)


SKIP_SLEEPS_SOURCE = "client._sleep = lambda seconds, cancel: None"  # skip_sleeps(client), in a script's source
STREAM_END = tl._END  # what a read of a finished stream gives
MAX_REDIRECTS = tl._MAX_REDIRECTS
MAX_ERROR_BODY = tl._MAX_ERROR_BODY
Workers = tl._Workers  # AsyncTogether's thread pool


def waits_without_a_thread(stream: Any) -> bool:
    """An async stream is waiting for its next chunk on the event loop."""
    return stream._waiter is not None


def workers_of(client: tl.AsyncTogether) -> Any:
    """The AsyncTogether's pool of worker threads (None until its first call, and after close)."""
    return client._executor


def idle_workers(workers: Any) -> int:
    return int(workers._spare)


def sync_of(client: tl.AsyncTogether) -> tl.Together:
    """The sync client an AsyncTogether runs its calls on."""
    return client._sync


def run_on_worker(client: tl.AsyncTogether, cancel: Any, function: Callable[[], Any]) -> Any:
    """Run ``function`` on one of the AsyncTogether's workers (an awaitable)."""
    return client._run(cancel, function)


def shutdown_workers(client: tl.AsyncTogether, seconds: float = 3.0) -> None:
    """Join the client's worker threads (so abandoned calls have finished); fail if they hang."""
    executor = workers_of(client)
    assert executor is not None
    executor.shutdown()
    deadline = time.monotonic() + seconds
    while executor.threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.threads == 0, "a worker thread is still blocked"


# -- Fixtures: files, processes and resources ----------------------------------


def open_fds() -> int:
    """Open file descriptors of this process, after a garbage collection."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def no_unclosed_sockets() -> Iterator[None]:
    """Fail if a socket was left for the garbage collector to close (a ResourceWarning) inside."""
    gc.collect()  # garbage from before is not ours
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def settle_threads(seconds: float = 2.0) -> None:
    """Give threads left by earlier tests (servers' handler threads) a moment to end, so counts are
    stable: wait until the count has not changed for 50 ms (the session servers' own threads stay)."""
    deadline = time.monotonic() + seconds
    count, since = threading.active_count(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 0.05:
        time.sleep(0.005)
        if threading.active_count() != count:
            count, since = threading.active_count(), time.monotonic()


audit_log: list[tuple[str, Any]] = []
audit_state = {"installed": False, "recording": False}


def audit_hook(event: str, args: Any) -> None:
    if audit_state["recording"] and event in ("open", "socket.connect", "socket.getaddrinfo"):
        audit_log.append((event, args))


@contextlib.contextmanager
def audit() -> Iterator[list[tuple[str, Any]]]:
    """Record file opens and socket connects/lookups made meanwhile (a PEP 578 audit hook, installed once)."""
    if not audit_state["installed"]:
        sys.addaudithook(audit_hook)
        audit_state["installed"] = True
    del audit_log[:]
    audit_state["recording"] = True
    try:
        yield audit_log
    finally:
        audit_state["recording"] = False


CANARY = "sk-canary-7f3e9d"


def assert_no_canary(exc: BaseException) -> None:
    """The canary key is nowhere in the exception, its displayed chain, its attributes or its pickle."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in (repr(current), str(current), repr(current.args), repr(vars(current))):
            assert CANARY not in text
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    assert CANARY.encode() not in pickle.dumps(exc)
    assert CANARY.encode("utf-16-le") not in pickle.dumps(exc)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def drop_none(value: Any) -> Any:
    """JSON data without the keys whose value is None (what model_dump(exclude_none=True) gives)."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(item) for item in value]
    return value


def assert_plain_json(value: Any) -> None:
    """Fail unless value is made only of dict, list, str, int, float, bool and None."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


def video_message(size: int) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + "A" * size}}],
        }
    ]


def feed_all(pieces: Iterator[bytes] | list[bytes], decoder: tl._SSEDecoder | None = None) -> list[tl.ServerSentEvent]:
    """Feed every piece to one decoder; all the events they completed, in order."""
    decoder = decoder if decoder is not None else tl._SSEDecoder()
    events: list[tl.ServerSentEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    return events


def as_tuples(events: list[tl.ServerSentEvent]) -> list[tuple[Any, ...]]:
    return [(e.event, e.data, e.id, e.retry) for e in events]


def as_pairs(events: list[tl.ServerSentEvent]) -> list[tuple[Any, str]]:
    return [(e.event, e.data) for e in events]


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_pieces(data: bytes, rng: random.Random, low: int = 1, high: int = 64) -> list[bytes]:
    pieces = []
    position = 0
    while position < len(data):
        size = rng.randint(low, high)
        pieces.append(data[position : position + size])
        position += size
    return pieces


def decoded_events(pieces: list[bytes]) -> list[tuple[Any, ...]]:
    decoder = tl._SSEDecoder()
    events: list[tuple[Any, ...]] = []
    for piece in pieces:
        result = decoder.feed(piece)
        assert isinstance(result, list)
        for event in result:
            assert isinstance(event, tl.ServerSentEvent) and isinstance(event.data, str)
            events.append((event.data, event.event, event.id, event.retry))
    return events


def recorded_stream() -> tuple[bytes, list[str]]:
    """A chat stream using every framing the format allows, and the contents it carries."""
    contents = ["h\u00e9llo ", "\U0001f30d \u65e5\u672c", " end\r\n", "\u2028sep\u0085"]
    first = json.dumps(chunk(contents[0]), ensure_ascii=False)
    cut = first.index(', "choices"') + 1
    second = json.dumps(chunk(contents[1]), ensure_ascii=False)
    third = json.dumps(chunk(contents[2]), ensure_ascii=True)
    fourth = json.dumps(chunk(contents[3], finish="stop"), ensure_ascii=False)
    text = (
        "\ufeff: a BOM, then a comment\r\n"
        "retry: 3000\r\n"
        "id: 1\r\n"
        f"data: {first[:cut]}\r\n"
        f"data: {first[cut:]}\r\n"
        "\r\n"
        "event: message\r"
        f"data:{second}\r"
        "\r"
        ":keep-alive\n\n"
        "unknown-field: ignored\n"
        f"data: {third}\n"
        "\n"
        "\n\n\r\n"
        f"data: {fourth}\r\n\r\n"
        "data: [DONE]\n\n"
    )
    return text.encode("utf-8"), contents


def fuzz_bytes(seed: int, kind: str, size: int = 2048) -> bytes:
    """Seeded fuzz input: uniform random bytes, or a soup of SSE tokens and random bytes."""
    rng = random.Random(seed)
    if kind == "random":
        return bytes(rng.getrandbits(8) for _ in range(size))
    out = bytearray()
    while len(out) < size:
        out += rng.choice(SOUP) if rng.random() < 0.8 else bytes([rng.getrandbits(8)])
    return bytes(out[:size])


# -- Fixtures: the command line -------------------------------------------------

CLI_API_KEY = "sk-canary-XYZ123"  # must never show up in the CLI's output or in a log record
CLI_DEFAULT_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
CLI_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(40))
CLI_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(20))
CLI_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(range(16))
CLI_UNKNOWN = b"nothing anybody could recognise"
CLI_INVOCATIONS = {
    "script": [sys.executable, "together_lite.py"],
    "module": [sys.executable, "-m", "together_lite"],
}


PYCACHE_DIRECTORY = tempfile.mkdtemp(prefix="together-lite-test-pycache-")
atexit.register(shutil.rmtree, PYCACHE_DIRECTORY, True)


def module_directory() -> str:
    """The directory holding together_lite.py, where the subprocess runs."""
    return os.path.dirname(os.path.abspath(tl.__file__))


def cli_env(server: Server | None, **changes: str | None) -> dict[str, str]:
    """os.environ without proxy and TOGETHER_* variables, plus the key and the loopback base URL.

    A change of None removes the variable.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().endswith("_PROXY") and not name.upper().startswith("TOGETHER_")
    }
    env["TOGETHER_API_KEY"] = CLI_API_KEY
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the module is compiled once for all the processes,
    env["PYTHONPYCACHEPREFIX"] = PYCACHE_DIRECTORY  # outside the checkout
    if server is not None:
        env["TOGETHER_BASE_URL"] = server.url
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def check_cli_output(stdout: str, stderr: str) -> None:
    """What every run of the command line must satisfy: no key and no traceback anywhere."""
    assert CLI_API_KEY not in stdout
    assert CLI_API_KEY not in stderr
    assert "Traceback" not in stderr


def run_cli(
    server: Server | None,
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    stdin: Any = None,
    invocation: str = "script",
) -> subprocess.CompletedProcess[str]:
    """Run the command line in a subprocess against ``server``; stdout and stderr as text."""
    if input is None and stdin is None:
        stdin = subprocess.DEVNULL
    result = subprocess.run(
        CLI_INVOCATIONS[invocation] + list(args),
        cwd=module_directory(),
        env=cli_env(server) if env is None else env,
        input=input,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=20,
    )
    check_cli_output(result.stdout, result.stderr)
    return result


def run_cli_here(
    server: Server | None, *args: str, input: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command line's main() in this process, with run_cli's environment, ``input`` as a
    piped stdin, and stdout and stderr captured (where a process of its own adds nothing).

    TOGETHER_LOG in the environment is applied as the import applies it, logging to the captured
    stderr (a real process's import reading it is tested on its own).
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(cli_env(server) if env is None else env)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            stdin, sys.stdin = sys.stdin, io.StringIO(input)
            tl._configure_logging(os.environ.get("TOGETHER_LOG"))
            try:
                code: Any = tl.main(list(args))
            except SystemExit as stop:
                code = stop.code
            finally:
                sys.stdin = stdin
                forget_together_log()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    result = subprocess.CompletedProcess(["together-lite", *args], code or 0, stdout.getvalue(), stderr.getvalue())
    check_cli_output(result.stdout, result.stderr)
    return result


def forget_together_log() -> None:
    """Undo what TOGETHER_LOG made the module do: its stderr handler and the logger's level."""
    logger = logging.getLogger("together_lite")
    for handler in [h for h in logger.handlers if getattr(h, "_together_lite", False)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def wait_for_requests(server: Server, count: int) -> None:
    deadline = time.monotonic() + 15
    while len(server.requests) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"the server saw {len(server.requests)} requests, expected {count}")
        time.sleep(0.01)


def interruptible_cli(*args: str) -> list[str]:
    """A command running ``python together_lite.py ARGS`` with SIGINT at its default, as a terminal gives it.

    A shell starting the tests in the background (``pytest &``) or under nohup
    makes every child ignore SIGINT; the exec'd CLI would then never see Ctrl-C.
    """
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, sys.executable, "together_lite.py", *args]


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Kill a process this test started, if it is still running."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=20)


@pytest.fixture(params=sorted(CLI_INVOCATIONS))
def invocation(request: pytest.FixtureRequest) -> str:
    """Both ways to run the command line: ``python together_lite.py`` and ``python -m together_lite``."""
    return str(request.param)


@pytest.fixture
def gate(server: Server) -> Iterator[threading.Event]:
    """An event a stalling server handler waits on; released before the server shuts down."""
    gate = threading.Event()
    yield gate
    gate.set()


needs_sigint = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(signal, "SIGINT"), reason="needs POSIX SIGINT delivery"
)


class Terminal:
    """``together-lite chat ARGS`` on a real pseudo-terminal, which is its controlling terminal (so ^C is SIGINT)."""

    WRAPPER = (
        "import fcntl, os, signal, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
        "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )

    def __init__(self, server: Server, *args: str) -> None:
        self.controller, terminal = os.openpty()
        command = [sys.executable, "-c", self.WRAPPER, sys.executable, "together_lite.py", "chat", *args]
        self.process = subprocess.Popen(
            command,
            cwd=module_directory(),
            env=cli_env(server, TERM="dumb"),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
        )
        os.close(terminal)
        self.seen = b""

    def type(self, keys: bytes) -> None:
        os.write(self.controller, keys)

    def wait_for(self, text: str, seconds: float = 10.0) -> str:
        """Read the terminal until ``text`` shows; what was shown since the last wait."""
        deadline = time.monotonic() + seconds
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.controller], [], [], left)[0]:
                pytest.fail(f"{text!r} never showed; the terminal shows {self.seen.decode(errors='replace')!r}")
            try:
                self.seen += os.read(self.controller, 4096)
            except OSError:  # the command ended and the terminal closed
                pytest.fail(f"{text!r} never showed; the terminal shows {self.seen.decode(errors='replace')!r}")
        shown, _, self.seen = self.seen.partition(text.encode())
        return (shown + text.encode()).decode(errors="replace")

    def exit_code(self) -> int:
        code = self.process.wait(timeout=10)
        os.close(self.controller)
        return code


@pytest.fixture
def terminal(server: Server) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        started.append(Terminal(server, *args))
        return started[-1]

    yield start
    for terminal in started:
        stop_process(terminal.process)


needs_a_terminal = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


def log_line_pattern(server: Server, endpoint: str, status: int, request_id: str) -> str:
    """A pattern for the INFO line logged for one response."""
    url = re.escape(server.url + endpoint)
    return rf"INFO POST {url} -> {status} in \d+\.\d{{3}}s \(request id {re.escape(request_id)}\)$"


def logger_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "together_lite"]


def decoded_data_url(url: str, mime_type: str) -> bytes:
    prefix = f"data:{mime_type};base64,"
    assert url.startswith(prefix)
    return base64.b64decode(url[len(prefix) :], validate=True)


# -- Fixtures: data of the errors tests ---------------------------------------

V1_INVALID = {400, 403, 404, 415, 422}

MODEL_NOT_FOUND = {
    "error": {
        "message": "Unable to access model x.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
}

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


# -- Fixtures: data of the result types tests ---------------------------------

TOOL_CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Tokyo"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
]


def response_with_unknown_fields() -> dict[str, Any]:
    body = chat_response(
        None,
        message={"role": "assistant", "content": None, "tool_calls": copy.deepcopy(TOOL_CALLS), "annotations": [{"type": "cite"}]},
        logprobs={"tokens": ["a"], "token_logprobs": [-1.0], "content": [{"token": "a"}]},
        matched_stop="\n",
    )  # fmt: skip
    body["service_tier"] = "flex"
    body["usage"]["cached_tokens"] = 2
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 2}
    body["choices"][0]["message"]["tool_calls"][0]["new_call_field"] = 7
    body["choices"][0]["message"]["tool_calls"][0]["function"]["strict"] = True
    body["prompt"] = [{"text": "t", "logprobs": None, "token_ids": [1]}]
    return body


UNICODE_TEXT = "emoji 😀👩\u200d💻, CJK 漢字かな한글, line\u2028sep\u2029para, nul\u0000, bidi \u202e"


# -- Fixtures: data of the requests tests -------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a location.",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string", "default": None}},
                "required": ["location"],
            },
            "strict": True,
        },
    }
]

CHAT_PARAMS = [
    ("max_tokens", 7),
    ("stop", ["\n", "END"]),
    ("temperature", 0.7),
    ("top_p", 0.9),
    ("top_k", 40),
    ("repetition_penalty", 1.1),
    ("presence_penalty", 0.2),
    ("frequency_penalty", -0.3),
    ("min_p", 0.05),
    ("logit_bias", {"105": 21.4, "1024": -10.5}),
    ("seed", 42),
    ("logprobs", 3),
    ("echo", True),
    ("n", 2),
    ("safety_model", "meta-llama/Meta-Llama-Guard-3-8B"),
    ("response_format", {"type": "json_object", "schema": {"type": "object"}}),
    ("tools", TOOLS),
    ("tool_choice", "auto"),
]

COMPLETION_PARAMS = [
    (name, value) for name, value in CHAT_PARAMS if name not in ("response_format", "tools", "tool_choice")
]

RICH_MESSAGES = [
    {"role": "developer", "content": "Be terse."},
    {"role": "system", "content": "You are helpful."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "high"}},
            {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
            {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "hologram_url", "hologram_url": {"url": "https://example.com/h", "depth": 3}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location":"Tokyo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp": 20}'},
    {"role": "user", "content": "Thanks!", "name": "ann", "future_field": {"x": 1}},
]

BAD_HEADERS = [
    pytest.param({"X-A": "v\r\nX-Injected: 1"}, id="CRLF-in-value"),
    pytest.param({"X-A": "v\n"}, id="LF-in-value"),
    pytest.param({"X-A": "v\rw"}, id="CR-in-value"),
    pytest.param({"X-A": "v\x00"}, id="NUL-in-value"),
    pytest.param({"": "v"}, id="empty-name"),
    pytest.param({"X A": "v"}, id="space-in-name"),
    pytest.param({"X-A:": "v"}, id="colon-in-name"),
    pytest.param({"X-A\r\nX-B": "v"}, id="CRLF-in-name"),
    pytest.param({"\nX-A": "v"}, id="leading-LF-in-name"),
    pytest.param({"X\tA": "v"}, id="tab-in-name"),
]


# -- Fixtures: data of the server-sent events tests ---------------------------

SSE_STREAMING_VECTORS = [
    pytest.param(
        [b"event: completion\n", b'data: {"foo":true}\n', b"\n"],
        [("completion", '{"foo":true}')],
        id="1-basic",
    ),
    pytest.param([b'data: {"foo":true}\n', b"\n"], [(None, '{"foo":true}')], id="2-data-missing-event"),
    # openai yields ("ping", ""); the spec (and we) dispatch nothing for an empty data buffer.
    pytest.param([b"event: ping\n", b"\n"], [], id="3-event-missing-data-is-not-dispatched"),
    pytest.param([b"event: ping\n", b"\n", b"event: completion\n", b"\n"], [], id="4-multiple-dataless-events"),
    pytest.param(
        [b"event: ping\n", b'data: {"foo":true}\n', b"\n", b"event: completion\n", b'data: {"bar":false}\n', b"\n"],
        [("ping", '{"foo":true}'), ("completion", '{"bar":false}')],
        id="5-multiple-events-with-data",
    ),
    pytest.param(
        [b"event: ping\n", b"data: {\n", b'data: "foo":\n', b"data: \n", b"data:\n", b"data: true}\n", b"\n\n"],
        [("ping", '{\n"foo":\n\n\ntrue}')],
        id="6-multiple-data-lines-with-empty-line",
    ),
    pytest.param(
        [b"event: ping\n", b'data: {"foo": "my long\\n\\ncontent"}', b"\n\n"],
        [("ping", '{"foo": "my long\\n\\ncontent"}')],
        id="7-json-escaped-double-new-line",
    ),
    pytest.param(
        [b"event: ping\n", b"data: {\n", b'data: "foo":\n', b"data: true}\n", b"\n\n"],
        [("ping", '{\n"foo":\ntrue}')],
        id="8-multiple-data-lines",
    ),
    pytest.param(
        [
            b'data: {"content":" culpa"}\n',
            b"\n",
            b'data: {"content":" \xe2\x80\xa8"}\n',
            b"\n",
            b'data: {"content":"foo"}\n',
            b"\n",
        ],
        [(None, '{"content":" culpa"}'), (None, '{"content":" \u2028"}'), (None, '{"content":"foo"}')],
        id="9-u2028-does-not-split-a-line",
    ),
    pytest.param(
        [
            b'data: {"content":"',
            b"\xd0",
            b"\xb8\xd0\xb7\xd0",
            b"\xb2\xd0\xb5\xd1\x81\xd1\x82\xd0\xbd\xd0\xb8",
            b'"}\n',
            b"\n",
        ],
        [(None, '{"content":"известни"}')],
        id="10-multi-byte-character-in-multiple-chunks",
    ),
]

SSE_BEHAVIOUR_ROWS = [
    pytest.param([b"data:  x\n\n"], [(None, " x", None, None)], id="only-one-space-is-stripped"),
    pytest.param([b"data:x\n\n"], [(None, "x", None, None)], id="no-space-after-colon"),
    pytest.param([b"data:\tx\n\n"], [(None, "\tx", None, None)], id="a-tab-is-not-stripped"),
    pytest.param([b"data\n\n"], [(None, "", None, None)], id="no-colon-is-a-field-with-empty-value"),
    pytest.param([b"data\ndata\n\n"], [(None, "\n", None, None)], id="two-valueless-data-lines"),
    pytest.param([b"data: a\rdata: b\r\r"], [(None, "a\nb", None, None)], id="cr-only-line-ends"),
    pytest.param([b"data: a\r\ndata: b\r\n\r\n"], [(None, "a\nb", None, None)], id="crlf-line-ends"),
    pytest.param([b":\n\n"], [], id="bare-comment"),
    pytest.param([b": comment\ndata: x\n\n"], [(None, "x", None, None)], id="comment-then-data"),
    pytest.param(
        [b"data: a\n: comment between data lines\ndata: b\n\n"], [(None, "a\nb", None, None)], id="comment-inside-frame"
    ),
    pytest.param([b"event: e\n\n"], [], id="event-without-data-is-not-dispatched"),
    pytest.param([b"id: 1\n\n"], [], id="id-without-data-is-not-dispatched"),
    pytest.param([b"retry: 100\n\n"], [], id="retry-without-data-is-not-dispatched"),
    pytest.param([b"retry: 100\ndata: x\n\n"], [(None, "x", None, 100)], id="retry-digits"),
    pytest.param([b"retry: abc\ndata: x\n\n"], [(None, "x", None, None)], id="retry-letters-ignored"),
    pytest.param([b"retry: -5\ndata: x\n\n"], [(None, "x", None, None)], id="retry-negative-ignored"),
    pytest.param([b"retry: +5\ndata: x\n\n"], [(None, "x", None, None)], id="retry-plus-ignored"),
    pytest.param([b"retry:  5\ndata: x\n\n"], [(None, "x", None, None)], id="retry-leading-space-ignored"),
    pytest.param([b"retry: 1_0\ndata: x\n\n"], [(None, "x", None, None)], id="retry-underscore-ignored"),
    pytest.param([b"retry: 5 \ndata: x\n\n"], [(None, "x", None, None)], id="retry-trailing-space-ignored"),
    pytest.param(
        ["retry: \uff15\ndata: x\n\n".encode()], [(None, "x", None, None)], id="retry-fullwidth-digit-ignored"
    ),
    pytest.param(["retry: \u00b2\ndata: x\n\n".encode()], [(None, "x", None, None)], id="retry-superscript-ignored"),
    pytest.param([b"retry:\ndata: x\n\n"], [(None, "x", None, None)], id="retry-empty-ignored"),
    pytest.param(
        [b"retry: 100\ndata: x\n\ndata: y\n\n"],
        [(None, "x", None, 100), (None, "y", None, None)],
        id="retry-belongs-to-its-frame",
    ),
    pytest.param(
        [b"id: 1\ndata: a\n\ndata: b\n\n"],
        [(None, "a", "1", None), (None, "b", "1", None)],
        id="id-persists-across-events",
    ),
    pytest.param([b"id: 1\ndata: a\n\n\n"], [(None, "a", "1", None)], id="sticky-id-makes-no-spurious-event"),
    pytest.param([b"id: 5\n\ndata: x\n\n"], [(None, "x", "5", None)], id="id-from-a-dataless-frame-is-kept"),
    pytest.param([b"id: a\0b\ndata: x\n\n"], [(None, "x", None, None)], id="id-with-nul-ignored"),
    pytest.param(
        [b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n"],
        [(None, "a", "1", None), (None, "b", "1", None)],
        id="nul-id-keeps-previous",
    ),
    pytest.param([b"id\ndata: x\n\n"], [(None, "x", "", None)], id="valueless-id-is-empty"),
    pytest.param([b"foo: bar\ndata: x\n\n"], [(None, "x", None, None)], id="unknown-field-ignored"),
    pytest.param([b"DATA: x\n\n"], [], id="uppercase-field-ignored"),
    pytest.param([b"Event: e\ndata: x\n\n"], [(None, "x", None, None)], id="capitalised-event-ignored"),
    pytest.param([b"data : x\n\n"], [], id="space-before-colon-is-another-field"),
    pytest.param([b"event: a\nevent: b\ndata: x\n\n"], [("b", "x", None, None)], id="last-event-name-wins"),
    pytest.param(
        [b"event: a\ndata: x\n\ndata: y\n\n"], [("a", "x", None, None), (None, "y", None, None)], id="event-name-resets"
    ),
    pytest.param([b"event: a\n\ndata: y\n\n"], [(None, "y", None, None)], id="dataless-frame-resets-event-name"),
    pytest.param([b"event:\ndata: x\n\n"], [(None, "x", None, None)], id="empty-event-name-is-none"),
    pytest.param([b"data: x"], [], id="unterminated-line-at-eof-dropped"),
    pytest.param([b"data: x\n"], [], id="unterminated-event-at-eof-dropped"),
    pytest.param([b"\xef\xbb\xbfdata: x\n\n"], [(None, "x", None, None)], id="bom-stripped"),
    pytest.param(
        [b"\xef", b"\xbb", b"\xbfdata: x\n\n"], [(None, "x", None, None)], id="bom-split-across-reads-stripped"
    ),
    pytest.param([b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n"], [], id="bom-stripped-only-once"),
    pytest.param(
        [b"data: x\n\n", b"\xef\xbb\xbfdata: y\n\n"],
        [(None, "x", None, None)],
        id="bom-after-the-start-is-not-stripped",
    ),
    pytest.param([b"data: x\n\n\xef\xbb\xbfdata: y\n\n"], [(None, "x", None, None)], id="bom-mid-read-is-not-stripped"),
    pytest.param([b"data: \xff\n\n"], [(None, "\ufffd", None, None)], id="invalid-utf8-becomes-replacement"),
    pytest.param([b"data: a\xc3(b\n\n"], [(None, "a\ufffd(b", None, None)], id="bad-continuation-becomes-replacement"),
    pytest.param(
        [b"data: a\r", b"\ndata: b\r\n\r\n"], [(None, "a\nb", None, None)], id="crlf-split-across-reads-is-one-end"
    ),
    pytest.param([b"data: a\r", b"\n", b"\r\n"], [(None, "a", None, None)], id="crlf-split-then-blank-crlf"),
    pytest.param([b"data: a\r", b"", b"\n", b"\r\n"], [(None, "a", None, None)], id="crlf-split-around-an-empty-read"),
    pytest.param([b"data: a\r", b"\r"], [(None, "a", None, None)], id="cr-split-from-cr-blank-line"),
    pytest.param(
        [b"data: x\n\n\n\ndata: y\n\n"], [(None, "x", None, None), (None, "y", None, None)], id="repeated-blank-lines"
    ),
    pytest.param([b"\n\n\r\n\r\r"], [], id="only-blank-lines"),
]

# A recorded stream mixing comments, a BOM, ids, retry, names, multi-line data,
# U+2028 and 4-byte UTF-8; every split of it into reads must decode the same.
# The first uses LF and CRLF only; the second also ends lines with a lone CR.
SSE_RECORDED_LF_CRLF = (
    b"\xef\xbb\xbf"
    b": hello\n\n"
    b"retry: 3000\r\n"
    b"id: 1\r\n"
    b'data: {"content":"Hi"}\r\n\r\n'
    b"event: token\r\n"
    b'data: {"content":" \xe2\x80\xa8 \xd0\xb8\xd0\xb7"}\r\n\n'
    b":\n\n"
    b"id: 2\n"
    b"data: line1\n"
    b"data:line2\n"
    b"data\n"
    b"\n"
    b"foo: bar\n"
    b"data: \xf0\x9f\x98\x80 emoji\n\r\n"
    b"event: e\n\n"
    b"data: [DONE]\r\n\r\n"
    b"data: unterminated"
)

SSE_RECORDED_MIXED = (
    b"\xef\xbb\xbf"
    b": hello\n\n"
    b"retry: 3000\r\n"
    b"id: 1\r\n"
    b'data: {"content":"Hi"}\r\n\r\n'
    b"event: token\r"
    b'data: {"content":" \xe2\x80\xa8 \xd0\xb8\xd0\xb7"}\r\r'
    b":\n\n"
    b"id: 2\n"
    b"data: line1\r"
    b"data:line2\n"
    b"data\r\n"
    b"\n"
    b"foo: bar\n"
    b"data: \xf0\x9f\x98\x80 emoji\n\r"
    b"event: e\n\n"
    b"data: [DONE]\r\n\r\n"
    b"data: unterminated"
)

SSE_RECORDED_EVENTS = [
    (None, '{"content":"Hi"}', "1", 3000),
    ("token", '{"content":" \u2028 из"}', "1", None),
    (None, "line1\nline2\n", "2", None),
    (None, "\U0001f600 emoji", "2", None),
    (None, "[DONE]", "2", None),
]

SOUP = [
    b"data:",
    b"data: ",
    b"data",
    b"event:",
    b"event: error",
    b"id:",
    b"id: \x00",
    b"retry:",
    b"retry: 12",
    b":",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xe6\x97",
    b"\xe6\x97\xa5",
    b"x",
    b"{}",
    b"[DONE]",
    b"\x00",
    b"null",
    b'{"choices": [{"finish_reason": "stop"}]}',
    b'{"error": "e"}',
    b"{",
    b'"',
]


# -- Fixtures: data of the streams tests --------------------------------------

DROPS = [
    pytest.param(STREAM_HEAD + chunked(data_event(chunk("Hel"))), id="between-chunks"),
    pytest.param(STREAM_HEAD + chunked(data_event(chunk("Hel"))) + b'80\r\ndata: {"cho', id="inside-a-chunk"),
    pytest.param(STREAM_HEAD + chunked(data_event(chunk("Hel")), b'data: {"choices"'), id="inside-an-event"),
    pytest.param(STREAM_HEAD + chunked(data_event(chunk("Hel"))) + b"8", id="inside-a-chunk-size"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 5000\r\n\r\n"
        + data_event(chunk("Hel")),
        id="short-content-length",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + data_event(chunk("Hel")),
        id="close-delimited-body-without-end",
    ),
]

BLANK_LINES = pytest.mark.parametrize(
    "blank", [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r"], ids=["lf", "crlf", "cr", "lf-cr"]
)


def abandon_unread_by_close(open_stream: Callable[[], Any]) -> None:
    open_stream().close()


def abandon_unread_by_del_and_gc(open_stream: Callable[[], Any]) -> None:
    stream = open_stream()
    del stream
    gc.collect()


def abandon_by_close(open_stream: Callable[[], Any]) -> None:
    stream = open_stream()
    assert next(stream).choices[0].delta.content == "a"
    stream.close()


def abandon_by_with(open_stream: Callable[[], Any]) -> None:
    with open_stream() as stream:
        assert next(stream).choices[0].delta.content == "a"


def abandon_by_exception_in_with(open_stream: Callable[[], Any]) -> None:
    with pytest.raises(KeyError):
        with open_stream() as stream:
            for _ in stream:
                raise KeyError("caller gave up")


def abandon_by_break_and_gc(open_stream: Callable[[], Any]) -> None:
    stream = open_stream()
    for item in stream:
        assert item.choices[0].delta.content == "a"
        break
    del stream, item
    gc.collect()


ABANDONS = [
    pytest.param(abandon_unread_by_close, id="close-before-reading"),
    pytest.param(abandon_unread_by_del_and_gc, id="unread-del-gc"),
    pytest.param(abandon_by_close, id="close"),
    pytest.param(abandon_by_with, id="leaving-with"),
    pytest.param(abandon_by_exception_in_with, id="exception-in-with"),
    pytest.param(abandon_by_break_and_gc, id="break-del-gc"),
]


# -- Fixtures: data of the transport tests ------------------------------------

BROKEN_RESPONSES = [
    pytest.param(hang_up, id="hang-up"),
    pytest.param(raw_reply(b"NOT HTTP AT ALL\r\n\r\n"), id="bad-status-line"),
    pytest.param(raw_reply(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id'), id="truncated-body"),
    pytest.param(
        Reply(200, chunks=[b'{"id": "chat-1", ', b'"choices": []}'], pause=0.5, content_type="application/json"),
        id="body-stalls-past-timeout",
    ),
]

API_ORIGIN = ("https", "api.together.xyz", 443)

BIG_STREAM_MB = 40

HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>body{}</style></head>"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is down.</p></body></html>"
)

DEEP = b"[" * 100000


def call_cancelled_when(client: tl.Together, ready: Callable[[], bool]) -> tuple[list[Any], threading.Thread]:
    """Start a call in a thread, as an AsyncTogether worker runs it, and cancel it once ``ready()``."""
    cancel = new_cancel()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(cancellable_chat(client, cancel))
        except BaseException as exc:  # checked by the caller
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_until(ready), "the call never got there"
    cancel.cancel()
    thread.join(2)
    return outcome, thread


# -- Fixtures: data of the retries tests --------------------------------------

NOW = 1696004797.0


# -- Fixtures: data of the clients tests --------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]

SEED_SETUP = "from together import Together\n\nclient = Together()\n"

SEED_000_SIMPLE = """
from together import Together

client = Together()

response = client.chat.completions.create(
    model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
    messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Explain quantum computing in simple terms."}
    ],
    max_tokens=300,
    temperature=0.7
)

print(response.choices[0].message.content)
"""

SEED_000_IMAGE = """
response = client.chat.completions.create(
    model="meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo",
    messages=[{
        "role": "user",
        "content": [
            {
                "type": "text",
                "text": "What's in this image?"
            },
            {
                "type": "image_url",
                "image_url": {
                    "url": "https://example.com/image.jpg"
                }
            }
        ]
    }],
    max_tokens=200
)

print(response.choices[0].message.content)
"""

SEED_000_VIDEO = """
response = client.chat.completions.create(
    model="Qwen/Qwen2.5-VL-72B-Instruct",
    messages=[{
        "role": "user",
        "content": [
            {
                "type": "text",
                "text": "Describe what happens in this video."
            },
            {
                "type": "video_url",
                "video_url": {
                    "url": "https://example.com/video.mp4"
                }
            }
        ]
    }],
    max_tokens=500
)

print(response.choices[0].message.content)
"""

SEED_000_LOGPROBS = """
response = client.chat.completions.create(
    model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
    messages=[{"role": "user", "content": "The capital of France is"}],
    logprobs=3,
    max_tokens=10
)

logprobs_data = response.choices[0].logprobs
for token, logprob in zip(logprobs_data.tokens, logprobs_data.token_logprobs):
    print(f"Token: '{token}', Log Probability: {logprob}")
"""

SEED_001_BASIC = """
from together import Together

client = Together()

response = client.chat.completions.create(
    model="meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Explain quantum computing in one sentence."},
    ],
    max_tokens=100,
    temperature=0.7,
    top_p=0.9,
)

print(response.choices[0].message.content)
"""

SEED_001_JSON = """
from together import Together

client = Together()

response = client.chat.completions.create(
    model="meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    messages=[
        {"role": "system", "content": "Output valid JSON only."},
        {"role": "user", "content": "List three programming languages with their year of creation."},
    ],
    response_format={"type": "json_object"},
)

print(response.choices[0].message.content)
"""

SEED_001_TOOLS = """
from together import Together

client = Together()

tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a location.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City name"},
                },
                "required": ["location"],
            },
        },
    }
]

response = client.chat.completions.create(
    model="meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
    messages=[{"role": "user", "content": "What's the weather in Tokyo?"}],
    tools=tools,
    tool_choice="auto",
)

# Check if the model made a tool call
choice = response.choices[0]
if choice.finish_reason == "tool_calls":
    for tool_call in choice.message.tool_calls:
        print(f"Function: {tool_call.function.name}")
        print(f"Arguments: {tool_call.function.arguments}")
"""

SEED_002_SINGLE = """
import os
from together import Together

client = Together()

response = client.chat.completions.create(
    model="meta-llama/Meta-Llama-3-8B-Instruct-Turbo",
    messages=[{"role": "user", "content": "What are some fun things to do in New York?"}],
)

print(response.choices[0].message.content)
"""

SEED_002_HISTORY = """
import os
from together import Together

client = Together()

response = client.chat.completions.create(
    model="meta-llama/Meta-Llama-3-8B-Instruct-Turbo",
    messages=[
      {"role": "user", "content": "What are some fun things to do in New York?"},
      {"role": "assistant", "content": "You could go to the Empire State Building!"},
      {"role": "user", "content": "That sounds fun! Where is it?"},
    ],
)

print(response.choices[0].message.content)
"""

SEED_002_SYSTEM = """
import os
from together import Together

client = Together()

response = client.chat.completions.create(
    model="meta-llama/Llama-3-8b-chat-hf",
    messages=[
      {"role": "system", "content": "You are a helpful travel guide."},
      {"role": "user", "content": "What are some fun things to do in New York?"},
    ],
)

print(response.choices[0].message.content)
"""

SEED_003_CODE = """
from together import Together

client = Together()

response = client.completions.create(
    model="codellama/CodeLlama-34b-Python-hf",
    prompt="def fibonacci(n):",
    max_tokens=200,
    temperature=0.1,
    stop=["\\n\\n", "def "]
)

print(response.choices[0].text)
"""

SEED_003_CREATIVE = """
response = client.completions.create(
    model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
    prompt="Once upon a time in a magical forest,",
    max_tokens=300,
    temperature=0.8,
    top_p=0.9
)

print(response.choices[0].text)
"""

SEED_003_MULTIPLE = """
response = client.completions.create(
    model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
    prompt="The benefits of renewable energy include:",
    max_tokens=100,
    temperature=0.7,
    n=3 # Generate 3 different completions
)

for i, choice in enumerate(response.choices):
    print(f"Completion {i+1}: {choice.text}")
"""

SEED_003_ADVANCED = """
response = client.completions.create(
    model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
    prompt="Artificial intelligence will",
    max_tokens=150,
    temperature=0.7,
    top_p=0.9,
    top_k=50,
    repetition_penalty=1.1,
    presence_penalty=0.2,
    frequency_penalty=0.1,
    stop=[".", "!", "?"],
    logprobs=5
)

print(f"Generated text: {response.choices[0].text}")
print(f"Finish reason: {response.choices[0].finish_reason}")

if response.choices[0].logprobs:
    print("Token probabilities:")
    for token, logprob in zip(
        response.choices[0].logprobs.tokens,
        response.choices[0].logprobs.token_logprobs
    ):
        print(f"  '{token}': {logprob}")
"""


def seed_logprobs_response() -> dict[str, Any]:
    return chat_response(
        " Paris.", logprobs={"tokens": [" Paris", "."], "token_logprobs": [-0.0123, -0.5], "top_logprobs": None}
    )


def seed_advanced_response(logprobs: Any) -> dict[str, Any]:
    body = completion_response(" change the world", finish_reason="stop")
    body["choices"][0]["logprobs"] = logprobs
    return body


SEED_EXAMPLES = [
    pytest.param(
        SEED_000_SIMPLE, False, chat_response("Quantum computers use qubits."),
        "Quantum computers use qubits.\n",
        {"model": "meta-llama/Llama-3.2-3B-Instruct-Turbo", "max_tokens": 300, "temperature": 0.7},
        id="000-simple-text-chat",
    ),
    pytest.param(
        SEED_000_IMAGE, True, chat_response("A cat on a sofa."), "A cat on a sofa.\n",
        {"model": "meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo", "max_tokens": 200},
        id="000-image",
    ),
    pytest.param(
        SEED_000_VIDEO, True, chat_response("A dog runs."), "A dog runs.\n",
        {"model": "Qwen/Qwen2.5-VL-72B-Instruct", "max_tokens": 500},
        id="000-video",
    ),
    pytest.param(
        SEED_000_LOGPROBS, True, seed_logprobs_response(),
        "Token: ' Paris', Log Probability: -0.0123\nToken: '.', Log Probability: -0.5\n",
        {"logprobs": 3, "max_tokens": 10},
        id="000-logprobs",
    ),
    pytest.param(
        SEED_001_BASIC, False, chat_response("Qubits can be 0 and 1 at once."), "Qubits can be 0 and 1 at once.\n",
        {"model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "max_tokens": 100, "temperature": 0.7, "top_p": 0.9},
        id="001-basic",
    ),
    pytest.param(
        SEED_001_JSON, False, chat_response('{"languages": [{"name": "C", "year": 1972}]}'),
        '{"languages": [{"name": "C", "year": 1972}]}\n',
        {"response_format": {"type": "json_object"}},
        id="001-json-mode",
    ),
    pytest.param(
        SEED_001_TOOLS, False,
        chat_response(None, finish_reason="tool_calls", message={"role": "assistant", "content": None, "tool_calls": TOOL_CALLS}),
        'Function: get_weather\nArguments: {"location": "Tokyo"}\nFunction: get_time\nArguments: {}\n',
        {"tool_choice": "auto", "model": "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"},
        id="001-tools",
    ),
    pytest.param(
        SEED_001_TOOLS, False, chat_response("It is sunny."), "",
        {"tool_choice": "auto"},
        id="001-tools-no-call",
    ),
    pytest.param(
        SEED_002_SINGLE, False, chat_response("Visit Central Park.\nSee a show."), "Visit Central Park.\nSee a show.\n",
        {"model": "meta-llama/Meta-Llama-3-8B-Instruct-Turbo"},
        id="002-single-query",
    ),
    pytest.param(
        SEED_002_HISTORY, False, chat_response("It is in Midtown Manhattan."), "It is in Midtown Manhattan.\n",
        {"messages": [
            {"role": "user", "content": "What are some fun things to do in New York?"},
            {"role": "assistant", "content": "You could go to the Empire State Building!"},
            {"role": "user", "content": "That sounds fun! Where is it?"},
        ]},
        id="002-history",
    ),
    pytest.param(
        SEED_002_SYSTEM, False, chat_response("Try the High Line 🗽."), "Try the High Line 🗽.\n",
        {"model": "meta-llama/Llama-3-8b-chat-hf"},
        id="002-system-prompt",
    ),
    pytest.param(
        SEED_003_CODE, False, completion_response("\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)"),
        "\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
        {"prompt": "def fibonacci(n):", "max_tokens": 200, "temperature": 0.1, "stop": ["\n\n", "def "]},
        id="003-code-completion",
    ),
    pytest.param(
        SEED_003_CREATIVE, True, completion_response(" there lived a fox."), " there lived a fox.\n",
        {"prompt": "Once upon a time in a magical forest,", "top_p": 0.9},
        id="003-creative",
    ),
    pytest.param(
        SEED_003_MULTIPLE, True, completion_response(" clean air", " jobs", " security"),
        "Completion 1:  clean air\nCompletion 2:  jobs\nCompletion 3:  security\n",
        {"n": 3, "max_tokens": 100},
        id="003-multiple",
    ),
    pytest.param(
        SEED_003_ADVANCED, True,
        seed_advanced_response({"tokens": [" change", " the", " world"], "token_logprobs": [-0.25, -0.01, -1.5]}),
        "Generated text:  change the world\nFinish reason: stop\nToken probabilities:\n"
        "  ' change': -0.25\n  ' the': -0.01\n  ' world': -1.5\n",
        {"top_k": 50, "repetition_penalty": 1.1, "presence_penalty": 0.2, "frequency_penalty": 0.1,
         "stop": [".", "!", "?"], "logprobs": 5},
        id="003-advanced",
    ),
    pytest.param(
        SEED_003_ADVANCED, True, seed_advanced_response(None),
        "Generated text:  change the world\nFinish reason: stop\n",
        {"logprobs": 5},
        id="003-advanced-no-logprobs",
    ),
]  # fmt: skip


def run_seed(code: str, needs_client: bool, capsys: pytest.CaptureFixture) -> str:
    """Run an example with only its import changed; return what it printed."""
    source = (SEED_SETUP if needs_client else "") + code
    assert "from together import" in source
    source = source.replace("from together import", "from together_lite import")
    capsys.readouterr()
    exec(compile(source, "<seed example>", "exec"), {"__name__": "__seed__"})
    return capsys.readouterr().out


SEED_STREAM_000_CHAT = (
    SEED_SETUP
    + """
stream = client.chat.completions.create(
model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
messages=[{"role": "user", "content": "Write a short story about AI"}],
stream=True,
max_tokens=500
)

for chunk in stream:
    if chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
"""
)

SEED_STREAM_001_CHAT = """
from together import Together

client = Together()

stream = client.chat.completions.create(
    model="meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    messages=[{"role": "user", "content": "Write a haiku about Python."}],
    stream=True,
)

for chunk in stream:
    if chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
"""

SEED_STREAM_002_CHAT = """
import os
from together import Together

client = Together()

stream = client.chat.completions.create(
  model="meta-llama/Llama-3-8b-chat-hf",
  messages=[{"role": "user", "content": "What are some fun things to do in New York?"}],
  stream=True,
)

for chunk in stream:
  print(chunk.choices[0].delta.content or "", end="", flush=True)
"""

SEED_STREAM_003_COMPLETIONS = (
    SEED_SETUP
    + """
stream = client.completions.create(
model="codellama/CodeLlama-34b-Python-hf",
prompt="# Python function to calculate prime numbers\\ndef is_prime(n):",
stream=True,
max_tokens=150,
temperature=0.2
)

for chunk in stream:
    if chunk.choices[0].text:
        print(chunk.choices[0].text, end="", flush=True)
"""
)

# Together's chunk shape (seed 002's sample), the last one with finish_reason and usage.
SEED_CHAT_STREAM = sse(
    *(
        {
            "choices": [{"index": 0, "delta": {"content": text}}],
            "id": "85ffbb8a6d2c4340-EWR",
            "token": {"id": 330 + i, "text": text, "logprob": 1, "special": False},
            "finish_reason": None,
            "generated_text": None,
            "stats": None,
            "usage": None,
            "created": 1709700707,
            "object": "chat.completion.chunk",
        }
        for i, text in enumerate([" A", ":", " Sure", " thing"])
    ),
    {
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "eos"}],
        "id": "85ffbb8a6d2c4340-EWR",
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        "object": "chat.completion.chunk",
    },
)

SEED_COMPLETION_STREAM = sse(
    text_chunk("\n    if"),
    text_chunk(" n < 2:"),
    text_chunk("\n        return False", finish="length"),
)

SDK_HEADERS = {"x-request-id": "req_123", "x-ratelimit-remaining-requests": "59"}


class ParsedPerson:
    """A stand-in for a pydantic model: the two class methods parse() reads, and nothing of pydantic."""

    def __init__(self, name: str, age: int | None) -> None:
        self.name, self.age = name, age

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]:
        return {
            "title": "ParsedPerson",
            "type": "object",
            "properties": {
                "name": {"title": "Name", "type": "string"},
                "age": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None, "title": "Age"},
            },
            "required": ["name"],
        }

    @classmethod
    def model_validate_json(cls, text: str) -> ParsedPerson:
        data = json.loads(text)
        if not isinstance(data.get("name"), str):
            raise ValueError("1 validation error for ParsedPerson: name Field required")
        return cls(data["name"], data.get("age"))


TYPED_PROGRAM = """
import asyncio

from together_lite import AsyncTogether, Together

client = Together()
response = client.chat.completions.create(
    model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
    messages=[{"role": "user", "content": "Explain quantum computing in simple terms."}],
    max_tokens=300,
    temperature=0.7,
)
print(response.choices[0].message.content)
print(response.usage.total_tokens)

stream = client.chat.completions.create(
    model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
    messages=[{"role": "user", "content": "Write a short story about AI"}],
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)

completion = client.completions.create(model="m", prompt="The capital of France is", max_tokens=5)
text: str = completion.choices[0].text
raw = client.chat.completions.with_raw_response.create(model="m", messages=[])
print(raw.headers.get("x-request-id"), raw.parse())


async def main() -> None:
    async with AsyncTogether() as aclient:
        responses = await asyncio.gather(
            *[aclient.chat.completions.create(model="m", messages=[{"role": "user", "content": q}]) for q in "ab"]
        )
        for answer in responses:
            print(answer.choices[0].message.content)
        astream = await aclient.chat.completions.create(model="m", messages=[], stream=True)
        async for piece in astream:
            print(piece.choices[0].delta.content or "", end="", flush=True)


asyncio.run(main())
"""

MISSPELT_PROGRAM = """
from together_lite import AsyncTogether, Together


def sync_call() -> None:
    Together().chat.completions.create(model="m", messages=[], temprature=0.5)


async def async_call() -> None:
    await AsyncTogether().completions.create(model="m", prompt="p", max_token=5)
"""


@pytest.fixture(scope="session")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """mypy --strict's report on the typed and the misspelt program, checked together in one run of
    its own process (in this process its objects would slow every later garbage collection)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (CI installs it for this check)")
    folder = tmp_path_factory.mktemp("mypy")
    (folder / "typed_program.py").write_text(TYPED_PROGRAM)
    (folder / "misspelt_program.py").write_text(MISSPELT_PROGRAM)
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(folder / "cache"), "--no-error-summary"]
    env = {**os.environ, "MYPYPATH": os.path.dirname(os.path.abspath(tl.__file__))}
    result = subprocess.run(
        [*command, "typed_program.py", "misspelt_program.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 2 would be a crash or bad usage
    return result.stdout + result.stderr


def mypy_lines_about(output: str, program: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(program + ":")]


# -- Fixtures: data of the async tests ----------------------------------------

ASYNC_SEED_CHAT_PROCESSING = """
import asyncio
from together import AsyncTogether

async def process_chats():
    client = AsyncTogether()

    messages_list = [
        [{"role": "user", "content": "Explain machine learning"}],
        [{"role": "user", "content": "What is deep learning?"}],
        [{"role": "user", "content": "How do neural networks work?"}]
    ]

    tasks = [
        client.chat.completions.create(
            model="meta-llama/Llama-3.2-3B-Instruct-Turbo",
            messages=messages,
            max_tokens=200
        )
        for messages in messages_list
    ]

    responses = await asyncio.gather(*tasks)

    for i, response in enumerate(responses):
        print(f"Response {i+1}: {response.choices[0].message.content}")

asyncio.run(process_chats())
"""

ASYNC_SEED_CHAT_COMPLETION = """
import asyncio
from together import AsyncTogether

async def main():
    client = AsyncTogether()

    response = await client.chat.completions.create(
        model="meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        messages=[{"role": "user", "content": "Hello, world!"}],
        max_tokens=50,
    )
    print(response.choices[0].message.content)

asyncio.run(main())
"""

ASYNC_SEED_NOTE_ON_ASYNC = """
import os, asyncio
from together import AsyncTogether

async_client = AsyncTogether()
messages = [
    "What are the top things to do in San Francisco?",
    "What country is Paris in?",
]

async def async_chat_completion(messages):
    async_client = AsyncTogether(api_key=os.environ.get("TOGETHER_API_KEY"))
    tasks = [
        async_client.chat.completions.create(
            model="mistralai/Mixtral-8x7B-Instruct-v0.1",
            messages=[{"role": "user", "content": message}],
        )
        for message in messages
    ]
    responses = await asyncio.gather(*tasks)

    for response in responses:
        print(response.choices[0].message.content)

asyncio.run(async_chat_completion(messages))
"""

ASYNC_SEED_BATCH_PROCESSING = """
import asyncio
from together import AsyncTogether

async def process_completions():
    client = AsyncTogether()

    prompts = [
        "Write a Python function to sort a list:",
        "Explain the concept of recursion:",
        "Create a simple web scraper in Python:"
    ]

    tasks = [
        client.completions.create(
            model="codellama/CodeLlama-34b-Python-hf",
            prompt=prompt,
            max_tokens=200,
            temperature=0.3
        )
        for prompt in prompts
    ]

    responses = await asyncio.gather(*tasks)

    for i, response in enumerate(responses):
        print(f"Response {i+1}: {response.choices[0].text}")

asyncio.run(process_completions())
"""


def chat_body(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


LLAMA_32 = "meta-llama/Llama-3.2-3B-Instruct-Turbo"

MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"

CODELLAMA = "codellama/CodeLlama-34b-Python-hf"

ERROR_BODY = {"error": {"message": "nope", "type": "invalid_request_error", "code": "c1", "param": "p"}}


# -- Fixtures: data of the multimodal helpers tests ---------------------------

CLI_SIGNATURES = [
    (CLI_PNG, "image/png"),
    (CLI_JPEG, "image/jpeg"),
    (b"GIF87a" + bytes(10), "image/gif"),
    (b"GIF89a" + bytes(10), "image/gif"),
    (b"BM" + bytes(20), "image/bmp"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(12), "image/webp"),
    (CLI_MP4, "video/mp4"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", "video/quicktime"),
    (b"\x1aE\xdf\xa3" + bytes(12), "video/webm"),
]


# -- Fixtures: data of the security tests -------------------------------------


def stalling_url(raw_server: Any) -> str:
    return str(raw_server(send_then(b"", "stall")).url)


KEY_CASES = ["401", "500-after-retry", "timeout", "refused", "reset", "stream-error", "html-200", "redirect-away"]

LOG_SCRIPT = r"""
import sys
import together_lite as tl

url, key = sys.argv[1], sys.argv[2]
client = tl.Together(api_key=key, base_url=url, max_retries=2, timeout=2)
SKIP_SLEEPS
print(client, repr(client))
print(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]))
for piece in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
    print(piece)
try:
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
except tl.TogetherException as exc:
    print(repr(exc), exc, exc.args, exc.headers, exc.body)
    sys.exit(3)
""".replace("SKIP_SLEEPS", SKIP_SLEEPS_SOURCE)


# -- Fixtures: data of the leak tests -----------------------------------------

SOAK_SERVER = r"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EVENT = {"id": "soak", "object": "chat.completion.chunk", "created": 1, "model": "m"}
ANSWER = json.dumps({
    "id": "soak", "object": "chat.completion", "created": 1700000000, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()
TOKEN = {**EVENT, "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}
LAST = {**EVENT, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
STREAM = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in [TOKEN] * 19 + [LAST]) + b"data: [DONE]\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        if request.get("stream"):
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(STREAM), STREAM))
        else:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ANSWER)))
            self.end_headers()
            self.wfile.write(ANSWER)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def soak_url() -> Iterator[str]:
    """A loopback server in its own process, so its sockets and threads are not counted as ours."""
    process = subprocess.Popen([sys.executable, "-c", SOAK_SERVER], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def soak_call(client: tl.Together, index: int) -> None:
    messages = [{"role": "user", "content": f"call {index}"}]
    if index % 5:
        assert client.chat.completions.create(model="m", messages=messages).choices[0].message.content == "ok"
        return
    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    if index % 10 == 0:  # every tenth call, so every other stream, is broken off early
        next(iter(stream))
        stream.close()
        return
    assert texts(stream) == [" tok"] * 19


def soak_mix(client: tl.Together, sequential: int, threaded: int, threads: int = 8) -> None:
    for index in range(sequential):
        soak_call(client, index)
    errors: list[BaseException] = []
    lock = threading.Lock()
    counter = iter(range(threaded))

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            try:
                soak_call(client, index)
            except Exception as exc:  # reported below
                errors.append(exc)
                return

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    assert errors == []


# -- Errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, expected",
    [
        (400, tl.BadRequestError),
        (401, tl.AuthenticationError),
        (403, tl.PermissionDeniedError),
        (404, tl.NotFoundError),
        (409, tl.ConflictError),
        (415, tl.InvalidRequestError),
        (422, tl.UnprocessableEntityError),
        (429, tl.RateLimitError),
        (500, tl.InternalServerError),
        (502, tl.InternalServerError),
        (503, tl.ServiceUnavailableError),
        (504, tl.InternalServerError),
        (418, tl.APIStatusError),
    ],
)
def test_error_status_maps_to_its_class(server: Server, client: tl.Together, status: int, expected: type) -> None:
    server.reply(Reply(status, error_body("nope")))
    with pytest.raises(tl.TogetherException) as info:
        chat(client)
    error = info.value
    assert type(error) is expected
    assert isinstance(error, tl.APIError)
    assert isinstance(error, tl.APIStatusError)
    assert isinstance(error, tl.TogetherError)
    assert isinstance(error, tl.InvalidRequestError) == (status in V1_INVALID)
    assert isinstance(error, tl.InternalServerError) == (status >= 500)
    assert isinstance(error, tl.APIConnectionError) is False
    assert error.status_code == status
    assert error.http_status == status
    assert str(error) == f"Error code: {status} - nope"
    assert len(server.requests) == 1


def test_error_hierarchy_matches_the_issue() -> None:
    assert tl.TogetherError is tl.TogetherException
    assert issubclass(tl.APIError, tl.TogetherException)
    assert issubclass(tl.ServiceUnavailableError, tl.InternalServerError)
    assert issubclass(tl.RateLimitError, tl.APIError)
    assert issubclass(tl.AuthenticationError, tl.APIError)
    assert issubclass(tl.APIConnectionError, tl.APIError)
    assert issubclass(tl.Timeout, tl.APIConnectionError)
    assert issubclass(tl.APITimeoutError, tl.Timeout)
    assert not issubclass(tl.APIConnectionError, tl.APIStatusError)
    assert not issubclass(tl.APIError, (TypeError, ValueError, OSError))


def test_error_message_code_param_type_body_and_headers(server: Server, client: tl.Together) -> None:
    server.reply(Reply(404, MODEL_NOT_FOUND, headers={"x-request-id": "req-123", "cf-ray": "ray-1"}))
    with pytest.raises(tl.NotFoundError) as info:
        chat(client, model="x")
    error = info.value
    assert str(error) == "Error code: 404 - Unable to access model x."
    assert error.message == str(error)
    assert (error.code, error.param, error.type) == ("model_not_found", "model", "invalid_request_error")
    assert error.body == MODEL_NOT_FOUND
    assert error.headers["x-request-id"] == "req-123"
    assert error.headers["content-type"] == "application/json"
    assert error.request_id == "req-123"


def test_error_headers_answer_to_any_case_and_api_response_holds_the_error_object(
    server: Server, client: tl.Together
) -> None:
    server.reply(Reply(404, MODEL_NOT_FOUND, headers={"X-Request-Id": "req-123", "Retry-After": "3"}))
    with pytest.raises(tl.NotFoundError) as info:
        chat(client)
    error = info.value
    assert error.headers.get("Retry-After") == error.headers["RETRY-AFTER"] == error.headers["retry-after"] == "3"
    assert "X-Request-ID" in error.headers and "x-nope" not in error.headers and 1 not in error.headers
    assert error.headers.get("X-Nope", "default") == "default"
    assert isinstance(error.api_response, tl.ErrorResponse)
    assert error.api_response.message == "Unable to access model x."
    assert (error.api_response.type, error.api_response.code) == ("invalid_request_error", "model_not_found")
    assert pickle.loads(pickle.dumps(error)).headers["Retry-After"] == "3"


def test_an_error_without_an_error_object_has_no_api_response(server: Server, client: tl.Together) -> None:
    server.reply(Reply(502, body=HTML_502, content_type="text/html", headers={"x-should-retry": "false"}))
    with pytest.raises(tl.APIStatusError) as info:
        chat(client)
    assert info.value.api_response is None


def test_stream_headers_answer_to_any_case(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=sse(chunk("a", finish="stop")), headers={"X-Request-Id": "req-9"}))
    with chat(client, stream=True) as stream:
        assert stream.headers["X-Request-Id"] == stream.headers.get("x-request-id") == "req-9"
        assert stream.headers.get("Content-Type") == "text/event-stream"
        list(stream)


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_that_is_not_json_is_a_json_error(server: Server, client: tl.Together, stream: bool) -> None:
    if stream:
        server.reply(Reply(chunks=sse(chunk("a"), "{broken")))
    else:
        server.reply(Reply(200, body=b"{broken", content_type="application/json"))
    with pytest.raises(tl.JSONError) as info:
        list(chat(client, stream=True)) if stream else chat(client)
    assert isinstance(info.value, tl.APIError) and not isinstance(info.value, tl.APIStatusError)


def test_error_request_id_falls_back_to_cf_ray(server: Server, client: tl.Together) -> None:
    server.reply(Reply(404, MODEL_NOT_FOUND, headers={"CF-RAY": "8f00-EWR"}))
    with pytest.raises(tl.NotFoundError) as info:
        chat(client)
    assert info.value.request_id == "8f00-EWR"


def test_error_without_request_headers_has_no_request_id(server: Server, client: tl.Together) -> None:
    server.reply(Reply(404, MODEL_NOT_FOUND))
    with pytest.raises(tl.NotFoundError) as info:
        chat(client)
    assert info.value.request_id is None


@pytest.mark.parametrize(
    "status, body, content_type, expected",
    [
        pytest.param(
            400, b'{"error": "just a string"}', "application/json", "Error code: 400 - just a string", id="error-string"
        ),
        pytest.param(
            400, b'{"message": "flat message"}', "application/json", "Error code: 400 - flat message", id="flat-message"
        ),
        pytest.param(
            400,
            b'{"status": "failure", "message": "together-ai error: outer", "error": {"message": "inner"}}',
            "application/json",
            "Error code: 400 - inner",
            id="nested-and-flat",
        ),
        pytest.param(
            422, b'{"detail": "Field required"}', "application/json", "Error code: 422 - Field required", id="detail"
        ),
        pytest.param(
            422,
            b'{"detail": [{"loc": ["body", "model"], "msg": "Field required", "type": "missing"}]}',
            "application/json",
            "Error code: 422 - Field required",
            id="validation-list",
        ),
        pytest.param(
            400, b'{"error": {"code": 400}}', "application/json", "Error code: 400 - Bad Request", id="int-code"
        ),
        pytest.param(
            500, b'{"error": {}}', "application/json", "Error code: 500 - Internal Server Error", id="empty-object"
        ),
        pytest.param(400, b"[1, 2]", "application/json", "Error code: 400 - Bad Request", id="json-list"),
        pytest.param(
            413,
            b"Request Entity Too Large\n",
            "text/plain",
            "Error code: 413 - Request Entity Too Large",
            id="text-plain",
        ),
        pytest.param(502, HTML_502, "text/html", "Error code: 502 - 502 Bad Gateway", id="html-title"),
        pytest.param(500, b"", None, "Error code: 500 - Internal Server Error", id="empty-body"),
        pytest.param(503, b"   \n", "text/plain", "Error code: 503 - Service Unavailable", id="blank-body"),
        pytest.param(
            400, b'{"error": null, "message": "top"}', "application/json", "Error code: 400 - top", id="error-null"
        ),
        pytest.param(
            400,
            b'{"error": {"message": "max_tokens must be < 4096 and > 0; stop \'</s>\' or <|eot_id|>"}}',
            "application/json",
            "Error code: 400 - max_tokens must be < 4096 and > 0; stop '</s>' or <|eot_id|>",
            id="json-message-with-angle-brackets",
        ),
        pytest.param(
            400,
            b'{"error": {"message": "' + b"long " * 100 + b'end"}}',
            "application/json",
            "Error code: 400 - " + "long " * 100 + "end",
            id="json-message-not-cut",
        ),
        pytest.param(
            400,
            b'data: {"error": {"message": "bad request in stream", "type": "invalid_request_error"}}\n\n',
            "text/event-stream",
            "Error code: 400 - bad request in stream",
            id="sse-error-body",
        ),
    ],
)
def test_other_error_body_shapes_give_a_clean_message(
    server: Server, client: tl.Together, status: int, body: bytes, content_type: str | None, expected: str
) -> None:
    server.reply(Reply(status, body=body, content_type=content_type))
    with pytest.raises(tl.APIStatusError) as info:
        chat(client)
    assert str(info.value) == expected
    assert str(info.value).count("Error code") == 1
    assert info.value.status_code == status


def test_text_error_body_is_kept_as_text(server: Server, client: tl.Together) -> None:
    server.reply(Reply(413, body=b"Request Entity Too Large\n", content_type="text/plain"))
    with pytest.raises(tl.APIStatusError) as info:
        chat(client)
    assert info.value.body == "Request Entity Too Large"


def test_empty_error_body_uses_the_reason_phrase_sent(server: Server, client: tl.Together) -> None:
    server.reply(status_with_reason(400, "Model Overloaded Today"))
    with pytest.raises(tl.BadRequestError) as info:
        chat(client)
    assert str(info.value) == "Error code: 400 - Model Overloaded Today"
    assert info.value.body is None


def test_error_object_with_integer_code_gives_a_clean_message(server: Server, client: tl.Together) -> None:
    server.reply(Reply(400, {"error": {"code": 400}}))
    with pytest.raises(tl.BadRequestError) as info:
        chat(client)
    assert info.value.code == 400
    assert info.value.status_code == 400
    assert info.value.body == {"error": {"code": 400}}
    assert str(info.value) == "Error code: 400 - Bad Request"


@pytest.mark.parametrize(
    "error",
    [
        status_error(tl.Response(404, {"x-request-id": "r1"}, content=json.dumps(MODEL_NOT_FOUND).encode())),
        status_error(tl.Response(502, content=HTML_502, reason_phrase="Bad Gateway")),
        status_error(tl.Response(400, content=b'{"error": {"code": 400}}')),
        tl.APIConnectionError("Connection error."),
        tl.APITimeoutError("Request timed out."),
        tl.AuthenticationError("no key"),
    ],
    ids=["404", "502-html", "int-code", "connection", "timeout", "no-key"],
)
def test_error_repr_and_pickle_never_crash(error: tl.TogetherException) -> None:
    text = repr(error)
    assert text.startswith(type(error).__name__ + "(")
    if error.status_code is not None:
        assert f"status_code={error.status_code}" in text
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is type(error)
    assert restored.status_code == error.status_code
    assert str(restored) == str(error)
    assert restored.body == error.body
    assert restored.request_id == error.request_id


def test_raised_http_error_survives_pickle(server: Server, client: tl.Together) -> None:
    server.reply(Reply(404, MODEL_NOT_FOUND, headers={"x-request-id": "req-9"}))
    with pytest.raises(tl.NotFoundError) as info:
        chat(client)
    restored = pickle.loads(pickle.dumps(info.value))
    assert (type(restored), restored.status_code, restored.http_status) == (tl.NotFoundError, 404, 404)
    assert (restored.code, restored.request_id, str(restored)) == ("model_not_found", "req-9", str(info.value))
    assert "req-9" in repr(info.value)


def test_an_api_error_carries_the_response_and_the_request_as_the_sdks_print_them(server: Server) -> None:
    server.reply(
        Reply(404, {"error": {"message": "Unable to access model x.", "code": "model_not_found"}}, headers=SDK_HEADERS)
    )
    client = make_client(server, api_key="sk-secret-key-1")
    try:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    except tl.APIStatusError as e:
        print("Another non-200-range status code was received")
        print(e.status_code)
        print(e.response)
        error = e
    assert str(error) == "Error code: 404 - Unable to access model x."  # the v1 format
    assert (error.response.status_code, error.response.headers["X-Request-Id"]) == (404, "req_123")
    assert error.response.json()["error"]["code"] == "model_not_found" and "Unable" in error.response.text
    assert error.response.request is error.request and repr(error.response) == "<Response [404 Not Found]>"
    assert (error.request.method, error.request.url) == ("POST", server.url + "/chat/completions")
    assert "sk-secret-key-1" not in repr(vars(error.request)) + repr(error.request.headers)
    assert error.code == "model_not_found" and error.request_id == "req_123"


def test_a_connection_error_carries_the_request(server: Server) -> None:
    client = tl.Together(api_key="k", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    try:
        client.chat.completions.create(model="m", messages=[])
    except tl.APIConnectionError as e:
        print("The server could not be reached")
        print(e.__cause__)  # an underlying Exception, likely raised within the transport
        error = e
    assert error.request is not None and error.request.url.endswith("/chat/completions")


def test_errors_can_be_built_the_way_the_modern_sdks_build_them() -> None:
    request = tl.Request("POST", "https://api.together.xyz/v1/chat/completions")
    response = tl.Response(429, {"x-request-id": "r9", "Retry-After": "1"}, content=b"{}", request=request)
    error = tl.RateLimitError("slow down", response=response, body={"error": {"code": "rate_limited"}})
    assert (error.status_code, error.request_id, error.code, error.request) == (429, "r9", "rate_limited", request)
    assert error.headers["retry-after"] == "1" and isinstance(error, tl.APIStatusError)
    status = tl.APIStatusError("boom", response=tl.Response(502), body=None)
    assert (status.status_code, str(status), status.body) == (502, "boom", None)
    connection = tl.APIConnectionError(request=request)
    assert (str(connection), connection.request) == ("Connection error.", request)
    for timeout in (tl.APITimeoutError(request=request), tl.APITimeoutError(request)):
        assert (str(timeout), timeout.request) == ("Request timed out.", request)
    v1 = tl.TogetherException("v1 style", {"x-request-id": "r1"}, None, 500)
    assert (v1.status_code, v1.http_status, v1.request_id) == (500, 500, "r1")
    assert pickle.loads(pickle.dumps(error)).status_code == 429


# -- Result types -------------------------------------------------------------


def test_chat_result_is_a_typed_response(server: Server, client: tl.Together) -> None:
    response = chat(client)
    assert isinstance(response, tl.ChatCompletionResponse)
    assert (response.id, response.object, response.created, response.model) == (
        "chat-1",
        "chat.completion",
        1700000000,
        "m",
    )
    choice = response.choices[0]
    assert isinstance(choice, tl.ChatChoice) and isinstance(choice.message, tl.ChatMessage)
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello there."
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert isinstance(response.usage, tl.Usage)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (5, 3, 8)


def test_tool_calls_are_readable_as_attributes(server: Server, client: tl.Together) -> None:
    server.reply(Reply(200, chat_response(None, finish_reason="tool_calls", message={"role": "assistant", "content": None, "tool_calls": TOOL_CALLS})))  # fmt: skip
    response = chat(client, tools=TOOLS)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [type(call) for call in calls] == [tl.ToolCall, tl.ToolCall]
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in calls] == [
        ("call_1", "function", "get_weather", '{"location": "Tokyo"}'),
        ("call_2", "function", "get_time", "{}"),
    ]
    assert isinstance(calls[0].function, tl.FunctionCall)
    assert json.loads(calls[0].function.arguments) == {"location": "Tokyo"}


def test_logprobs_are_readable_as_attributes(server: Server, client: tl.Together) -> None:
    logprobs = {
        "tokens": [" Paris", "."],
        "token_logprobs": [-0.01, -0.2],
        "top_logprobs": [{" Paris": -0.01, " Lyon": -5.0}, {".": -0.2}],
        "token_ids": [12366, 13],
    }
    server.reply(Reply(200, chat_response(" Paris.", logprobs=logprobs)))
    response = chat(client, logprobs=2)
    lp = response.choices[0].logprobs
    assert isinstance(lp, tl.Logprobs)
    assert lp.tokens == [" Paris", "."]
    assert lp.token_logprobs == [-0.01, -0.2]
    assert lp.top_logprobs == [{" Paris": -0.01, " Lyon": -5.0}, {".": -0.2}]
    assert lp.token_ids == [12366, 13]


def test_echoed_prompt_parts_are_readable(server: Server, client: tl.Together) -> None:
    response_body = chat_response()
    response_body["prompt"] = [
        {"text": "<s>[INST] hi [/INST]", "logprobs": {"tokens": ["<s>", "hi"], "token_logprobs": [None, -1.5]}}
    ]
    server.reply(Reply(200, response_body))
    response = chat(client, echo=True, logprobs=1)
    part = response.prompt[0]
    assert isinstance(part, tl.PromptPart)
    assert part.text == "<s>[INST] hi [/INST]"
    assert part.logprobs.tokens == ["<s>", "hi"]
    assert part.logprobs.token_logprobs == [None, -1.5]


def test_n_three_gives_three_choices(server: Server, client: tl.Together) -> None:
    body = chat_response()
    body["choices"] = [
        {"index": i, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"}
        for i in range(3)
    ]
    server.reply(Reply(200, body))
    response = chat(client, n=3)
    assert [(c.index, c.message.content) for c in response.choices] == [
        (0, "answer 0"),
        (1, "answer 1"),
        (2, "answer 2"),
    ]
    assert server.requests[0].json["n"] == 3


def test_completion_result_is_a_typed_response(server: Server, client: tl.Together) -> None:
    server.reply(Reply(200, completion_response(" one", " two", " three")))
    response = client.completions.create(model="m", prompt="p", n=3)
    assert isinstance(response, tl.CompletionResponse)
    assert all(isinstance(c, tl.CompletionChoice) for c in response.choices)
    assert [c.text for c in response.choices] == [" one", " two", " three"]
    assert [c.finish_reason for c in response.choices] == ["length"] * 3
    assert response.usage.total_tokens == 6


def test_completion_logprobs_and_echo_are_readable(server: Server, client: tl.Together) -> None:
    body = completion_response()
    body["choices"][0]["logprobs"] = {"tokens": [" return", " n"], "token_logprobs": [-0.1, -0.3]}
    body["prompt"] = [{"text": "def f(n):", "logprobs": {"tokens": ["def", " f"], "token_logprobs": [None, -2.0]}}]
    server.reply(Reply(200, body))
    response = client.completions.create(model="m", prompt="def f(n):", echo=True, logprobs=1)
    assert response.choices[0].logprobs.tokens == [" return", " n"]
    assert response.prompt[0].text == "def f(n):"
    assert response.prompt[0].logprobs.token_logprobs == [None, -2.0]


def test_unknown_fields_at_every_level_are_kept(server: Server, client: tl.Together) -> None:
    body = response_with_unknown_fields()
    server.reply(Reply(200, body))
    response = chat(client)
    choice = response.choices[0]
    call = choice.message.tool_calls[0]
    assert response.service_tier == "flex"
    assert response.usage.cached_tokens == 2
    assert response.usage.prompt_tokens_details == {"cached_tokens": 2}
    assert choice.matched_stop == "\n"
    assert choice.message.annotations == [{"type": "cite"}]
    assert choice.logprobs.content == [{"token": "a"}]
    assert call.new_call_field == 7
    assert call.function.strict is True
    assert response.prompt[0].token_ids == [1]
    assert response.model_extra == {}  # service_tier and annotations are declared, as openai declares them
    assert choice.message.model_extra == {}
    assert choice.model_extra == {"matched_stop": "\n"}
    dump = response.model_dump()
    assert dump["service_tier"] == "flex"
    assert dump["usage"]["cached_tokens"] == 2
    assert dump["choices"][0]["matched_stop"] == "\n"
    assert dump["choices"][0]["message"]["annotations"] == [{"type": "cite"}]
    assert dump["choices"][0]["message"]["tool_calls"][0]["new_call_field"] == 7
    assert dump["choices"][0]["message"]["tool_calls"][0]["function"]["strict"] is True


@pytest.mark.parametrize(
    "body, read, expected",
    [
        pytest.param({**CHAT_RESPONSE, "usage": None}, lambda r: r.usage, None, id="usage-null"),
        pytest.param(
            {k: v for k, v in CHAT_RESPONSE.items() if k != "usage"}, lambda r: r.usage, None, id="usage-missing"
        ),
        pytest.param(
            {**CHAT_RESPONSE, "choices": [{"index": 0}]}, lambda r: r.choices[0].message, None, id="message-missing"
        ),
        pytest.param(
            {**CHAT_RESPONSE, "choices": [{"index": 0}]},
            lambda r: r.choices[0].finish_reason,
            None,
            id="finish-missing",
        ),
        pytest.param(
            {**CHAT_RESPONSE, "choices": [{"message": {}}]},
            lambda r: r.choices[0].message.content,
            None,
            id="content-missing",
        ),
        pytest.param(
            {**CHAT_RESPONSE, "choices": [{"message": {}}]},
            lambda r: r.choices[0].message.role,
            None,
            id="role-missing",
        ),
        pytest.param(
            {**CHAT_RESPONSE, "choices": [{"message": {"role": "assistant"}}]},
            lambda r: r.choices[0].index,
            None,
            id="index-missing",
        ),
        pytest.param({**CHAT_RESPONSE, "choices": None}, lambda r: r.choices, None, id="choices-null"),
        pytest.param(
            {}, lambda r: (r.id, r.object, r.created, r.model, r.choices, r.usage), (None,) * 6, id="empty-object"
        ),
        pytest.param(
            {**CHAT_RESPONSE, "usage": {"prompt_tokens": 5}}, lambda r: r.usage.total_tokens, None, id="usage-partial"
        ),
    ],
)
def test_missing_or_null_fields_read_as_none(
    server: Server, client: tl.Together, body: dict[str, Any], read: Callable[[Any], Any], expected: Any
) -> None:
    server.reply(Reply(200, body))
    assert read(chat(client)) == expected


def test_unknown_enum_like_values_are_plain_strings(server: Server, client: tl.Together) -> None:
    body = chat_response(finish_reason="content_filter", message={"role": "developer", "content": "x"})
    body["object"] = "chat.completion.v2"
    server.reply(Reply(200, body))
    response = chat(client)
    assert type(response.object) is str and response.object == "chat.completion.v2"
    assert type(response.choices[0].finish_reason) is str and response.choices[0].finish_reason == "content_filter"
    assert type(response.choices[0].message.role) is str and response.choices[0].message.role == "developer"


def test_model_dump_gives_plain_json_that_round_trips(server: Server, client: tl.Together) -> None:
    body = response_with_unknown_fields()
    server.reply(Reply(200, body))
    response = chat(client)
    dump = response.model_dump()
    assert_plain_json(dump)
    assert json.loads(json.dumps(dump)) == dump
    assert json.loads(response.model_dump_json()) == dump
    assert response.model_dump(exclude_none=True) == drop_none(body)
    assert json.loads(response.model_dump_json(exclude_none=True)) == drop_none(body)


def test_model_dump_takes_pydantic_options(server: Server, client: tl.Together) -> None:
    body = response_with_unknown_fields()
    server.reply(Reply(200, body))
    response = chat(client)
    assert response.model_dump(mode="json", by_alias=True, round_trip=False, warnings=False) == response.model_dump()
    assert response.model_dump(exclude_unset=True) == body  # exactly what the server sent
    assert response.model_dump(exclude_defaults=True) == response.model_dump(exclude_none=True)
    assert set(response.model_dump(include={"id", "model"})) == {"id", "model"}
    assert "choices" not in response.model_dump(exclude={"choices"})
    assert "usage" not in response.model_dump(exclude={"usage": True})
    assert json.loads(response.model_dump_json(exclude_unset=True, include={"id"})) == {"id": body["id"]}
    with pytest.raises(ValueError, match="mode"):
        response.model_dump(mode="xml")
    with pytest.raises(ValueError, match="nested"):
        response.model_dump(exclude={"choices": {0: {"logprobs"}}})
    with pytest.raises(TypeError):
        response.model_dump(no_such_option=True)


def test_results_have_pydantic_s_other_common_methods(server: Server, client: tl.Together) -> None:
    body = response_with_unknown_fields()
    server.reply(Reply(200, body))
    response = chat(client)
    assert response.dict() == response.model_dump() and json.loads(response.json()) == response.model_dump()
    assert dict(response.choices[0].message)["content"] == response.choices[0].message.content
    rebuilt = tl.ChatCompletionResponse.model_validate(body)
    assert rebuilt == response and rebuilt.choices[0].message.content == response.choices[0].message.content
    assert tl.ChatCompletionResponse.model_validate_json(json.dumps(body)) == response
    assert tl.ChatCompletionResponse.model_validate(response) is response
    with pytest.raises(TypeError, match="dict"):
        tl.ChatCompletionResponse.model_validate([body])
    ordered = collections.OrderedDict(id="o", choices=[collections.OrderedDict(index=0, message={"content": "x"})])
    validated = tl.ChatCompletionResponse.model_validate(ordered)
    assert isinstance(validated, tl.ChatCompletionResponse) and validated.choices[0].message.content == "x"
    assert type(validated.model_dump()["choices"][0]) is dict
    changed = response.model_copy(update={"model": "other"})
    assert (changed.model, response.model) == ("other", body["model"])
    deep = response.model_copy(deep=True)
    assert deep == response and deep.choices[0] is not response.choices[0]
    assert response.copy().choices[0] is response.choices[0]


def test_server_fields_named_like_pydantic_v1_methods_stay_data() -> None:
    response = parse_as(tl.ChatCompletionResponse, {"id": "1", "json": {"a": 1}, "copy": 2, "dict": 3})
    assert response.model_dump(exclude_none=True) == {"id": "1", "json": {"a": 1}, "copy": 2, "dict": 3}
    assert response.json == {"a": 1}
    assert json.loads(parse_as(tl.ChatCompletionResponse, {"id": "2"}).json())["id"] == "2"


def test_error_headers_behave_as_a_case_insensitive_dict() -> None:
    error = tl.APIStatusError("x", status_code=400, headers=[("Retry-After", "2")])
    headers = error.headers
    assert headers["retry-after"] == "2" and dict(headers) == {"retry-after": "2"}
    headers["X-Extra"] = "1"
    assert headers["x-extra"] == "1" and list(headers) == ["retry-after", "x-extra"]
    assert type(headers.copy()) is type(headers) and headers.copy()["RETRY-AFTER"] == "2"
    with pytest.raises(KeyError):
        headers[1]  # type: ignore[index]
    assert headers.get(None) is None  # type: ignore[arg-type]


def test_v1_constants_compare_equal_to_the_plain_strings_results_hold() -> None:
    choice = parse_as(tl.ChatChoice, {"finish_reason": "stop", "message": {"role": "assistant"}})
    assert choice.finish_reason == tl.FinishReason.StopSequence and type(choice.finish_reason) is str
    assert choice.message.role == tl.MessageRole.ASSISTANT
    assert tl.ObjectType("chat.completion.chunk") is tl.ObjectType.ChatCompletionChunk
    assert tl.FinishReason.Null == "" and tl.FinishReason("tool_calls") is tl.FinishReason.ToolCalls
    assert json.dumps({"role": tl.MessageRole.USER}) == '{"role": "user"}'


def test_model_dump_lists_declared_fields_even_when_absent(server: Server, client: tl.Together) -> None:
    response = chat(client)
    message = response.model_dump()["choices"][0]["message"]
    for name in ("role", "content", "tool_calls", "reasoning", "reasoning_content"):
        assert name in message
    assert message["tool_calls"] is None


def test_model_dump_json_indent_is_valid_json(server: Server, client: tl.Together) -> None:
    response = chat(client)
    text = response.model_dump_json(indent=2)
    assert "\n  " in text
    assert json.loads(text) == response.model_dump()


def test_reasoning_warnings_and_seed_are_declared(server: Server, client: tl.Together) -> None:
    plain = chat(client)
    assert plain.choices[0].message.reasoning is None
    assert plain.choices[0].message.reasoning_content is None
    assert plain.choices[0].seed is None
    assert plain.warnings is None
    body = chat_response(
        "42",
        message={"role": "assistant", "content": "42", "reasoning": "think", "reasoning_content": "deep"},
        seed=1234,
    )
    body["warnings"] = [{"message": "model is deprecated"}]
    server.reply(Reply(200, body))
    response = chat(client)
    message = response.choices[0].message
    assert (message.reasoning, message.reasoning_content) == ("think", "deep")
    assert response.choices[0].seed == 1234
    assert isinstance(response.warnings[0], tl.InferenceWarning)
    assert response.warnings[0].message == "model is deprecated"
    assert message.model_extra == {} and response.model_extra == {}


def test_results_compare_equal_by_content(server: Server, client: tl.Together) -> None:
    first, second = chat(client), chat(client)
    assert first == second
    assert first.choices[0].message == second.choices[0].message
    server.reply(Reply(200, chat_response("different")))
    assert chat(client) != first


def test_response_message_can_be_appended_to_the_next_request(server: Server, client: tl.Together) -> None:
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    response = chat(client, messages=messages)
    messages.append(response.choices[0].message)
    messages.append({"role": "user", "content": "more"})
    chat(client, messages=messages)
    assert server.requests[1].json["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "more"},
    ]


def test_tool_call_message_can_be_sent_back_with_the_tool_result(server: Server, client: tl.Together) -> None:
    server.reply(Reply(200, chat_response(None, finish_reason="tool_calls", message={"role": "assistant", "content": None, "tool_calls": TOOL_CALLS})))  # fmt: skip
    messages: list[Any] = [{"role": "user", "content": "Weather in Tokyo?"}]
    response = chat(client, messages=messages, tools=TOOLS)
    call = response.choices[0].message.tool_calls[0]
    messages.append(response.choices[0].message)
    messages.append({"role": "tool", "tool_call_id": call.id, "name": call.function.name, "content": '{"temp": 20}'})
    chat(client, messages=messages, tools=TOOLS)
    sent = server.requests[1].json["messages"]
    assert sent[1] == {"role": "assistant", "tool_calls": TOOL_CALLS}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp": 20}'}


def test_to_dict_and_to_json_leave_out_what_the_server_did_not_send(server: Server) -> None:
    server.reply(Reply(200, CHAT_RESPONSE, headers=SDK_HEADERS))
    completion = chat(make_client(server))
    data = completion.to_dict()
    assert data == CHAT_RESPONSE
    assert "refusal" not in data["choices"][0]["message"]
    assert completion.to_dict(exclude_unset=False)["choices"][0]["message"]["refusal"] is None
    assert json.loads(completion.to_json()) == CHAT_RESPONSE and completion.to_json().startswith('{\n  "id"')
    assert completion.to_json(indent=None).startswith('{"id":"chat-1",')
    assert completion.model_fields_set == set(CHAT_RESPONSE)
    assert completion._request_id == "req_123" and completion.choices[0]._request_id is None
    assert "_request_id" not in completion.to_dict() and "req_123" not in repr(completion)


def test_every_field_the_sdks_declare_reads_none_when_absent(server: Server) -> None:
    server.reply(Reply(chunks=sse(chunk("x"), chunk(finish="stop"))))
    first = next(iter(chat(make_client(server), stream=True)))
    assert first.choices[0].top_logprobs is None and first.choices[0].delta.refusal is None
    assert first.service_tier is None and first.system_fingerprint is None
    completion = chat(make_client(server))
    message = completion.choices[0].message
    assert (message.refusal, message.annotations, message.audio, message.function_call) == (None, None, None, None)
    assert (completion.service_tier, completion.usage.prompt_tokens_details) == (None, None)


def test_response_keys_named_like_methods_do_not_break_the_result(server: Server, client: tl.Together) -> None:
    server.reply(Reply(200, {**CHAT_RESPONSE, "_NESTED": 1, "model_dump": None, "_parse": "x"}))
    response = chat(client)
    assert response.choices[0].message.content == "Hello there."
    assert response.model_dump()["choices"][0]["message"]["content"] == "Hello there."


# -- Result types: Unicode ----------------------------------------------------


def test_unicode_round_trips_in_both_directions(server: Server, client: tl.Together) -> None:
    server.reply(
        Reply(200, body=json.dumps(chat_response(UNICODE_TEXT), ensure_ascii=False).encode("utf-8"),
              headers={"Content-Type": "application/json; charset=utf-8"})
    )  # fmt: skip
    response = chat(client, messages=[{"role": "user", "content": UNICODE_TEXT}])
    assert response.choices[0].message.content == UNICODE_TEXT
    assert server.requests[0].json["messages"][0]["content"] == UNICODE_TEXT
    assert "😀".encode() in server.requests[0].body
    assert "\u2028".encode("utf-8") in server.requests[0].body
    assert json.loads(response.model_dump_json())["choices"][0]["message"]["content"] == UNICODE_TEXT


def test_escaped_unicode_in_a_response_is_decoded(server: Server, client: tl.Together) -> None:
    server.reply(Reply(200, chat_response(UNICODE_TEXT)))  # json.dumps escapes to \uXXXX
    assert chat(client).choices[0].message.content == UNICODE_TEXT


@pytest.mark.parametrize("text", ["lone \ud800 high", "lone \udfff low", "\ud83d"])
def test_lone_surrogate_in_input_does_not_crash(server: Server, client: tl.Together, text: str) -> None:
    response = chat(client, messages=[{"role": "user", "content": text + " 漢字"}])
    assert response.choices[0].message.content == "Hello there."
    assert server.requests[0].json["messages"][0]["content"] == text + " 漢字"


def test_completion_prompt_unicode_is_sent_as_utf8(server: Server, client: tl.Together) -> None:
    server.default = Reply(200, COMPLETION_RESPONSE)
    client.completions.create(model="m", prompt="# 注释 😀\ndef f():")
    assert "# 注释 😀".encode() in server.requests[0].body
    assert server.requests[0].json["prompt"] == "# 注释 😀\ndef f():"


# -- Result types: odd successful responses -----------------------------------


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"<html><body>maintenance</body></html>", "text/html"),
        (b"not json", "application/json"),
        (b"", None),
        (b'{"choices": [', "application/json"),
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
    ],
)
def test_non_json_200_body_raises_api_error(
    server: Server, client: tl.Together, body: bytes, content_type: str | None
) -> None:
    server.reply(Reply(200, body=body, content_type=content_type))
    with pytest.raises(tl.APIError) as info:
        chat(client)
    assert not isinstance(info.value, ValueError)
    assert info.value.status_code == 200
    assert str(info.value).count("Error code") <= 1


def test_json_200_that_is_not_an_object_raises_api_error(server: Server, client: tl.Together) -> None:
    server.reply(Reply(200, [1, 2, 3]))
    with pytest.raises(tl.APIError):
        chat(client)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"error": {"message": "model crashed", "type": "server_error", "code": "oops"}}, "model crashed"),
        ({"error": "just text"}, "just text"),
    ],
)
def test_200_with_an_error_object_raises_api_error(
    server: Server, client: tl.Together, body: Any, message: str
) -> None:
    server.reply(Reply(200, body))
    with pytest.raises(tl.APIError) as info:
        chat(client)
    assert message in str(info.value)
    assert info.value.body == body


def test_completion_200_with_an_error_object_raises_api_error(server: Server, client: tl.Together) -> None:
    server.reply(Reply(200, {"error": {"message": "bad prompt"}}))
    with pytest.raises(tl.APIError, match="bad prompt"):
        client.completions.create(model="m", prompt="p")


@pytest.mark.parametrize(
    "reply",
    [
        Reply(204),
        Reply(200, body=b""),
        Reply(200, body=b"", content_type="application/json"),
        Reply(200, body=b"  \r\n\t ", content_type="application/json"),
    ],
    ids=["204", "empty-200", "empty-200-json", "blank-200-json"],
)
def test_an_empty_success_body_is_an_api_error(server: Server, reply: Reply) -> None:
    server.reply(reply)
    with pytest.raises(tl.APIError, match="empty body") as info:
        chat(make_client(server, max_retries=0))
    assert info.value.status_code == reply.status


@pytest.mark.parametrize("stream", [False, True])
def test_a_200_html_page_is_an_api_error_with_a_readable_message(server: Server, stream: bool) -> None:
    server.reply(Reply(200, body=HTML_PAGE, content_type="text/html; charset=utf-8"))
    with pytest.raises(tl.APIError) as info:
        chat(make_client(server, max_retries=0), stream=stream)
    message = str(info.value)
    assert "502 Bad Gateway" in message and "text/html" in message
    assert "<" not in message and "{" not in message
    assert info.value.status_code == 200


def test_a_200_html_page_without_a_title_is_summarised_as_text(server: Server) -> None:
    server.reply(Reply(200, body=b"<html><body><h1>Service\n  down</h1></body></html>", content_type="text/html"))
    with pytest.raises(tl.APIError, match="Service down") as info:
        chat(make_client(server, max_retries=0))
    assert "<" not in str(info.value)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/octet-stream", "text/html", "application/vnd.api+json", None]
)
def test_valid_json_under_a_wrong_content_type_is_parsed(server: Server, content_type: str | None) -> None:
    reply = Reply(200, body=chat_json("plain"))
    if content_type:
        reply.headers["Content-Type"] = content_type
    server.reply(reply)
    assert chat(make_client(server, max_retries=0)).choices[0].message.content == "plain"


@pytest.mark.parametrize("body", [b"null", b"42", b"[1, 2]", b'"text"'])
def test_a_json_body_that_is_not_an_object_is_an_api_error(server: Server, body: bytes) -> None:
    server.reply(Reply(200, body=body, content_type="application/json"))
    with pytest.raises(tl.APIError, match="not an object"):
        chat(make_client(server, max_retries=0))


@pytest.mark.parametrize("where", ["200-body", "stream-data", "500-body", "valid-but-deep"])
def test_deeply_nested_json_from_the_server_is_a_typed_error(server: Server, where: str) -> None:
    if where == "200-body":
        server.reply(Reply(200, body=DEEP, content_type="application/json"))
    elif where == "stream-data":
        server.reply(Reply(chunks=[b"data: " + DEEP + b"\n\n"]))
    elif where == "500-body":
        server.reply(Reply(500, body=DEEP, content_type="application/json"))
    else:
        server.reply(Reply(200, body=b"[" * 100000 + b"]" * 100000, content_type="application/json"))
    with pytest.raises(tl.TogetherException):
        list(chat(make_client(server, max_retries=0), stream=where == "stream-data"))


def test_json_that_is_not_an_object_is_named_by_its_type_not_echoed(server: Server, client: tl.Together) -> None:
    deep = "[" * 400 + "]" * 400  # echoing it back would mean serialising it again
    server.reply(Reply(200, body=deep.encode(), content_type="application/json"))
    with pytest.raises(tl.APIError, match="not an object but a list"):
        chat(client)
    server.reply(Reply(chunks=[f"data: {deep}\n\n".encode()]))
    with pytest.raises(tl.APIError, match="not an object but a list"):
        list(chat(client, stream=True))


# -- Requests -----------------------------------------------------------------


def test_chat_round_trip(server: Server, client: tl.Together) -> None:
    response = chat(client, max_tokens=5)
    assert response.choices[0].message.content == "Hello there."
    assert response.usage.total_tokens == 8
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.json == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert request.headers["authorization"] == "Bearer test-key"


def test_request_is_a_post(server: Server, client: tl.Together) -> None:
    seen: list[Any] = []
    server.reply(capture(Reply(200, CHAT_RESPONSE), seen))
    chat(client)
    assert seen[0][0] == "POST"


def test_request_body_is_compact_utf8_json(server: Server, client: tl.Together) -> None:
    messages = [{"role": "user", "content": "héllo ☃ 漢字"}]
    chat(client, messages=messages, temperature=0.5, stop=["a", "b"])
    body = server.requests[0].body
    decoded = json.loads(body.decode("utf-8"))
    assert body == json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert b", " not in body and b'": ' not in body
    assert "héllo ☃ 漢字".encode() in body
    assert b"\\u" not in body
    assert decoded["messages"] == messages


def test_request_headers_carry_auth_content_type_and_user_agent(server: Server, client: tl.Together) -> None:
    chat(client)
    headers = server.requests[0].headers
    assert headers["authorization"] == "Bearer test-key"
    assert headers["content-type"] == "application/json"
    assert f"together_lite/{tl.__version__}" in headers["user-agent"]
    assert int(headers["content-length"]) == len(server.requests[0].body)


def test_supplied_headers_are_sent_with_every_request(server: Server) -> None:
    with make_client(server, supplied_headers={"X-Project": "p1"}) as c:
        chat(c)
        c.completions.create(model="m", prompt="p")
    assert [r.headers.get("x-project") for r in server.requests] == ["p1", "p1"]
    assert server.requests[0].headers["authorization"] == "Bearer test-key"


def test_supplied_headers_can_override_user_agent(server: Server) -> None:
    seen: list[Any] = []
    server.reply(capture(Reply(200, CHAT_RESPONSE), seen))
    with make_client(server, supplied_headers={"User-Agent": "my-app/2.0"}) as c:
        chat(c)
    assert header_values(seen[0][1], "User-Agent") == ["my-app/2.0"]


def test_supplied_headers_override_user_agent_case_insensitively(server: Server) -> None:
    seen: list[Any] = []
    server.reply(capture(Reply(200, CHAT_RESPONSE), seen))
    with make_client(server, supplied_headers={"user-agent": "my-app/2.0"}) as c:
        chat(c)
    assert header_values(seen[0][1], "User-Agent") == ["my-app/2.0"]


def test_extra_headers_apply_to_one_call_only(server: Server, client: tl.Together) -> None:
    chat(client, extra_headers={"X-Trace": "abc"})
    chat(client)
    assert server.requests[0].headers.get("x-trace") == "abc"
    assert "x-trace" not in server.requests[1].headers
    assert "extra_headers" not in server.requests[0].json


def test_extra_headers_override_client_headers_case_insensitively(server: Server, client: tl.Together) -> None:
    seen: list[Any] = []
    server.reply(capture(Reply(200, CHAT_RESPONSE), seen))
    chat(client, extra_headers={"authorization": "Bearer other"})
    assert header_values(seen[0][1], "Authorization") == ["Bearer other"]


def test_default_query_and_extra_query_go_in_the_url_never_the_body(server: Server) -> None:
    client = make_client(server, default_query={"a": "1", "b": "2"})
    chat(client, extra_query={"b": "3", "c": "x y"})
    request = server.requests[0]
    assert request.path == "/v1/chat/completions?a=1&b=3&c=x+y"
    assert "extra_query" not in request.json


# -- Requests: chat parameters ------------------------------------------------


@pytest.mark.parametrize("name, value", CHAT_PARAMS)
def test_each_chat_parameter_lands_in_the_body_under_its_own_name(
    server: Server, client: tl.Together, name: str, value: Any
) -> None:
    chat(client, **{name: value})
    assert server.requests[0].json == {"model": "m", "messages": MESSAGES, name: value}


def test_all_chat_parameters_together_land_in_the_body(server: Server, client: tl.Together) -> None:
    params = dict(CHAT_PARAMS)
    chat(client, **params)
    assert server.requests[0].json == {"model": "m", "messages": MESSAGES, **params}


@pytest.mark.parametrize(
    "name, value",
    [
        ("temperature", 0),
        ("top_k", 0),
        ("seed", 0),
        ("max_tokens", 0),
        ("logprobs", 0),
        ("echo", False),
        ("min_p", 0.0),
    ],
)
def test_falsy_parameter_values_are_still_sent(server: Server, client: tl.Together, name: str, value: Any) -> None:
    chat(client, **{name: value})
    body = server.requests[0].json
    assert name in body and body[name] == value and type(body[name]) is type(value)


def test_parameters_left_none_are_absent(server: Server, client: tl.Together) -> None:
    chat(client, **{name: None for name, _ in CHAT_PARAMS})
    assert server.requests[0].json == {"model": "m", "messages": MESSAGES}


def test_stream_false_is_not_sent(server: Server, client: tl.Together) -> None:
    chat(client, stream=False)
    assert "stream" not in server.requests[0].json


def test_stop_string_is_sent_as_a_list(server: Server, client: tl.Together) -> None:
    chat(client, stop="x")
    assert server.requests[0].json["stop"] == ["x"]


def test_stop_tuple_is_sent_as_a_list(server: Server, client: tl.Together) -> None:
    chat(client, stop=("a", "b"))
    assert server.requests[0].json["stop"] == ["a", "b"]


def test_logprobs_true_is_sent_as_one(server: Server, client: tl.Together) -> None:
    chat(client, logprobs=True)
    body = server.requests[0].json
    assert body["logprobs"] == 1 and type(body["logprobs"]) is int


def test_logprobs_true_with_top_logprobs_stays_true_as_openai_servers_want(server: Server, client: tl.Together) -> None:
    chat(client, logprobs=True, top_logprobs=2)  # llama.cpp refuses top_logprobs unless logprobs is true
    body = server.requests[0].json
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)


@pytest.mark.parametrize(
    "name, value",
    [
        ("reasoning_effort", "low"),
        ("context_length_exceeded_behavior", "truncate"),
        ("chat_template_kwargs", {"enable_thinking": False, "nested": [1, None, {"a": "b"}]}),
        ("reasoning", {"enabled": False}),
        ("top_logprobs", 5),
        ("stream_options", {"include_usage": True}),
    ],
)
def test_unknown_keyword_arguments_pass_through_unchanged(
    server: Server, client: tl.Together, name: str, value: Any
) -> None:
    chat(client, **{name: value})
    assert server.requests[0].json == {"model": "m", "messages": MESSAGES, name: value}


def test_extra_body_is_merged_into_the_body(server: Server, client: tl.Together) -> None:
    chat(client, max_tokens=5, extra_body={"compliance": "hipaa", "nested": {"x": [1, 2]}})
    assert server.requests[0].json == {
        "model": "m",
        "messages": MESSAGES,
        "max_tokens": 5,
        "compliance": "hipaa",
        "nested": {"x": [1, 2]},
    }


def test_per_call_options_are_never_in_the_body(server: Server, client: tl.Together) -> None:
    chat(client, timeout=3, max_retries=1, extra_headers={"X-A": "b"}, extra_body={"k": 1})
    body = server.requests[0].json
    for name in ("timeout", "max_retries", "extra_headers", "extra_body"):
        assert name not in body
    assert body["k"] == 1


def test_multimodal_parts_and_new_roles_pass_through_unchanged(server: Server, client: tl.Together) -> None:
    sent = copy.deepcopy(RICH_MESSAGES)
    chat(client, messages=sent)
    assert server.requests[0].json["messages"] == RICH_MESSAGES
    assert sent == RICH_MESSAGES  # the caller's list is not modified


def test_messages_as_a_tuple_are_sent_as_a_list(server: Server, client: tl.Together) -> None:
    chat(client, messages=tuple(MESSAGES))
    assert server.requests[0].json["messages"] == MESSAGES


@pytest.mark.parametrize(
    "tool_choice",
    ["none", "required", "auto", {"type": "function", "function": {"name": "get_weather"}}],
)
def test_every_tool_choice_form_is_accepted(server: Server, client: tl.Together, tool_choice: Any) -> None:
    chat(client, tools=TOOLS, tool_choice=tool_choice)
    assert server.requests[0].json["tool_choice"] == tool_choice
    assert server.requests[0].json["tools"] == TOOLS


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        {"type": "regex", "pattern": "[a-z]+"},
    ],
)
def test_every_response_format_form_is_accepted(server: Server, client: tl.Together, response_format: Any) -> None:
    chat(client, response_format=response_format)
    assert server.requests[0].json["response_format"] == response_format


@pytest.mark.parametrize("name, value", COMPLETION_PARAMS)
def test_each_completion_parameter_lands_in_the_body_under_its_own_name(
    server: Server, client: tl.Together, name: str, value: Any
) -> None:
    server.default = Reply(200, COMPLETION_RESPONSE)
    client.completions.create(model="m", prompt="def f():", **{name: value})
    assert server.requests[0].path == "/v1/completions"
    assert server.requests[0].json == {"model": "m", "prompt": "def f():", name: value}


def test_completion_defaults_send_only_model_and_prompt(server: Server, client: tl.Together) -> None:
    server.default = Reply(200, COMPLETION_RESPONSE)
    client.completions.create(model="m", prompt="p", stream=False, **{name: None for name, _ in COMPLETION_PARAMS})
    assert server.requests[0].json == {"model": "m", "prompt": "p"}


def test_completion_stop_string_kwargs_and_extra_body(server: Server, client: tl.Together) -> None:
    server.default = Reply(200, COMPLETION_RESPONSE)
    client.completions.create(
        model="m", prompt="p", stop="\n\n", foo={"a": [1]}, extra_body={"bar": True}, timeout=4, max_retries=1
    )
    assert server.requests[0].json == {"model": "m", "prompt": "p", "stop": ["\n\n"], "foo": {"a": [1]}, "bar": True}


# -- Requests: bad input is refused before anything is sent -------------------


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"messages": "hi"}, TypeError, "messages"),
        ({"messages": {"role": "user", "content": "hi"}}, TypeError, "messages"),
        ({"messages": ["hi"]}, TypeError, "messages"),
        ({"messages": [{"role": "user", "content": "x"}, None]}, TypeError, "messages"),
        ({"model": 5}, TypeError, "model"),
        ({"model": None}, TypeError, "model"),
        ({"model": ""}, ValueError, "model"),
        ({"n": 0}, ValueError, "n"),
        ({"n": "2"}, TypeError, "n"),
        ({"n": True}, TypeError, "n"),
        ({"logprobs": -1}, ValueError, "logprobs"),
        ({"logprobs": 1.5}, TypeError, "logprobs"),
        ({"max_tokens": -1}, ValueError, "max_tokens"),
        ({"max_tokens": "10"}, TypeError, "max_tokens"),
        ({"top_k": -1}, ValueError, "top_k"),
        ({"seed": "1"}, TypeError, "seed"),
        ({"temperature": "hot"}, TypeError, "temperature"),
        ({"top_p": [0.9]}, TypeError, "top_p"),
        ({"stop": 5}, TypeError, "stop"),
        ({"stop": ["a", 1]}, TypeError, "stop"),
        ({"stream": "yes"}, TypeError, "stream"),
        ({"logit_bias": [1, 2]}, TypeError, "logit_bias"),
        ({"response_format": "json"}, TypeError, "response_format"),
        ({"tools": {"type": "function"}}, TypeError, "tools"),
        ({"tool_choice": 5}, TypeError, "tool_choice"),
        ({"safety_model": 1}, TypeError, "safety_model"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"max_tokens": 10.5}, TypeError, "max_tokens"),
        ({"n": float("nan")}, TypeError, "n"),
        ({"extra_body": ["x", 1]}, TypeError, "extra_body must be a dict, not list"),
        ({"extra_query": "a=1"}, TypeError, "extra_query must be a dict of query parameters, not str"),
    ],
)
def test_bad_chat_argument_raises_naming_it_before_sending(
    server: Server, client: tl.Together, kwargs: dict[str, Any], error: type, name: str
) -> None:
    with pytest.raises(error, match=name):
        chat(client, **kwargs)
    assert server.requests == []


def test_whole_floats_for_int_parameters_are_sent_as_ints(server: Server, client: tl.Together) -> None:
    server.reply(Reply(200, chat_response()))
    chat(client, max_tokens=2048.0, n=2.0, top_k=40.0, seed=7.0, logprobs=1.0, max_retries=0.0)
    sent = server.requests[0].json
    assert [(sent[name], type(sent[name])) for name in ("max_tokens", "n", "top_k", "seed", "logprobs")] == [
        (2048, int),
        (2, int),
        (40, int),
        (7, int),
        (1, int),
    ]


def test_nan_temperature_raises_value_error_before_sending(server: Server, client: tl.Together) -> None:
    with pytest.raises(ValueError):
        chat(client, temperature=float("nan"))
    assert server.requests == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_temperature_error_names_the_parameter(server: Server, client: tl.Together, value: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        chat(client, temperature=value)
    assert server.requests == []


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes"])
def test_value_that_is_not_json_serializable_raises_type_error_before_sending(
    server: Server, client: tl.Together, value: Any
) -> None:
    with pytest.raises(TypeError):
        chat(client, foo=value)
    assert server.requests == []


def test_nan_inside_extra_body_raises_value_error_before_sending(server: Server, client: tl.Together) -> None:
    with pytest.raises(ValueError):
        chat(client, extra_body={"x": [float("inf")]})
    assert server.requests == []


@pytest.mark.parametrize(
    "headers, error",
    [
        ({"X-A": "a\r\nX-Injected: 1"}, ValueError),
        ({"X-A": "a\nb"}, ValueError),
        ({"X-A\r\n": "a"}, ValueError),
        ({"X-A: b": "a"}, ValueError),
        ({"X-A": 5}, TypeError),
        (["X-A", "a"], TypeError),
    ],
)
def test_bad_extra_headers_raise_before_sending(server: Server, client: tl.Together, headers: Any, error: type) -> None:
    with pytest.raises(error):
        chat(client, extra_headers=headers)
    assert server.requests == []


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"prompt": 5}, TypeError, "prompt"),
        ({"prompt": None}, TypeError, "prompt"),
        ({"prompt": ["a", 1]}, TypeError, "prompt"),
        ({"model": ""}, ValueError, "model"),
        ({"n": 0}, ValueError, "n"),
        ({"stop": 5}, TypeError, "stop"),
        ({"temperature": "hot"}, TypeError, "temperature"),
        ({"stream": 1}, TypeError, "stream"),
    ],
)
def test_bad_completion_argument_raises_naming_it_before_sending(
    server: Server, client: tl.Together, kwargs: dict[str, Any], error: type, name: str
) -> None:
    kwargs = {"model": "m", "prompt": "p", **kwargs}
    with pytest.raises(error, match=name):
        client.completions.create(**kwargs)
    assert server.requests == []


@pytest.mark.parametrize(
    "base_url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "ftp://x",
        "javascript:x",
        "data:,hi",
        "127.0.0.1:8000/v1",
        "etc/passwd",
        "//host/v1",
    ],
)
def test_a_base_url_that_is_not_http_raises_value_error_and_touches_nothing(base_url: str) -> None:
    with audit() as events, pytest.raises(ValueError, match="base_url"):
        tl.Together(api_key="k", base_url=base_url)
    assert [e for e in events if e[0] != "open" or "passwd" in str(e[1])] == []


def test_a_file_base_url_never_reads_the_file(tmp_path: Any) -> None:
    target = tmp_path / "secret.json"
    target.write_text(json.dumps(CHAT_RESPONSE))
    with audit() as events, pytest.raises(ValueError):
        tl.Together(api_key="k", base_url=target.as_uri())
    assert [e for e in events if str(target) in str(e[1])] == []


@pytest.mark.parametrize(
    "bad",
    ["\r", "\n", "\r\n", "\x00", "\x1b[2J", "\x7f", "\x0b", "\t", "\nX-Injected: 1"],
    ids=["CR", "LF", "CRLF", "NUL", "ESC", "DEL", "VT", "TAB", "header-injection"],
)
def test_an_api_key_with_a_control_character_raises_value_error_without_the_key(server: Server, bad: str) -> None:
    for api_key in (CANARY + bad, bad + CANARY, CANARY[:5] + bad + CANARY[5:]):
        with pytest.raises(ValueError) as info:
            tl.Together(api_key=api_key, base_url=server.url)
        assert "api_key" in str(info.value)
        assert CANARY not in str(info.value) and CANARY[5:] not in str(info.value)
        assert_no_canary(info.value)
    assert server.requests == []


@pytest.mark.parametrize("bad", ["\x85", "\x9b"], ids=["NEL", "CSI"])
def test_an_api_key_with_a_c1_control_character_raises_value_error(server: Server, bad: str) -> None:
    with pytest.raises(ValueError, match="api_key"):
        tl.Together(api_key=CANARY + bad, base_url=server.url)
    assert server.requests == []


def test_an_api_key_from_the_environment_with_lf_raises_without_the_key(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", CANARY + "\r\nX-Evil: 1")
    for make in (tl.Together, tl.AsyncTogether):
        with pytest.raises(ValueError) as info:
            make(base_url=server.url)
        assert_no_canary(info.value)
    assert server.requests == []


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_supplied_headers_with_cr_lf_or_an_invalid_name_raise_value_error_before_sending(
    server: Server, headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        tl.Together(api_key="k", base_url=server.url, supplied_headers=headers)
    assert server.requests == []


@pytest.mark.parametrize("headers", BAD_HEADERS)
@pytest.mark.parametrize("stream", [False, True])
def test_extra_headers_with_cr_lf_or_an_invalid_name_raise_value_error_before_sending(
    server: Server, headers: dict[str, str], stream: bool
) -> None:
    c = make_client(server, max_retries=2)
    delays: list[float] = []
    record_delays(c, delays)
    with pytest.raises(ValueError):
        chat(c, extra_headers=headers, stream=stream)
    assert server.requests == [] and delays == []
    assert chat(c).choices[0].message.content == "Hello there."  # the client is unharmed


@pytest.mark.parametrize(
    "headers",
    [{"X-Ünïcode": "v"}, {"X-€": "v"}, {"X-A": "€uro"}],
    ids=["latin1-name", "non-latin1-name", "non-latin1-value"],
)
def test_extra_headers_that_cannot_be_encoded_raise_value_error_before_sending(
    server: Server, headers: dict[str, str]
) -> None:
    c = make_client(server, max_retries=2)
    delays: list[float] = []
    record_delays(c, delays)
    with pytest.raises(ValueError):
        chat(c, extra_headers=headers)
    assert server.requests == [] and delays == []


@pytest.mark.parametrize("headers", [{"X-€": "v"}, {"X-A": "€uro"}], ids=["non-latin1-name", "non-latin1-value"])
def test_supplied_headers_that_cannot_be_encoded_raise_value_error_at_construction(
    server: Server, headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        tl.Together(api_key="k", base_url=server.url, supplied_headers=headers)


# -- Server-sent events -------------------------------------------------------


@pytest.mark.parametrize("pieces, expected", SSE_STREAMING_VECTORS)
def test_decoder_matches_the_openai_streaming_vectors(pieces: list[bytes], expected: list[tuple[Any, str]]) -> None:
    decoder = tl._SSEDecoder()
    events = feed_all(pieces, decoder)
    assert as_pairs(events) == expected
    for event in events:
        assert json.loads(event.data)  # every dispatched vector carries valid JSON
    assert decoder.feed(b"") == []  # nothing left over


def test_escaped_newlines_inside_json_survive_decoding() -> None:
    (event,) = feed_all([b"event: ping\n", b'data: {"foo": "my long\\n\\ncontent"}', b"\n\n"])
    assert json.loads(event.data) == {"foo": "my long\n\ncontent"}


# -- Server-sent events: openai's framing vectors -----------------------------


@pytest.mark.parametrize("line", [b":x\n", b"data:x\n", b"ignored:x\n"], ids=["comment", "data", "unknown-field"])
@pytest.mark.parametrize("size", [1, 97, 100000])
def test_unterminated_event_yields_nothing(line: bytes, size: int) -> None:
    assert feed_all(cut(line * 2000, size)) == []


@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"], ids=["lf", "cr", "crlf"])
def test_every_chunk_boundary_with_an_empty_read_between_gives_one_event(ending: bytes) -> None:
    frame = b"data:ok" + ending + ending
    for split in range(len(frame) + 1):
        events = feed_all([frame[:split], b"", frame[split:]])
        assert [e.data for e in events] == ["ok"], f"split at {split}"


@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"], ids=["lf", "cr", "crlf"])
def test_every_two_way_split_of_a_full_frame_gives_the_same_event(ending: bytes) -> None:
    frame = ending.join(
        [b"retry: 250", b"id: 7", b"event: delta", b": note", b"data: a", b"data: \xd0\xb8\xd0\xb7", b"", b""]
    )
    expected = [("delta", "a\nиз", "7", 250)]
    assert as_tuples(feed_all([frame])) == expected
    for split in range(len(frame) + 1):
        assert as_tuples(feed_all([frame[:split], frame[split:]])) == expected, f"split at {split}"
    assert as_tuples(feed_all(bytewise(frame))) == expected


def test_twenty_thousand_tiny_events_in_one_feed_are_all_dispatched() -> None:
    events = tl._SSEDecoder().feed(b"data:ok\n\n" * 20000)
    assert len(events) == 20000
    assert all(e.data == "ok" and e.event is None for e in events)


def test_a_16_mib_event_fed_in_64_kib_pieces_arrives_whole() -> None:
    size = 16 * 1024 * 1024
    decoder = tl._SSEDecoder()
    assert decoder.feed(b"data:") == []
    payload = b"x" * size
    for piece in cut(payload, 64 * 1024):
        assert decoder.feed(piece) == []
    (event,) = decoder.feed(b"y\n\n")
    assert len(event.data) == size + 1
    assert event.data == "x" * size + "y"


def test_a_large_event_with_utf8_and_u2028_cut_into_odd_pieces_is_intact() -> None:
    value = "x" * (2 * 1024 * 1024) + "известни\u2028"
    events = feed_all(cut(("data:" + value + "\r\n\r\n").encode(), 4093))
    assert [e.data for e in events] == [value]


def test_ten_thousand_data_lines_are_joined_with_lf() -> None:
    events = tl._SSEDecoder().feed(b"data:x\n" * 10000 + b"\n")
    assert [e.data for e in events] == ["\n".join(["x"] * 10000)]


def test_mixed_endings_fed_one_byte_at_a_time_keep_the_id_and_drop_the_tail() -> None:
    stream = "id:one\r\ndata:известни\r\n\ndata:two\n\rdata:unfinished".encode()
    events = feed_all(bytewise(stream))
    assert [(e.data, e.id) for e in events] == [("известни", "one"), ("two", "one")]


@pytest.mark.parametrize("ignored", [b":x\n", b"ignored:x\n"], ids=["comments", "unknown-fields"])
def test_ignored_lines_are_discarded_as_they_arrive(ignored: bytes) -> None:
    decoder = tl._SSEDecoder()
    for _ in range(10000):
        assert decoder.feed(ignored) == []
    assert decoder._data == []
    assert decoder.feed(b"data:ok\n") == []
    assert decoder._data == ["ok"]
    assert [e.data for e in decoder.feed(b"\n")] == ["ok"]


def test_a_partial_line_fed_byte_by_byte_is_held_until_its_end() -> None:
    decoder = tl._SSEDecoder()
    assert decoder.feed(b"data:") == []
    for _ in range(4096):
        assert decoder.feed(b"x") == []
    assert decoder.feed(b"\n") == []
    assert [e.data for e in decoder.feed(b"\n")] == ["x" * 4096]


# -- Server-sent events: behaviour rows, spec-correct -------------------------


@pytest.mark.parametrize("pieces, expected", SSE_BEHAVIOUR_ROWS)
def test_decoder_follows_the_spec(pieces: list[bytes], expected: list[tuple[Any, ...]]) -> None:
    assert as_tuples(feed_all(pieces)) == expected


@pytest.mark.parametrize(
    "blank",
    [b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r", b"\n\r\n"],
    ids=["lf-lf", "cr-cr", "crlf-crlf", "lf-cr", "lf-crlf"],
)
def test_an_event_is_dispatched_by_the_read_that_completes_it(blank: bytes) -> None:
    # The classic SDK decoder holds back "data: a\n\r" until the next read (§1.7).
    assert [e.data for e in tl._SSEDecoder().feed(b"data: a" + blank)] == ["a"]


def test_a_cr_inside_a_read_followed_by_a_partial_line_does_not_swallow_the_next_lf() -> None:
    # A read ending "...\rdata: b" leaves "data: b" unfinished: the LF that follows ends that line,
    # it is not the second half of a CRLF.
    events = feed_all([b"data: a\rdata: b", b"\n\n"])
    assert [e.data for e in events] == ["a\nb"]


def test_heartbeat_comments_between_events_are_invisible() -> None:
    pieces = [b":\n\n", b'data: {"n":1}\n\n', b":\n\n", b": keep-alive\n\n", b'data: {"n":2}\n\n', b":\n\n"]
    assert [e.data for e in feed_all(pieces)] == ['{"n":1}', '{"n":2}']
    assert [e.data for e in feed_all([b"".join(pieces)])] == ['{"n":1}', '{"n":2}']


def test_a_multibyte_character_split_across_reads_decodes_once() -> None:
    data = "data: é😀中\n\n".encode()
    for split in range(len(data) + 1):
        events = feed_all([data[:split], data[split:]])
        assert [e.data for e in events] == ["é😀中"], f"split at {split}"


# -- Server-sent events: properties -------------------------------------------
# A recorded stream mixing comments, a BOM, ids, retry, names, multi-line data,
# U+2028 and 4-byte UTF-8; every split of it into reads must decode the same.
# The first uses LF and CRLF only; the second also ends lines with a lone CR.


@pytest.mark.parametrize("recorded", [SSE_RECORDED_LF_CRLF, SSE_RECORDED_MIXED], ids=["lf-crlf", "mixed"])
def test_the_recorded_stream_decodes_to_the_expected_events(recorded: bytes) -> None:
    assert as_tuples(feed_all([recorded])) == SSE_RECORDED_EVENTS
    assert as_tuples(feed_all(bytewise(recorded))) == SSE_RECORDED_EVENTS


@pytest.mark.parametrize("recorded", [SSE_RECORDED_LF_CRLF, SSE_RECORDED_MIXED], ids=["lf-crlf", "mixed"])
def test_random_read_sizes_never_change_the_events(recorded: bytes) -> None:
    failing_seeds = []
    for seed in range(300):
        pieces = random_pieces(recorded, random.Random(seed), 0, 12)
        assert b"".join(pieces) == recorded
        if as_tuples(feed_all(pieces)) != SSE_RECORDED_EVENTS:
            failing_seeds.append(seed)
    assert failing_seeds == []


def test_the_recorded_stream_decodes_to_its_events() -> None:
    data, contents = recorded_stream()
    events = decoded_events([data])
    assert [json.loads(e[0])["choices"][0]["delta"]["content"] for e in events[:-1]] == contents
    assert events[-1][0] == "[DONE]"
    assert [(e[1], e[2]) for e in events] == [(None, "1"), ("message", "1"), (None, "1"), (None, "1"), (None, "1")]
    assert events[0][3] == 3000


@pytest.mark.parametrize("seed", range(60))
def test_any_split_of_the_recorded_stream_gives_the_same_events(seed: int) -> None:
    data, _ = recorded_stream()
    pieces = random_pieces(data, random.Random(seed))
    assert b"".join(pieces) == data
    assert decoded_events(pieces) == decoded_events([data])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_any_split_of_the_recorded_stream_gives_the_same_chunks_through_the_client(server: Server, seed: int) -> None:
    data, contents = recorded_stream()
    server.reply(Reply(chunks=random_pieces(data, random.Random(seed))))
    client = make_client(server, max_retries=0)
    assert texts(chat(client, stream=True)) == contents
    assert chat(client).choices[0].message.content == "Hello there."
    assert len(server.connections) == 1  # the stream ended cleanly and its connection was reused


@pytest.mark.parametrize("kind", ["random", "soup"])
def test_the_sse_decoder_is_total_and_split_invariant_on_fuzz_input(kind: str) -> None:
    dispatched = 0
    for seed in range(120):
        data = fuzz_bytes(seed, kind)
        whole = decoded_events([data])
        assert decoded_events(random_pieces(data, random.Random(seed), 1, 64)) == whole
        assert decoded_events([data[i : i + 1] for i in range(len(data))]) == whole
        dispatched += len(whole)
    if kind == "soup":
        assert dispatched > 150  # the soup does reach event dispatch


@pytest.mark.parametrize("kind", ["random", "soup"])
def test_a_fuzzed_stream_body_ends_normally_or_raises_a_together_exception(server: Server, kind: str) -> None:
    client = make_client(server, max_retries=0, timeout=2)
    outcomes: dict[str, int] = {}
    for seed in range(25):
        data = fuzz_bytes(seed, kind)
        server.reply(Reply(chunks=random_pieces(data, random.Random(seed), 1, 512)))
        try:
            for _ in chat(client, stream=True):
                pass
            outcome = "ended"
        except tl.Timeout:  # the server sent everything: waiting for more is a hang
            outcome = "hang"
        except tl.TogetherException as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert sum(outcomes.values()) == 25 and "hang" not in outcomes
    assert chat(client).choices[0].message.content == "Hello there."


# -- Streams ------------------------------------------------------------------


def test_stream_smoke(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"))))
    stream = chat(client, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "Hello"
    assert server.requests[0].json["stream"] is True
    chat(client)
    assert len(server.connections) == 1


def test_chat_stream_chunks_expose_their_fields_as_attributes(server: Server, client: tl.Together) -> None:
    server.reply(
        Reply(
            chunks=sse(
                delta_chunk({"role": "assistant", "content": ""}),
                delta_chunk({"reasoning": "Think"}),
                delta_chunk({"content": "Hel"}),
                delta_chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a"'},
                            }
                        ]
                    }
                ),
                delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
                delta_chunk(
                    {}, finish="tool_calls", usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
                ),
            )
        )
    )
    stream = chat(client, stream=True)
    assert isinstance(stream, tl.Stream)
    chunks = list(stream)
    assert len(chunks) == 6
    assert all(isinstance(c, tl.ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].id == "c1" and chunks[0].model == "m" and chunks[0].object == "chat.completion.chunk"
    assert chunks[1].choices[0].delta.reasoning == "Think"
    assert chunks[1].choices[0].delta.content is None
    assert chunks[2].choices[0].delta.content == "Hel"
    call = chunks[3].choices[0].delta.tool_calls[0]
    assert (call.index, call.id, call.type) == (0, "call_1", "function")
    assert (call.function.name, call.function.arguments) == ("f", '{"a"')
    assert chunks[4].choices[0].delta.tool_calls[0].function.arguments == ": 1}"
    last = chunks[5]
    assert last.choices[0].finish_reason == "tool_calls"
    assert last.usage.total_tokens == 7 and last.usage.prompt_tokens == 3 and last.usage.completion_tokens == 4
    assert all(c.choices[0].finish_reason is None for c in chunks[:5])
    assert all(c.usage is None for c in chunks[:5])


def test_completion_stream_chunks_carry_text_and_token(server: Server, client: tl.Together) -> None:
    server.reply(
        Reply(
            chunks=sse(
                text_chunk(" return"),
                text_chunk(
                    " n", finish="length", usage={"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
                ),
            )
        )
    )
    stream = client.completions.create(model="m", prompt="def f(n):", stream=True)
    assert isinstance(stream, tl.Stream)
    chunks = list(stream)
    assert all(isinstance(c, tl.CompletionChunk) for c in chunks)
    assert [c.choices[0].text for c in chunks] == [" return", " n"]
    assert [c.token.text for c in chunks] == [" return", " n"]
    assert chunks[0].token.logprob == -0.25 and chunks[0].token.special is False
    assert chunks[1].choices[0].finish_reason == "length"
    assert chunks[1].usage.total_tokens == 6
    request = server.requests[0]
    assert request.path == "/v1/completions"
    assert request.json["stream"] is True and request.json["prompt"] == "def f(n):"
    assert request.headers["accept"] == "text/event-stream"


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_request_asks_for_an_event_stream(server: Server, client: tl.Together, endpoint: str) -> None:
    server.reply(Reply(chunks=sse(text_chunk("x", finish="stop"))))
    if endpoint == "chat":
        list(chat(client, stream=True))
    else:
        list(client.completions.create(model="m", prompt="p", stream=True))
    request = server.requests[0]
    assert request.json["stream"] is True
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["content-type"] == "application/json"


def test_non_streaming_request_still_accepts_json(server: Server, client: tl.Together) -> None:
    chat(client)
    assert server.requests[0].headers["accept"] == "application/json"


def test_stream_exposes_the_response_headers(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=sse(chunk("a", finish="stop")), headers={"x-request-id": "req-9"}))
    with chat(client, stream=True) as stream:
        assert stream.headers["x-request-id"] == "req-9"
        assert stream.headers["content-type"] == "text/event-stream"
        assert contents(list(stream)) == ["a"]


@pytest.mark.parametrize(
    "after_done",
    [
        pytest.param([data_event(chunk("late"))], id="event-in-a-later-read"),
        pytest.param([b'data: {"error": {"message": "late"}}\n\n'], id="error-after-done"),
        pytest.param([b"data: not json\n\n"], id="garbage-after-done"),
    ],
)
def test_done_ends_iteration_and_nothing_after_it_is_yielded(
    server: Server, client: tl.Together, after_done: list[bytes]
) -> None:
    server.reply(Reply(chunks=sse(chunk("a"), chunk("b")) + after_done))
    assert contents(list(chat(client, stream=True))) == ["a", "b"]


def test_done_and_later_events_in_one_read_stop_at_done(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=[b"".join(sse(chunk("a"))) + data_event(chunk("late")) + b"data: [DONE]\n\n"]))
    assert contents(list(chat(client, stream=True))) == ["a"]


def test_done_with_trailing_text_still_ends_the_stream(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=[data_event(chunk("a")), b"data: [DONE]garbage\n\n", data_event(chunk("late"))]))
    assert contents(list(chat(client, stream=True))) == ["a"]


def test_unknown_and_null_fields_are_tolerated(server: Server, client: tl.Together) -> None:
    # Shaped like Together's real chunks (seed 002), with extra fields old and new.
    first = {
        "choices": [
            {"index": 0, "delta": {"content": " A", "brand_new": {"x": 1}}, "finish_reason": None, "logprobs": None}
        ],
        "id": "85ffbb8a6d2c4340-EWR",
        "token": {"id": 330, "text": " A", "logprob": 1, "special": False},
        "finish_reason": None,
        "generated_text": None,
        "stats": None,
        "usage": None,
        "created": 1709700707,
        "object": "chat.completion.chunk",
        "future_field": [1, 2],
        "error": None,
    }
    last = {
        "choices": [{"index": 0, "delta": {"content": None, "role": None, "tool_calls": None}, "finish_reason": "eos"}],
        "id": "85ffbb8a6d2c4340-EWR",
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "cached_tokens": None},
        "warnings": None,
        "object": "chat.completion.chunk",
    }
    server.reply(Reply(chunks=sse(first, last)))
    chunks = list(chat(client, stream=True))
    assert contents(chunks) == [" A", None]
    assert chunks[0].future_field == [1, 2]
    assert chunks[0].generated_text is None and chunks[0].stats is None
    assert chunks[0].choices[0].delta.brand_new == {"x": 1}
    assert chunks[0].token.text == " A"
    assert chunks[1].choices[0].delta.tool_calls is None
    assert chunks[1].choices[0].finish_reason == "eos"
    assert chunks[1].usage.total_tokens == 2


def test_keepalive_comments_and_dataless_events_in_a_stream_are_skipped(server: Server, client: tl.Together) -> None:
    pieces = [b": keep-alive\n\n", b"event: ping\n\n", data_event(chunk("a")), b":\n\n", b"id: 9\n\n"]
    server.reply(Reply(chunks=pieces + sse(chunk("b", finish="stop"))))
    assert contents(list(chat(client, stream=True))) == ["a", "b"]


@pytest.mark.parametrize("seed", range(8))
def test_a_stream_cut_into_random_network_pieces_gives_the_same_chunks(
    server: Server, client: tl.Together, seed: int
) -> None:
    texts = ["Hé", "llo", " 😀", " wörld", "\u2028", "!"]
    body = b"".join(sse(*(chunk(t) for t in texts), chunk(finish="stop")))
    rng = random.Random(seed)
    pieces = []
    position = 0
    while position < len(body):
        size = rng.randint(1, 40)
        pieces.append(body[position : position + size])
        position += size
    server.reply(Reply(chunks=pieces))
    assert contents(list(chat(client, stream=True))) == texts + [None]


def test_a_stream_has_its_response_with_headers_in_any_case(server: Server) -> None:
    server.reply(Reply(chunks=sse(chunk("x"), chunk(finish="stop")), headers=SDK_HEADERS))
    stream = chat(make_client(server), stream=True)
    assert (stream.response.status_code, stream.response.headers["X-Request-ID"]) == (200, "req_123")
    stream.close()

    async def main() -> tuple[int, str]:
        async with tl.AsyncTogether(api_key="k", base_url=server.url) as client:
            server.reply(Reply(chunks=sse(chunk("x"), chunk(finish="stop")), headers=SDK_HEADERS))
            async with await client.chat.completions.create(model="m", messages=[], stream=True) as astream:
                return astream.response.status_code, astream.response.headers["X-Ratelimit-Remaining-Requests"]

    assert run_async(main()) == (200, "59")


# -- Streams: failures are never silent ---------------------------------------


@pytest.mark.parametrize(
    "reply, message",
    [
        pytest.param(Reply(200, {"error": {"message": "no capacity"}}), "no capacity", id="json-error-object"),
        pytest.param(Reply(200, CHAT_RESPONSE), "Asked for a stream", id="json-completion"),
        pytest.param(Reply(200, body=b"<html>oops</html>", content_type="text/html"), "not JSON", id="html"),
    ],
)
def test_a_200_that_is_not_an_event_stream_raises_from_create(
    server: Server, client: tl.Together, reply: Reply, message: str
) -> None:
    server.reply(reply)
    with pytest.raises(tl.APIError, match=message):
        chat(client, stream=True)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retryable_status_on_a_stream_request_is_retried_then_streams(
    server: Server, retrying_client: tl.Together, recorded_delays: list[float], status: int
) -> None:
    server.reply(
        Reply(status, {"error": {"message": "try again"}}), Reply(chunks=sse(chunk("ok"), chunk(finish="stop")))
    )
    stream = chat(retrying_client, stream=True)
    assert contents(list(stream)) == ["ok", None]
    assert len(server.requests) == 2
    assert all(r.json["stream"] is True for r in server.requests)
    assert len(recorded_delays) == 1


def test_a_500_that_persists_on_a_stream_request_raises_from_create(
    server: Server, recorded_delays: list[float]
) -> None:
    server.reply(*[Reply(500, {"error": {"message": "down"}})] * 3)
    with make_client(server, max_retries=2) as c:
        record_delays(c, recorded_delays)
        with pytest.raises(tl.InternalServerError) as info:
            chat(c, stream=True)
    assert info.value.status_code == 500
    assert "down" in str(info.value)
    assert len(server.requests) == 3 and len(recorded_delays) == 2


def test_401_on_a_stream_request_raises_authentication_error_from_create(
    server: Server, retrying_client: tl.Together, recorded_delays: list[float]
) -> None:
    server.reply(Reply(401, {"error": {"message": "Invalid API key", "type": "invalid_request_error"}}))
    with pytest.raises(tl.AuthenticationError) as info:
        chat(retrying_client, stream=True)
    assert info.value.status_code == 401
    assert "Invalid API key" in str(info.value)
    assert len(server.requests) == 1 and recorded_delays == []


@pytest.mark.parametrize("together", [False, True], ids=["error-in-its-own-read", "error-in-the-same-read"])
def test_error_object_mid_stream_raises_after_the_earlier_chunks(
    server: Server, retrying_client: tl.Together, recorded_delays: list[float], together: bool
) -> None:
    error = {"error": {"message": "The model is overloaded", "type": "server_error", "code": "overloaded"}}
    pieces = sse(chunk("Hel"), chunk("lo"), error, chunk("never"))
    server.reply(Reply(chunks=[b"".join(pieces)] if together else pieces))
    got: list[Any] = []
    with pytest.raises(tl.APIError) as info:
        collect(chat(retrying_client, stream=True), got)
    assert contents(got) == ["Hel", "lo"]
    assert info.value.message == "The model is overloaded"
    assert str(info.value) == "The model is overloaded"
    assert info.value.body == error
    assert info.value.code == "overloaded" and info.value.type == "server_error"
    assert not isinstance(info.value, tl.APIConnectionError)
    assert len(server.requests) == 1 and recorded_delays == []


def test_error_string_mid_stream_raises_with_that_string(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=sse(chunk("a"), {"error": "rate limited upstream"})))
    got: list[Any] = []
    with pytest.raises(tl.APIError, match="rate limited upstream"):
        collect(chat(client, stream=True), got)
    assert contents(got) == ["a"]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"message": "boom"}, "boom"),
        ({"error": {"message": "nested boom"}}, "nested boom"),
        ({"error": "flat boom"}, "flat boom"),
    ],
)
def test_an_event_error_frame_raises(server: Server, client: tl.Together, payload: Any, message: str) -> None:
    frame = b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    server.reply(Reply(chunks=[data_event(chunk("a")), frame] + sse(chunk("never"))))
    got: list[Any] = []
    with pytest.raises(tl.APIError) as info:
        collect(chat(client, stream=True), got)
    assert contents(got) == ["a"]
    assert info.value.message == message
    assert info.value.body == payload


@pytest.mark.parametrize(
    "data",
    ["not json", "{'single': 'quotes'}", '{"truncated": '],
    ids=["text", "python-repr", "truncated"],
)
def test_non_json_data_raises_api_error(
    server: Server, retrying_client: tl.Together, recorded_delays: list[float], data: str
) -> None:
    server.reply(Reply(chunks=[data_event(chunk("a")), b"data: " + data.encode() + b"\n\n"] + sse(chunk("never"))))
    got: list[Any] = []
    with pytest.raises(tl.APIError) as info:
        collect(chat(retrying_client, stream=True), got)
    assert contents(got) == ["a"]
    assert not isinstance(info.value, json.JSONDecodeError)
    assert info.value.body == data
    assert len(server.requests) == 1 and recorded_delays == []


def test_an_empty_data_frame_is_skipped_like_a_keep_alive(server: Server, retrying_client: tl.Together) -> None:
    server.reply(Reply(chunks=[data_event(chunk("a")), b"data:\n\n", b"data: \n\n"] + sse(chunk("b", finish="stop"))))
    assert contents(list(chat(retrying_client, stream=True))) == ["a", "b"]


@pytest.mark.parametrize("raw", DROPS)
def test_connection_dropped_mid_stream_raises_api_connection_error(
    server: Server, retrying_client: tl.Together, recorded_delays: list[float], raw: bytes
) -> None:
    server.reply(raw_reply(raw))
    got: list[Any] = []
    with pytest.raises(tl.APIConnectionError) as info:
        collect(chat(retrying_client, stream=True), got)
    assert contents(got) == ["Hel"]
    assert not isinstance(info.value, tl.Timeout)
    assert len(server.requests) == 1 and recorded_delays == []


def test_connection_dropped_after_headers_raises_on_first_read(
    server: Server, retrying_client: tl.Together, recorded_delays: list[float]
) -> None:
    server.reply(raw_reply(STREAM_HEAD))
    stream = chat(retrying_client, stream=True)
    with pytest.raises(tl.APIConnectionError):
        next(stream)
    assert len(server.requests) == 1 and recorded_delays == []


@pytest.mark.parametrize("per_call", [False, True], ids=["client-timeout", "per-call-timeout"])
def test_a_server_pausing_longer_than_the_timeout_mid_stream_raises_timeout(
    server: Server, recorded_delays: list[float], per_call: bool
) -> None:
    server.reply(Reply(chunks=sse(chunk("a"), chunk("b", finish="stop")), pause=0.6))
    with make_client(server, max_retries=3, timeout=5 if per_call else 0.1) as c:
        record_delays(c, recorded_delays)
        stream = chat(c, stream=True, timeout=0.1) if per_call else chat(c, stream=True)
        got: list[Any] = []
        with pytest.raises(tl.Timeout):
            collect(stream, got)
    assert contents(got) == ["a"]
    assert len(server.requests) == 1 and recorded_delays == []


def test_a_slow_but_steady_stream_does_not_time_out(server: Server) -> None:
    # The timeout bounds the gap between reads, not the whole stream.
    server.reply(Reply(chunks=sse(*(chunk(str(i)) for i in range(6)), chunk(finish="stop")), pause=0.03))
    with make_client(server, max_retries=0, timeout=0.2) as c:
        assert contents(list(chat(c, stream=True))) == [str(i) for i in range(6)] + [None]


@pytest.mark.parametrize(
    "pieces, expected, unended",
    [
        pytest.param(sse(chunk("a"), chunk("b"), done=False), ["a", "b"], False, id="chunks-then-eof"),
        pytest.param([], [], False, id="empty-body"),
        pytest.param([b": keep-alive\n\n"], [], False, id="only-a-comment"),
        pytest.param(sse(chunk("a"), done=False) + [b"data: [DON"], ["a"], True, id="cut-inside-done"),
        pytest.param(
            [f"data: {json.dumps(chunk(text))}\n".encode() for text in "ab"], [], True, id="events-without-blank-lines"
        ),
    ],
)
def test_stream_ending_without_done_or_finish_reason_raises(
    server: Server,
    retrying_client: tl.Together,
    recorded_delays: list[float],
    pieces: list[bytes],
    expected: list[str],
    unended: bool,
) -> None:
    server.reply(Reply(chunks=pieces))
    got: list[Any] = []
    with pytest.raises(tl.APIConnectionError) as info:
        collect(chat(retrying_client, stream=True), got)
    assert contents(got) == expected
    assert len(server.requests) == 1 and recorded_delays == []
    assert ("never ended by a blank line" in str(info.value)) is unended


@pytest.mark.parametrize(
    "last",
    [
        pytest.param(chunk("b", finish="stop"), id="finish-in-choice"),
        pytest.param({**chunk("b"), "finish_reason": "eos"}, id="top-level-finish"),
    ],
)
def test_stream_ending_without_done_after_a_finish_reason_is_complete(
    server: Server, client: tl.Together, last: dict[str, Any]
) -> None:
    server.reply(Reply(chunks=sse(chunk("a"), last, done=False)))
    assert contents(list(chat(client, stream=True))) == ["a", "b"]
    chat(client)
    assert len(server.connections) == 1  # the connection was read to its end and reused


def test_completion_stream_without_done_after_finish_reason_is_complete(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=sse(text_chunk("a"), text_chunk("b", finish="length"), done=False)))
    chunks = list(client.completions.create(model="m", prompt="p", stream=True))
    assert [c.choices[0].text for c in chunks] == ["a", "b"]


@pytest.mark.parametrize(
    "pieces",
    [
        [b"data: {not json}\n\n"],
        [b"data: <html><title>oops</title></html>\n\n"],
        [b"data: \xff\xfe\xfa\x80\n\n"],
        [b'data: {"choices": [\n\n'],
        [b"\x00\x01\x02\xff\xfe garbage without a line break"],
        [b"\x00\x01\x02\r\n\xff\xfe\n\n\x89PNG\r\n\x1a\n"],
        [b"data: " + b"\xe6\x97" * 3 + b"\n\n"],
        [b'data: {"error": {"message": "boom"}}\n\n'],
        [b"event: error\ndata: 42\n\n"],
        [b'data: {"id": 1}\n\n'],
    ],
    ids=[
        "not-json",
        "html",
        "invalid-utf8",
        "truncated-json",
        "garbage-no-newline",
        "binary",
        "cut-multibyte",
        "error-object",
        "error-event-number",
        "no-done-no-finish",
    ],
)
def test_garbage_in_a_stream_is_a_typed_api_error(server: Server, pieces: list[bytes]) -> None:
    server.reply(Reply(chunks=sse(chunk("ok"), done=False) + pieces))
    got: list[Any] = []
    with pytest.raises(tl.APIError):
        for piece in chat(make_client(server, max_retries=0), stream=True):
            got.append(piece)
    assert got[0].choices[0].delta.content == "ok"


@pytest.mark.parametrize("data", [b"null", b"42", b"[1, 2]", b'"text"', b"true"])
def test_stream_data_that_is_json_but_not_an_object_is_an_api_error(server: Server, data: bytes) -> None:
    server.reply(Reply(chunks=[b"data: " + data + b"\n\n"] + sse(chunk(finish="stop"))))
    with pytest.raises(tl.APIError):
        list(chat(make_client(server, max_retries=0), stream=True))


def test_the_chunks_before_a_non_object_event_still_arrive(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=[b"".join(sse(chunk("a"), chunk("b"), "42", done=False))]))
    seen: list[str] = []
    with pytest.raises(tl.APIError, match="not an object"):
        for piece in chat(client, stream=True):
            seen.append(piece.choices[0].delta.content)
    assert seen == ["a", "b"]


# -- Streams: latency ---------------------------------------------------------


@BLANK_LINES
def test_each_chunk_reaches_the_caller_as_soon_as_the_server_flushes_it(server: Server, blank: bytes) -> None:
    proceed = threading.Event()
    stalled: list[bool] = []
    server.reply(held_second_chunk(blank, proceed, stalled))
    with make_client(server, max_retries=0, timeout=2) as c:
        stream = chat(c, stream=True)
        first = next(stream)
        proceed.set()
        rest = list(stream)
    assert stalled == []
    assert first.choices[0].delta.content == "first"
    assert contents(rest) == ["second"]


@BLANK_LINES
def test_each_chunk_reaches_an_async_caller_as_soon_as_the_server_flushes_it(server: Server, blank: bytes) -> None:
    # The async stream reads on while whole events are already buffered; it must never wait for more.
    proceed = threading.Event()
    stalled: list[bool] = []
    server.reply(held_second_chunk(blank, proceed, stalled))

    async def main() -> tuple[Any, list[Any]]:
        async with tl.AsyncTogether(api_key="k", base_url=server.url, max_retries=0, timeout=2) as c:
            stream = await chat(c, stream=True)
            first = await stream.__anext__()
            proceed.set()
            return first, [part async for part in stream]

    first, rest = asyncio.run(asyncio.wait_for(main(), 10))
    assert stalled == []
    assert first.choices[0].delta.content == "first"
    assert contents(rest) == ["second"]


def test_an_async_stream_takes_every_buffered_event_in_one_hop(server: Server) -> None:
    server.reply(Reply(chunks=sse(*(chunk(str(i)) for i in range(200)), chunk(finish="stop"))))
    hops: list[int] = []

    async def main() -> list[Any]:
        async with tl.AsyncTogether(api_key="k", base_url=server.url, max_retries=0, timeout=2) as c:
            stream = await chat(c, stream=True)

            def counting(original: Callable[[], Any]) -> Callable[[], Any]:
                def counted() -> Any:
                    hops.append(1)
                    return original()

                return counted

            wrap_next_available(stream.stream, counting)
            return [part async for part in stream]

    parts = asyncio.run(asyncio.wait_for(main(), 10))
    assert len(parts) == 201
    assert len(hops) < 100  # the 202 events (one HTTP chunk each) do not each cost a thread hop


# -- Streams: connection release ----------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_fully_consumed_stream_returns_its_connection_for_reuse(
    server: Server, client: tl.Together, endpoint: str
) -> None:
    for _ in range(3):
        server.reply(Reply(chunks=sse(text_chunk("a"), text_chunk("b", finish="stop"))))
        if endpoint == "chat":
            list(chat(client, stream=True))
        else:
            list(client.completions.create(model="m", prompt="p", stream=True))
    chat(client)
    assert len(server.requests) == 4
    assert len(server.connections) == 1


def test_a_stream_with_events_after_done_still_frees_its_connection(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=sse(chunk("a", finish="stop")) + [data_event(chunk("late"))] * 3))
    assert contents(list(chat(client, stream=True))) == ["a"]
    chat(client)
    assert len(server.connections) == 1


def test_done_ends_iteration_even_if_the_server_keeps_the_body_open(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    shorten_drain(monkeypatch)
    release = threading.Event()
    stalled: list[bool] = []
    server.reply(done_then_hold(release, stalled))
    with make_client(server, max_retries=0, timeout=2) as c:
        try:
            assert contents(list(chat(c, stream=True))) == ["a"]
        finally:
            release.set()
    assert stalled == []


def test_a_connection_still_inside_a_body_after_done_is_not_reused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    shorten_drain(monkeypatch)
    release = threading.Event()
    stalled: list[bool] = []
    server.reply(done_then_hold(release, stalled))
    with make_client(server, max_retries=0, timeout=0.3) as c:
        try:
            assert contents(list(chat(c, stream=True))) == ["a"]
            # That connection still carries an unfinished body: the next call needs a fresh one.
            assert chat(c).choices[0].message.content == "Hello there."
        finally:
            release.set()
    assert stalled == []
    assert len(server.connections) == 2


@pytest.mark.parametrize("abandon", ABANDONS)
def test_an_abandoned_stream_closes_its_connection(
    server: Server, client: tl.Together, abandon: Callable[[Callable[[], Any]], None]
) -> None:
    closed = threading.Event()
    held: list[str] = []
    server.reply(hold_open([data_event(chunk("a"))], closed, held))
    with no_unclosed_sockets():  # closed by the stream, not left to the socket's finalizer
        abandon(lambda: chat(client, stream=True))
    assert closed.wait(3), held
    assert held == []
    assert chat(client).choices[0].message.content == "Hello there."
    assert len(server.connections) == 2


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b'data: {"error": {"message": "boom"}}\n\n', id="error-object"),
        pytest.param(b"data: not json\n\n", id="non-json"),
    ],
)
def test_a_stream_that_raises_closes_its_connection(server: Server, client: tl.Together, bad: bytes) -> None:
    closed = threading.Event()
    held: list[str] = []
    server.reply(hold_open([data_event(chunk("a")), bad], closed, held))
    got: list[Any] = []
    with pytest.raises(tl.APIError):
        collect(chat(client, stream=True), got)
    assert contents(got) == ["a"]
    assert closed.wait(3), held
    assert held == []
    chat(client)
    assert len(server.connections) == 2


def test_a_stream_timeout_closes_its_connection(server: Server) -> None:
    closed = threading.Event()
    held: list[str] = []
    server.reply(hold_open([data_event(chunk("a"))], closed, held))
    with make_client(server, max_retries=0, timeout=0.1) as c:
        with pytest.raises(tl.Timeout):
            list(chat(c, stream=True))
        assert closed.wait(3), held
        chat(c)
    assert len(server.connections) == 2


def test_closing_a_stream_twice_and_iterating_after_close_is_harmless(server: Server, client: tl.Together) -> None:
    server.reply(Reply(chunks=sse(chunk("a"), chunk("b", finish="stop"))))
    stream = chat(client, stream=True)
    assert next(stream).choices[0].delta.content == "a"
    stream.close()
    stream.close()
    assert list(stream) == []
    with pytest.raises(StopIteration):
        next(stream)


def test_closing_a_stream_from_another_thread_ends_the_loop_quietly(server: Server, client: tl.Together) -> None:
    first, closed = threading.Event(), threading.Event()

    def the_rest_after_the_close(handler: Handler) -> None:
        start_stream(handler, chunk("0"))
        closed.wait(5)
        with contextlib.suppress(OSError):
            for piece in sse(*(chunk(str(i)) for i in range(1, 50)), chunk(finish="stop")):
                write_piece(handler, piece)

    server.reply(the_rest_after_the_close)
    stream = chat(client, stream=True)
    seen: list[str] = []
    failures: list[BaseException] = []

    def consume() -> None:
        try:
            for piece in stream:
                seen.append(piece.choices[0].delta.content)
                first.set()
        except BaseException as exc:  # the test fails on any exception here
            failures.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    assert first.wait(5)
    stream.close()
    closed.set()
    thread.join(5)
    assert not thread.is_alive() and failures == []
    assert 0 < len(seen) < 50


# -- Streams: StreamAccumulator -----------------------------------------------


def test_accumulator_joins_content_and_reasoning(server: Server, client: tl.Together) -> None:
    server.reply(
        Reply(
            chunks=sse(
                delta_chunk({"role": "assistant", "reasoning": "Let me "}),
                delta_chunk({"reasoning": "think."}),
                delta_chunk({"content": "Hel"}),
                delta_chunk({"content": "lo"}),
                delta_chunk({"content": "!"}, finish="stop"),
                delta_chunk({}, usage={"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}),
            )
        )
    )
    accumulator = tl.StreamAccumulator()
    for item in chat(client, stream=True):
        assert accumulator.add(item) is item
    response = accumulator.response()
    assert isinstance(response, tl.ChatCompletionResponse)
    assert response.id == "c1" and response.model == "m"
    message = response.choices[0].message
    assert message.role == "assistant"
    assert message.content == "Hello!"
    assert message.reasoning == "Let me think."
    assert message.tool_calls is None
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.total_tokens == 5


def test_accumulator_assembles_interleaved_tool_call_arguments(server: Server, client: tl.Together) -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"index": index, **fields}

    deltas = [
        {
            "role": "assistant",
            "tool_calls": [call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""})],
        },
        {"tool_calls": [call(1, id="call_b", type="function", function={"name": "get_time", "arguments": '{"tz"'})]},
        {"tool_calls": [call(0, function={"arguments": '{"city": '})]},
        {"tool_calls": [call(1, function={"arguments": ': "UTC"}'})]},
        {"tool_calls": [call(0, function={"arguments": '"Paris"}'})]},
    ]
    chunks = [delta_chunk(d) for d in deltas]
    chunks.append(
        delta_chunk({}, finish="tool_calls", usage={"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17})
    )
    server.reply(Reply(chunks=sse(*chunks)))
    accumulator = tl.StreamAccumulator()
    for item in chat(client, stream=True):
        accumulator.add(item)
    response = accumulator.response()
    choice = response.choices[0]
    calls = choice.message.tool_calls
    assert [c.id for c in calls] == ["call_a", "call_b"]
    assert [c.type for c in calls] == ["function", "function"]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert calls[0].function.arguments == '{"city": "Paris"}'
    assert calls[1].function.arguments == '{"tz": "UTC"}'
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert choice.finish_reason == "tool_calls"
    assert response.usage.total_tokens == 17


def test_accumulator_keeps_choices_apart_by_index() -> None:
    accumulator = tl.StreamAccumulator()
    for index, text in [(0, "a"), (1, "x"), (0, "b"), (1, "y")]:
        body = chunk()
        body["choices"] = [{"index": index, "delta": {"content": text}, "finish_reason": None}]
        accumulator.add(parse_as(tl.ChatCompletionChunk, body))
    response = accumulator.response()
    assert [c.message.content for c in response.choices] == ["ab", "xy"]
    assert [c.index for c in response.choices] == [0, 1]


def test_accumulator_takes_a_top_level_finish_reason() -> None:
    accumulator = tl.StreamAccumulator()
    accumulator.add(parse_as(tl.ChatCompletionChunk, chunk("a")))
    last = chunk()
    last["finish_reason"] = "eos"
    accumulator.add(parse_as(tl.ChatCompletionChunk, last))
    choice = accumulator.response().choices[0]
    assert (choice.message.content, choice.finish_reason) == ("a", "eos")


def test_accumulator_builds_a_completion_response_from_text_chunks(server: Server, client: tl.Together) -> None:
    server.reply(
        Reply(
            chunks=sse(
                text_chunk("def"),
                text_chunk(" f"),
                text_chunk(
                    "():", finish="length", usage={"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
                ),
            )
        )
    )
    accumulator = tl.StreamAccumulator()
    for item in client.completions.create(model="m", prompt="p", stream=True):
        accumulator.add(item)
    response = accumulator.response()
    assert isinstance(response, tl.CompletionResponse)
    assert response.id == "cmpl-1"
    assert response.choices[0].text == "def f():"
    assert response.choices[0].finish_reason == "length"
    assert response.usage.total_tokens == 4


# -- Transport ----------------------------------------------------------------


def test_slow_response_raises_timeout(server: Server) -> None:
    server.default = Reply(200, CHAT_RESPONSE, delay=0.5)
    c, delays = client_and_delays(server, 0, timeout=0.1)
    with pytest.raises(tl.Timeout) as info:
        chat(c)
    assert isinstance(info.value, tl.APITimeoutError)
    assert isinstance(info.value, tl.APIConnectionError)
    assert isinstance(info.value, tl.APIError)
    assert not isinstance(info.value, OSError)
    assert info.value.status_code is None
    assert len(server.requests) == 1


def test_timeouts_are_retried_per_max_retries(server: Server) -> None:
    server.default = Reply(200, CHAT_RESPONSE, delay=0.5)
    c, delays = client_and_delays(server, 2, timeout=0.1)
    with pytest.raises(tl.APITimeoutError):
        chat(c)
    assert len(server.requests) == 3
    assert len(delays) == 2


def test_timeout_then_success_returns_the_result(server: Server) -> None:
    server.reply(Reply(200, CHAT_RESPONSE, delay=0.5))
    c, delays = client_and_delays(server, 1, timeout=0.1)
    assert chat(c).choices[0].message.content == "Hello there."
    assert len(server.requests) == 2
    assert len(delays) == 1


def test_per_call_timeout_shorter_than_the_clients_applies(server: Server) -> None:
    server.default = Reply(200, CHAT_RESPONSE, delay=0.5)
    c, _ = client_and_delays(server, 0, timeout=30)
    with pytest.raises(tl.Timeout):
        chat(c, timeout=0.1)


def test_per_call_timeout_longer_than_the_clients_applies(server: Server) -> None:
    server.default = Reply(200, CHAT_RESPONSE, delay=0.25)
    c, _ = client_and_delays(server, 0, timeout=0.1)
    assert chat(c, timeout=5).choices[0].message.content == "Hello there."
    assert len(server.requests) == 1


def test_connection_refused_raises_api_connection_error_after_retries() -> None:
    with tl.Together(api_key="k", base_url=refused_url(), max_retries=2, timeout=2) as c:
        delays: list[float] = []
        record_delays(c, delays)
        with pytest.raises(tl.APIConnectionError) as info:
            chat(c)
    assert not isinstance(info.value, OSError)
    assert not isinstance(info.value, tl.Timeout)
    assert info.value.status_code is None
    assert len(delays) == 2
    for n, delay in enumerate(delays):
        assert 0.75 * 0.5 * 2**n <= delay <= 0.5 * 2**n


def test_connection_refused_with_no_retries_raises_at_once() -> None:
    with tl.Together(api_key="k", base_url=refused_url(), max_retries=0, timeout=2) as c:
        delays: list[float] = []
        record_delays(c, delays)
        with pytest.raises(tl.APIConnectionError):
            c.completions.create(model="m", prompt="p")
    assert delays == []


def test_connection_closed_without_a_response_is_retried(server: Server) -> None:
    server.reply(hang_up)
    c, delays = client_and_delays(server, 1)
    assert chat(c).choices[0].message.content == "Hello there."
    assert len(server.requests) == 2
    assert len(delays) == 1


@pytest.mark.parametrize("action", BROKEN_RESPONSES)
def test_broken_responses_raise_api_connection_error_not_raw_exceptions(server: Server, action: Any) -> None:
    server.default = action
    c, delays = client_and_delays(server, 0, timeout=0.1)
    with pytest.raises(tl.APIConnectionError) as info:
        chat(c)
    assert not isinstance(info.value, (OSError, ValueError))
    assert info.value.status_code is None
    assert len(server.requests) == 1


@pytest.mark.parametrize("action", BROKEN_RESPONSES[:2])
def test_broken_response_before_the_status_is_retried(server: Server, action: Any) -> None:
    server.reply(action)
    c, delays = client_and_delays(server, 1, timeout=0.2)
    assert chat(c).choices[0].message.content == "Hello there."
    assert len(server.requests) == 2
    assert len(delays) == 1


@pytest.mark.parametrize("action", BROKEN_RESPONSES[2:])
def test_broken_response_body_is_retried(server: Server, action: Any) -> None:
    server.reply(action)
    c, delays = client_and_delays(server, 1, timeout=0.2)
    assert chat(c).choices[0].message.content == "Hello there."
    assert len(server.requests) == 2
    assert len(delays) == 1


@pytest.mark.parametrize("max_retries", [0, 2])
def test_connection_refused_is_a_connection_error_and_is_retried(refused_port: int, max_retries: int) -> None:
    delays: list[float] = []
    base_url = f"http://127.0.0.1:{refused_port}/v1"
    with tl.Together(api_key="k", base_url=base_url, timeout=1, max_retries=max_retries) as client:
        record_delays(client, delays)
        with pytest.raises(tl.APIConnectionError) as info:
            chat(client)
    assert not isinstance(info.value, tl.APITimeoutError)
    assert len(delays) == max_retries


@pytest.mark.parametrize(
    "action",
    [
        abort_connection,
        hang_up,
        raw_reply(b"garbage instead of a status line\r\n\r\n"),
        raw_reply(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"),
        raw_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"),
        raw_reply(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n{}"),
        raw_reply(b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 101 + b"Content-Length: 2\r\n\r\n{}"),
        raw_reply(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id": '),
        raw_reply(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}"),
        raw_reply(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nnotgz"),
    ],
    ids=[
        "reset before headers",
        "hang-up before headers",
        "garbage status line",
        "bad status code",
        "headers cut off",
        "header line too long",
        "too many headers",
        "body shorter than Content-Length",
        "bad chunk size",
        "broken gzip",
    ],
)
def test_a_broken_response_is_a_connection_error_and_the_next_call_succeeds(
    echo_server: Server, action: Callable[[Handler], None]
) -> None:
    echo_server.reply(action)
    with make_client(echo_server, max_retries=0) as client:
        with pytest.raises(tl.APIConnectionError) as info:
            chat(client)
        assert not isinstance(info.value, http.client.HTTPException)
        assert not isinstance(info.value, tl.APITimeoutError)
        assert str(info.value)
        assert ask(client, "next") == "next"


def test_a_body_shorter_than_its_length_says_how_much_arrived(echo_server: Server) -> None:
    echo_server.reply(raw_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"))
    with make_client(echo_server, max_retries=0) as client:
        with pytest.raises(tl.APIConnectionError, match="got 10 bytes"):
            chat(client)


def test_a_reset_on_a_fresh_connection_is_retried(echo_server: Server) -> None:
    echo_server.reply(abort_connection)
    delays: list[float] = []
    with make_client(echo_server, max_retries=1) as client:
        record_delays(client, delays)
        assert ask(client, "second try") == "second try"
    assert len(delays) == 1
    assert len(echo_server.requests) == 2


def test_a_read_timeout_is_an_api_timeout_error(echo_server: Server) -> None:
    echo_server.reply(Reply(200, CHAT_RESPONSE, delay=1.0))
    with make_client(echo_server, max_retries=0, timeout=0.1) as client:
        with pytest.raises(tl.APITimeoutError):
            chat(client)


def test_connection_errors_name_the_host_and_port(raw_server: Any) -> None:
    refused = free_port()
    with pytest.raises(tl.APIConnectionError, match=re.escape(f"connecting to 127.0.0.1:{refused}")):
        chat(make_client(f"http://127.0.0.1:{refused}/v1", timeout=1))
    stalled = raw_server(send_then(b"", "stall"))
    with pytest.raises(tl.APITimeoutError, match=re.escape(f"waiting for the response from {host_port(stalled)}")):
        chat(make_client(stalled.url, timeout=0.2))
    hung_up = raw_server(send_then(b"", "close"))
    with pytest.raises(tl.APIConnectionError, match=re.escape(host_port(hung_up))):
        chat(make_client(hung_up.url, timeout=1))
    cut = raw_server(send_then(http_stream("x")[:-40]))
    with pytest.raises(tl.APIConnectionError, match=re.escape(f"reading the stream from {host_port(cut)}")):
        call_text(make_client(cut.url, timeout=1), stream=True)
    short = raw_server(send_then(http_message(b'{"id":', length=100)))
    with pytest.raises(tl.APIConnectionError, match=re.escape(f"reading the response from {host_port(short)}")):
        chat(make_client(short.url, timeout=1))


def test_an_international_host_name_is_sent_as_punycode() -> None:
    client = tl.Together(api_key="k", base_url="https://bücher.example/v1")
    assert origin_of(client) == ("https", "xn--bcher-kva.example", 443)
    with pytest.raises(ValueError, match="base_url"):
        tl.Together(api_key="k", base_url="https://" + "x" * 70 + "ü.example/v1")


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs /proc/net/tcp to see the connect hang")
def test_cancelling_interrupts_a_connect_that_hangs() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]  # a full accept queue: new connects hang
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
        try:
            hanging = connects_hanging(port)
            client = tl.Together(api_key="k", base_url=f"http://127.0.0.1:{port}/v1", timeout=10)
            outcome, thread = call_cancelled_when(client, lambda: connects_hanging(port) > hanging)
            assert not thread.is_alive(), "the connect went on after the cancel"
            assert isinstance(outcome[0], tl.APIConnectionError) and "cancelled" in str(outcome[0])
        finally:
            for filler in fillers:
                filler.close()


def test_cancelling_interrupts_a_tls_handshake_that_hangs() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        held: list[socket.socket] = []
        accepter = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
        accepter.start()  # accepts, then never speaks TLS
        try:
            client = tl.Together(api_key="k", base_url=f"https://127.0.0.1:{listener.getsockname()[1]}/v1", timeout=10)
            # cancelled once the client's hello waits unanswered
            outcome, thread = call_cancelled_when(client, lambda: bool(held and select.select(held, [], [], 0)[0]))
            assert not thread.is_alive(), "the handshake went on after the cancel"
            assert isinstance(outcome[0], tl.APIConnectionError) and "cancelled" in str(outcome[0])
        finally:
            accepter.join(2)
            for sock in held:
                sock.close()


# -- Transport: HTTP/1.1 messages from hostile servers ------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_reset_before_the_headers_is_a_connection_error(raw_server: Any, stream: bool) -> None:
    raw_server = raw_server(send_then(b"", "reset"))
    with pytest.raises(tl.APIConnectionError) as info:
        list(chat(make_client(raw_server.url, timeout=1), stream=stream)) if stream else chat(
            make_client(raw_server.url, timeout=1)
        )
    assert not isinstance(info.value, tl.Timeout)
    assert len(raw_server.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_sent_before_a_big_upload_was_read_is_the_error_raised(raw_server: Any, stream: bool) -> None:
    body = b'{"error": {"message": "Request Entity Too Large: max 1MB", "type": "invalid_request_error"}}'
    answer = http_message(body, status="413 Payload Too Large", extra="Connection: close\r\n")
    server = raw_server(early_answer(answer), read_requests=False)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 16_000_000}}
    client = make_client(server, max_retries=2, timeout=1)
    with pytest.raises(tl.APIStatusError) as info:
        chat(client, messages=[{"role": "user", "content": [image]}], stream=stream)
    client.close()
    assert info.value.status_code == 413
    assert str(info.value) == "Error code: 413 - Request Entity Too Large: max 1MB"
    assert server.connections == 1  # a 413 is an answer: not retried, the upload not sent again


def test_an_unusable_early_answer_gives_the_send_error_and_closes_the_socket(raw_server: Any) -> None:
    answer = http_message(b"too big", status="413 Payload Too Large", length=-1, extra="Content-Length: abc\r\n")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 16_000_000}}
    server = raw_server(early_answer(answer), read_requests=False)
    with no_unclosed_sockets():
        client = make_client(server, timeout=1)
        with pytest.raises(tl.APIConnectionError, match="sending the request"):
            chat(client, messages=[{"role": "user", "content": [image]}])
        client.close()


@pytest.mark.parametrize("then", ["close", "reset"])
def test_a_connection_lost_after_the_headers_promised_a_body_is_a_connection_error(raw_server: Any, then: str) -> None:
    raw_server = raw_server(send_then(http_message(length=1000), then))
    with pytest.raises(tl.APIConnectionError) as info:
        chat(make_client(raw_server.url, timeout=1))
    assert not isinstance(info.value, tl.Timeout)


@pytest.mark.parametrize("then", ["close", "reset"])
def test_a_connection_lost_mid_body_is_a_connection_error(raw_server: Any, then: str) -> None:
    body = chat_json()
    raw_server = raw_server(send_then(http_message(body[: len(body) // 2], length=len(body)), then))
    with pytest.raises(tl.APIConnectionError) as info:
        chat(make_client(raw_server.url, timeout=1))
    assert not isinstance(info.value, tl.Timeout)


@pytest.mark.parametrize("then", ["close", "reset"])
def test_a_connection_lost_mid_stream_is_a_connection_error_after_the_chunks_so_far(raw_server: Any, then: str) -> None:
    head = http_message(content_type="text/event-stream", length=-1, extra="Transfer-Encoding: chunked\r\n")
    first = chunked(b"".join(sse(chunk("one"), done=False)))
    raw_server = raw_server(send_then(head + first + b'40\r\ndata: {"cut', then))
    got: list[str] = []
    with pytest.raises(tl.APIConnectionError) as info:
        for piece in chat(make_client(raw_server.url, timeout=1), stream=True):
            got.append(piece.choices[0].delta.content)
    assert not isinstance(info.value, tl.Timeout)
    assert got in ([], ["one"])  # a reset may discard what was buffered


@pytest.mark.parametrize("stream", [False, True])
def test_headers_that_never_come_time_out(raw_server: Any, stream: bool) -> None:
    raw_server = raw_server(send_then(b"", "stall"))
    client = make_client(raw_server.url, timeout=0.1)
    with pytest.raises(tl.Timeout):
        chat(client, stream=stream)
    assert len(raw_server.requests) == 1


def test_a_json_body_trickling_one_byte_per_half_second_times_out(raw_server: Any) -> None:
    body = chat_json()
    raw_server = raw_server(trickle(http_message(length=len(body)), body, 0.5))
    with pytest.raises(tl.Timeout):
        chat(make_client(raw_server.url, timeout=0.1))


def test_a_stream_trickling_one_byte_per_half_second_times_out(raw_server: Any) -> None:
    head = http_message(content_type="text/event-stream", length=-1, extra="Transfer-Encoding: chunked\r\n")
    raw_server = raw_server(trickle(head, chunked(stream_bytes("a")), 0.5))
    stream = chat(make_client(raw_server.url, timeout=0.1), stream=True)
    with pytest.raises(tl.Timeout):
        list(stream)


def test_a_40_mb_stream_is_consumed_in_bounded_memory(server: Server) -> None:
    content = "x" * (64 * 1024 - 200)
    event = b"".join(sse(chunk(content), done=False))
    frame = b"%x\r\n%s\r\n" % (len(event), event)
    count = BIG_STREAM_MB * 1024 * 1024 // len(event)
    tail = chunked(b"".join(sse(chunk(finish="stop")))) + b"0\r\n\r\n"

    def act(handler: Handler) -> None:  # generated lazily: one event object, written `count` times
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(count):
            handler.wfile.write(frame)
        handler.wfile.write(tail)

    server.reply(act)
    client = make_client(server, max_retries=0)
    chunks = total = 0
    tracemalloc.start()
    try:
        with chat(client, stream=True) as stream:
            for piece in stream:
                chunks += 1
                total += len(piece.choices[0].delta.content or "")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert chunks == count + 1
    assert total == count * len(content) >= BIG_STREAM_MB * 1000 * 1000 * 0.99
    assert peak < 20 * 1024 * 1024
    assert chat(client).choices[0].message.content == "Hello there."


def test_an_uninvited_gzip_json_response_is_decoded(server: Server) -> None:
    server.reply(
        Reply(
            body=gzip.compress(chat_json("zipped")),
            headers={"Content-Encoding": "gzip"},
            content_type="application/json",
        )
    )
    client = make_client(server, max_retries=0)
    assert chat(client).choices[0].message.content == "zipped"


def test_an_uninvited_gzip_error_response_gives_a_readable_message(server: Server) -> None:
    body = gzip.compress(json.dumps({"error": {"message": "model not found"}}).encode())
    server.reply(Reply(404, body=body, headers={"Content-Encoding": "gzip"}, content_type="application/json"))
    with pytest.raises(tl.NotFoundError, match="model not found"):
        chat(make_client(server, max_retries=0))


@pytest.mark.parametrize("piece_size", [7, 4096])
def test_an_uninvited_gzip_stream_is_decoded(server: Server, piece_size: int) -> None:
    contents = [f"part {i} " for i in range(50)]
    packed = gzip.compress(stream_bytes(*contents))
    pieces = [packed[i : i + piece_size] for i in range(0, len(packed), piece_size)]
    server.reply(Reply(chunks=pieces, headers={"Content-Encoding": "gzip"}))
    client = make_client(server, max_retries=0)
    assert texts(chat(client, stream=True)) == contents
    assert chat(client).choices[0].message.content == "Hello there."


@pytest.mark.parametrize("stream", [False, True])
def test_a_corrupt_gzip_body_is_a_typed_error(server: Server, stream: bool) -> None:
    packed = gzip.compress(stream_bytes("a") if stream else chat_json())
    corrupt = packed[:10] + bytes(b ^ 0x5A for b in packed[10:])
    reply = Reply(chunks=[corrupt]) if stream else Reply(body=corrupt, content_type="application/json")
    reply.headers["Content-Encoding"] = "gzip"
    server.reply(reply)
    with pytest.raises(tl.APIError):
        result = chat(make_client(server, max_retries=0), stream=stream)
        list(result)


@pytest.mark.parametrize(
    "encoding",
    [
        "identity",
        "gzip",
    ],
)
def test_a_huge_error_body_is_cut_to_the_error_body_limit(server: Server, encoding: str) -> None:
    huge = b"x" * (20 * 1024 * 1024)
    body = gzip.compress(huge) if encoding == "gzip" else huge
    server.reply(Reply(500, body=body, headers={"Content-Encoding": encoding}, content_type="text/plain"))
    with pytest.raises(tl.InternalServerError) as info:
        chat(make_client(server, max_retries=0))
    assert len(info.value.body) <= MAX_ERROR_BODY
    assert len(str(info.value)) < 1000


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_unsupported_content_encoding_is_a_connection_error_not_garbage_and_not_retried(
    server: Server, encoding: str, stream: bool
) -> None:
    garbage = b"\x1b\x00\x00\x00\x8b\x0b\x80garbage\x03"
    reply = Reply(chunks=[garbage]) if stream else Reply(body=garbage, content_type="application/json")
    reply.headers["Content-Encoding"] = encoding
    server.reply(reply)
    c = make_client(server, max_retries=3)
    delays: list[float] = []
    record_delays(c, delays)
    with pytest.raises(tl.APIConnectionError, match=re.escape(repr(encoding))):
        result = chat(c, stream=stream)
        list(result)
    assert len(server.requests) == 1 and delays == []
    assert chat(c).choices[0].message.content == "Hello there."


@pytest.mark.parametrize("size_line", [b"zz", b"-5", b"1g", b"", b"0x10", b"f" * 40])
@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_chunk_size_is_a_typed_error(raw_server: Any, size_line: bytes, stream: bool) -> None:
    kind = "text/event-stream" if stream else "application/json"
    head = http_message(content_type=kind, length=-1, extra="Transfer-Encoding: chunked\r\n")
    raw_server = raw_server(send_then(head + size_line + b"\r\ndata: x\r\n0\r\n\r\n"))
    with pytest.raises(tl.APIError):
        list(chat(make_client(raw_server.url, timeout=1), stream=True)) if stream else chat(
            make_client(raw_server.url, timeout=1)
        )


@pytest.mark.parametrize(
    "version, extra, delimited",
    [
        ("HTTP/1.0", "", "length"),
        ("HTTP/1.0", "", "close"),
        ("HTTP/1.1", "Connection: close\r\n", "length"),
        ("HTTP/1.1", "Connection: close\r\n", "close"),
    ],
)
def test_a_server_that_closes_after_each_response_serves_many_sequential_calls(
    raw_server: Any, version: str, extra: str, delimited: str
) -> None:
    length = None if delimited == "length" else -1
    replies = {
        b'"stream":true': http_message(
            stream_bytes("s"), version=version, extra=extra, length=length, content_type="text/event-stream"
        ),
        b"": http_message(chat_json("j"), version=version, extra=extra, length=length),
    }

    def act(server: RawServer, conn: socket.socket) -> bool:
        request = server.requests[-1]
        conn.sendall(next(reply for marker, reply in replies.items() if marker in request))
        return False

    raw_server = raw_server(act)
    client = make_client(raw_server.url, timeout=1)
    for i in range(30):
        if i % 3:
            assert chat(client).choices[0].message.content == "j"
        else:
            assert texts(chat(client, stream=True)) == ["s"]
    assert len(raw_server.requests) == raw_server.connections == 30


def test_a_huge_declared_length_reads_piece_by_piece(server: Server, client: tl.Together) -> None:
    server.reply(raw_reply(b'HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n{"id"'))
    with pytest.raises(tl.APIConnectionError, match="expected"):
        chat(client)


# -- Transport: encodings -----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_transfer_encoding_gzip_chunked_is_decoded(raw_server: Any, stream: bool) -> None:
    body = stream_bytes("zip", "ped") if stream else chat_json("zipped")
    kind = "text/event-stream" if stream else "application/json"
    head = http_message(length=-1, content_type=kind, extra="Transfer-Encoding: gzip, chunked\r\n")
    packed = gzip_members(body)
    server = raw_server(send_then(head + chunked(packed[:7]) + chunked(packed[7:]) + b"0\r\n\r\n", "keep"))
    assert call_text(make_client(server.url, timeout=1), stream=stream) == "zipped"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("header", ["Content-Encoding", "Transfer-Encoding"])
def test_a_gzip_body_of_several_members_is_decoded_whole(raw_server: Any, stream: bool, header: str) -> None:
    body = stream_bytes("one ", "two ", "three") if stream else chat_json("one two three")
    kind = "text/event-stream" if stream else "application/json"
    packed = gzip_members(body, members=3)
    if header == "Content-Encoding":
        response = http_message(packed, content_type=kind, extra="Content-Encoding: gzip\r\n")
    else:
        head = http_message(length=-1, content_type=kind, extra="Transfer-Encoding: gzip, chunked\r\n")
        response = head + chunked(packed) + b"0\r\n\r\n"
    assert call_text(make_client(raw_server(send_then(response, "keep")).url), stream=stream) == "one two three"


@pytest.mark.parametrize("stream", [False, True])
def test_a_gzip_body_cut_off_says_so_instead_of_ending_short(raw_server: Any, stream: bool) -> None:
    body = stream_bytes("never ", "ends") if stream else chat_json("cut")
    packed = gzip.compress(body)[:-12]  # the compressed data ends, its gzip member does not
    kind = "text/event-stream" if stream else "application/json"
    server = raw_server(send_then(http_message(packed, content_type=kind, extra="Content-Encoding: gzip\r\n"), "keep"))
    with pytest.raises(tl.APIConnectionError, match="gzip"):
        call_text(make_client(server.url, timeout=1), stream=stream)


def test_an_unsupported_transfer_coding_is_named(raw_server: Any) -> None:
    head = http_message(length=-1, extra="Transfer-Encoding: br, chunked\r\n")
    server = raw_server(send_then(head + chunked(b"\x1b\x00junk") + b"0\r\n\r\n", "keep"))
    with pytest.raises(tl.APIConnectionError, match=re.escape("Transfer-Encoding 'br, chunked'")):
        call_text(make_client(server.url, timeout=1))


# -- Transport: uploads -------------------------------------------------------


def test_a_slow_but_steady_upload_is_not_cut_off_by_the_timeout(raw_server: Any) -> None:
    # The first 2 MB read through a 64 KiB buffer with a 20 ms pause per read: the whole upload
    # takes longer than the timeout, each wait far less. The fast rest outlasts the send buffers.
    server = raw_server(slow_reader(1 << 19, 0.02, 2 << 20), read_requests=False, receive_buffer=65536)
    client = make_client(server.url, timeout=0.2)
    result = chat(client, messages=video_message(8 << 20))
    assert result.choices[0].message.content == f"got {server.received}"
    assert server.received > 8 << 20


def test_an_upload_the_server_stops_reading_times_out_naming_the_host(raw_server: Any) -> None:
    server = raw_server(slow_reader(1 << 16, None, 0), read_requests=False, receive_buffer=65536)
    client = make_client(server.url, timeout=0.2)
    with pytest.raises(tl.APITimeoutError, match=re.escape(f"sending the request to {host_port(server)}")):
        chat(client, messages=video_message(16 << 20))


# -- Transport: the connection pool -------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_sequential_calls_of_one_client_reuse_one_connection(echo_server: Server, stream: bool) -> None:
    with make_client(echo_server, max_retries=0) as client:
        for number in range(20):
            assert ask(client, f"call {number}", stream=stream) == f"call {number}"
        assert len(echo_server.connections) == 1
        assert echo_server.accepted == 1
        assert len(idle_connections(client)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_threads_sharing_one_client_each_get_their_own_answer_and_the_pool_stays_bounded(
    echo_server: Server, stream: bool
) -> None:
    threads, calls = 16, 25
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(thread: int) -> None:
        start.wait(timeout=5)
        for number in range(calls):
            marker = f"thread {thread} call {number}"
            try:
                results[marker] = ask(client, marker, stream=stream)
            except BaseException as exc:  # noqa: B902 - reported below
                errors.append(exc)

    with make_client(echo_server, max_retries=0) as client:
        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert errors == []
        assert len(results) == threads * calls
        assert all(answer == marker for marker, answer in results.items())
        assert len(echo_server.requests) == threads * calls
        assert echo_server.accepted <= threads
        idle = idle_connections(client)
        assert 1 <= len(idle) <= threads
        assert len({id(connection) for connection in idle}) == len(idle)


def test_the_pool_keeps_at_most_pool_maxsize_idle_connections(
    echo_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_pool_limits(monkeypatch, maxsize=2)
    together = threading.Barrier(6)

    def held(handler: Handler) -> None:  # all six calls are in flight at once: six connections
        together.wait(timeout=5)
        echo(handler)

    echo_server.default = held
    answers: list[str] = []
    with no_unclosed_sockets(), make_client(echo_server, max_retries=0) as client:
        workers = [threading.Thread(target=lambda n=n: answers.append(ask(client, f"m{n}"))) for n in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=10)
        assert sorted(answers) == [f"m{n}" for n in range(6)]
        assert echo_server.accepted == 6
        assert len(idle_connections(client)) == 2
        assert echo_server.wait_for(lambda s: s.closed == 4), "the 4 connections beyond the pool size stay open"


def test_an_idle_connection_older_than_the_idle_limit_is_closed_not_reused(
    echo_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_pool_limits(monkeypatch, idle_seconds=0.0)
    with make_client(echo_server, max_retries=0) as client:
        assert ask(client, "one") == "one"
        time.sleep(0.01)
        assert ask(client, "two") == "two"
        assert echo_server.accepted == 2
        assert echo_server.wait_for(lambda s: s.closed == 1)


@pytest.mark.parametrize("how", ["close()", "with", "async with", "dropped"])
def test_closing_the_client_closes_its_kept_alive_connections(echo_server: Server, how: str) -> None:
    fds = open_fds() if os.path.isdir("/proc/self/fd") else None

    def still_open() -> bool:
        return not echo_server.wait_for(lambda s: s.closed > 0, timeout=0.03)

    with no_unclosed_sockets():
        if how == "close()":
            client = make_client(echo_server, max_retries=0)
            assert [ask(client, "a"), ask(client, "b")] == ["a", "b"]
            assert still_open()
            client.close()
            assert idle_connections(client) == []
        elif how == "with":
            with make_client(echo_server, max_retries=0) as client:
                assert [ask(client, "a"), ask(client, "b")] == ["a", "b"]
                assert still_open()
            assert idle_connections(client) == []
        elif how == "dropped":  # never closed: losing the last reference closes it
            client = make_client(echo_server, max_retries=0)
            assert [ask(client, "a"), ask(client, "b")] == ["a", "b"]
            assert still_open()
            del client
            gc.collect()  # the client and its resources refer to each other
        else:

            async def main() -> None:
                async with tl.AsyncTogether(api_key="k", base_url=echo_server.url, max_retries=0, timeout=5) as aclient:
                    await chat(aclient)
                    await chat(aclient)
                    assert still_open()

            asyncio.run(main())
        assert echo_server.wait_for(lambda s: s.closed == 1), "the server never saw the connection closed"
    assert echo_server.accepted == 1
    if fds is not None:
        assert open_fds() <= fds


def test_closing_the_client_during_a_call_lets_it_finish_then_closes_its_connection(echo_server: Server) -> None:
    arrived, release = threading.Event(), threading.Event()

    def slow(handler: Handler) -> None:
        arrived.set()
        release.wait(2)
        echo(handler)

    echo_server.reply(slow)
    answers: list[str] = []
    with no_unclosed_sockets():
        client = make_client(echo_server, max_retries=0)
        worker = threading.Thread(target=lambda: answers.append(ask(client, "in flight")))
        worker.start()
        assert arrived.wait(2)
        client.close()
        release.set()
        worker.join(5)
        assert answers == ["in flight"]
        assert idle_connections(client) == []
        assert echo_server.wait_for(lambda s: s.closed == 1), "the in-flight connection went back to a closed pool"


def test_a_closed_client_still_works_but_keeps_no_connection(echo_server: Server) -> None:
    with no_unclosed_sockets():
        client = make_client(echo_server, max_retries=0)
        assert ask(client, "before") == "before"
        client.close()
        assert ask(client, "after") == "after"
        assert ask(client, "again", stream=True) == "again"
        assert idle_connections(client) == []
        assert echo_server.wait_for(lambda s: s.closed == 3 and s.accepted == 3)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_stream_broken_off_early_closes_its_connection_and_the_next_call_succeeds(
    request: pytest.FixtureRequest, scheme: str
) -> None:
    server, options = origin_for(request, scheme)
    server.reply(Reply(chunks=sse(chunk("first"), *[chunk("more")] * 20, chunk(finish="stop")), pause=0.02))
    with no_unclosed_sockets(), make_client(server, max_retries=0, **options) as client:
        stream = chat(client, stream=True)
        assert next(iter(stream)).choices[0].delta.content == "first"
        stream.close()
        assert server.wait_for(lambda s: s.closed == 1), "the broken-off stream's connection stays open"
        assert ask(client, "next") == "next"
        assert ask(client, "and next", stream=True) == "and next"
        assert server.accepted == 2
        assert len(idle_connections(client)) == 1


def test_a_stream_cut_off_by_the_server_is_a_connection_error_and_the_next_call_succeeds(echo_server: Server) -> None:
    def cut(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        piece = sse(chunk("part"), done=False)[0]
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.flush()
        hang_up(handler)

    echo_server.reply(cut)
    with make_client(echo_server, max_retries=0) as client:
        stream = chat(client, stream=True)
        with pytest.raises(tl.APIConnectionError):
            for _ in stream:
                pass
        assert ask(client, "next") == "next"


@pytest.mark.parametrize("how", ["FIN", "RST", "408"])
@pytest.mark.parametrize("every", [1, 2], ids=["after every answer", "after every second answer"])
def test_a_kept_alive_connection_the_server_closed_while_idle_is_never_an_error(
    echo_server: Server, how: str, every: int
) -> None:
    action, closed = answer_then_close(0.005, how=how, every=every)
    echo_server.default = action
    with make_client(echo_server, max_retries=0) as client:
        for number in range(6):
            assert ask(client, f"call {number}") == f"call {number}"
            if (number + 1) % every == 0:
                assert closed.wait(2)
                closed.clear()
                # the close (or the 408) has reached the client's socket while it sits in the pool
                assert wait_until(lambda: all(is_dropped(c) for c in idle_connections(client)))
        assert echo_server.accepted == 6 // every


@pytest.mark.parametrize("peer", ["quiet", "sent bytes", "closed", "reset", "closed here"])
def test_is_dropped_tells_whether_the_server_gave_up_on_an_idle_connection(peer: str) -> None:
    near, far = tcp_pair()
    try:
        if peer == "sent bytes":  # e.g. an unsolicited 408 before closing
            far.sendall(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
        elif peer == "closed":
            far.close()
        elif peer == "reset":
            far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            far.close()
        elif peer == "closed here":
            near.close()
        if peer not in ("quiet", "closed here"):
            select.select([near], [], [], 2.0)  # let the event arrive
        assert connection_on(near).is_dropped() is (peer != "quiet")
    finally:
        near.close()
        far.close()


@pytest.mark.parametrize(
    "version, length, connection_close",
    [
        ("HTTP/1.0", True, False),
        ("HTTP/1.0", False, False),
        ("HTTP/1.1", True, True),
        ("HTTP/1.1", False, True),
    ],
    ids=["1.0 with length", "1.0 body until EOF", "1.1 Connection close", "1.1 close, body until EOF"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_server_that_closes_after_every_response_works_for_many_calls(
    echo_server: Server, version: str, length: bool, connection_close: bool, stream: bool
) -> None:
    echo_server.default = close_after_answer(version, length=length, connection_close=connection_close)
    with make_client(echo_server, max_retries=0) as client:
        for number in range(30):
            assert ask(client, f"call {number}", stream=stream) == f"call {number}"
        assert echo_server.accepted == 30
        assert idle_connections(client) == []


def test_a_late_cancel_never_shuts_a_connection_another_call_is_using(server: Server) -> None:
    waiting, cancelled = threading.Event(), threading.Event()

    def answer_after_the_cancel(handler: Handler) -> None:
        waiting.set()  # the other call now waits on the pooled connection the first call used
        cancelled.wait(5)
        handler.play(Reply(200, CHAT_RESPONSE))

    server.reply(Reply(200, CHAT_RESPONSE), answer_after_the_cancel)
    client = make_client(server, max_retries=0)
    cancel = new_cancel()
    cancellable_chat(client, cancel)  # as an AsyncTogether worker runs a call
    results: list[str] = []

    def other_call() -> None:
        try:
            results.append(chat(client).choices[0].message.content)
        except tl.TogetherException as exc:
            results.append(repr(exc))

    thread = threading.Thread(target=other_call)
    thread.start()
    assert waiting.wait(5)
    cancel.cancel()  # the first call's task is cancelled after it finished
    cancelled.set()
    thread.join(5)
    assert results == ["Hello there."]
    assert len(server.connections) == 1


def test_cancel_handle_shuts_only_the_attached_connection() -> None:
    near, far = tcp_pair()
    connection = connection_on(near)
    try:
        cancel = new_cancel()
        cancel.attach(connection)
        assert cancel.detach(connection) is True
        cancel.cancel()
        far.settimeout(0.05)
        with pytest.raises(socket.timeout):  # detached before the cancel: left alone
            far.recv(1)
        second = new_cancel()
        second.attach(connection)
        second.cancel()
        assert second.detach(connection) is False
        far.settimeout(2)
        assert far.recv(1) == b""  # shut: the peer sees the end of the connection
    finally:
        connection.close()
        far.close()


def test_a_hosts_addresses_are_looked_up_once_for_a_burst_of_connections(server: Server) -> None:
    forget_addresses()
    client = make_client(server.url.replace("127.0.0.1", "localhost"))
    threads = [threading.Thread(target=chat, args=(client,)) for _ in range(4)]
    with audit() as seen:
        chat(client)
        client.close()  # the next calls need new connections
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    assert [event for event, _ in seen].count("socket.getaddrinfo") == 1


# -- Transport: reuse that is never wrong -------------------------------------


@pytest.mark.parametrize("first", ["answer", "stream"])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_reused_connection_the_server_closed_unanswered_is_replaced_at_once_without_a_retry(
    raw_server: Any, first: str, how: str
) -> None:
    # As llama.cpp's server does after a stream: its close races with the next request on the connection.
    def answer(connection: int, request: int) -> Any:
        if (connection, request) == (1, 2):
            return b"", how
        return http_stream("first") if first == "stream" and connection == 1 else http_answer(f"c{connection}")

    server = raw_server(per_connection(answer))
    client = make_client(server.url, max_retries=0, timeout=1)
    delays: list[float] = []
    record_delays(client, delays)
    assert call_text(client, stream=first == "stream") in ("first", "c1")
    assert call_text(client) == "c2"
    assert (server.connections, len(server.requests), delays) == (2, 3, [])


def test_an_unanswered_request_goes_again_only_once_and_a_new_connection_failing_is_a_real_error(
    raw_server: Any,
) -> None:
    server = raw_server(per_connection(lambda c, n: http_answer("ok") if (c, n) == (1, 1) else (b"", "close")))
    client = make_client(server.url, max_retries=0, timeout=1)
    call_text(client)
    with pytest.raises(tl.APIConnectionError, match="without sending a response") as info:
        call_text(client)
    assert (server.connections, len(server.requests)) == (2, 3)
    assert host_port(server) in str(info.value)


def test_the_resend_on_a_new_connection_is_not_counted_against_max_retries(raw_server: Any) -> None:
    server = raw_server(per_connection(lambda c, n: http_answer("ok") if (c, n) == (1, 1) else (b"", "close")))
    client = make_client(server.url, max_retries=2, timeout=1)
    delays: list[float] = []
    record_delays(client, delays)
    call_text(client)
    with pytest.raises(tl.APIConnectionError):
        call_text(client)
    assert (len(delays), len(server.requests)) == (2, 1 + 1 + 3)  # the unanswered reuse, then three attempts


@pytest.mark.parametrize("trouble", ["part of a head", "stall"])
def test_a_reused_connection_that_began_an_answer_or_timed_out_is_not_resent(raw_server: Any, trouble: str) -> None:
    second = (b"HTTP/1.1 200 OK\r\nContent-Le", "close") if trouble == "part of a head" else (b"", "stall")
    server = raw_server(per_connection(lambda c, n: http_answer("ok") if n == 1 else second))
    client = make_client(server.url, max_retries=0, timeout=0.1)
    call_text(client)
    with pytest.raises(tl.APIConnectionError) as info:
        call_text(client)
    assert isinstance(info.value, tl.APITimeoutError) is (trouble == "stall")
    assert (server.connections, len(server.requests)) == (1, 2)


def test_bytes_after_a_complete_response_are_never_read_as_the_next_answer(raw_server: Any) -> None:
    # A gateway that writes a second response after the first: it answers nothing anyone asked.
    server = raw_server(
        per_connection(lambda c, n: http_answer("first") + http_answer("stray") if c == 1 else http_answer("fresh"))
    )
    client = make_client(server.url, timeout=1)
    assert [call_text(client), call_text(client)] == ["first", "fresh"]
    assert server.connections == 2


def test_a_content_length_counting_characters_never_shifts_the_next_answer(raw_server: Any) -> None:
    body = chat_json("café").replace(b"\\u00e9", "é".encode())
    short = http_message(body, length=len(body.decode()))  # one byte short: "é" is two bytes
    server = raw_server(per_connection(lambda c, n: short if c == 1 else http_answer("fresh")))
    client = make_client(server.url, timeout=1)
    with pytest.raises(tl.JSONError):
        call_text(client)
    assert call_text(client) == "fresh"
    assert server.connections == 2


# -- Transport: proxies -------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_https_proxy_from_the_environment_tunnels_an_https_base_url_through_connect(
    tls_server: Server, trusting: ssl.SSLContext, proxy: Proxy,
    monkeypatch: pytest.MonkeyPatch, variable: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, proxy.url)
    with make_client(tls_server, max_retries=0, ssl_context=trusting) as client:
        assert [ask(client, f"via tunnel {n}") for n in range(3)] == [f"via tunnel {n}" for n in range(3)]
    assert [(seen.method, seen.path) for seen in proxy.seen] == [("CONNECT", f"127.0.0.1:{tls_server.port}")]
    assert "authorization" not in proxy.seen[0].headers  # the API key travels inside the tunnel only
    assert [r.path for r in tls_server.requests] == ["/v1/chat/completions"] * 3
    assert all(r.headers["authorization"] == "Bearer test-key" for r in tls_server.requests)
    assert tls_server.handshakes == 1


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_http_proxy_from_the_environment_gets_the_absolute_uri_of_an_http_base_url(
    echo_server: Server, proxy: Proxy, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, proxy.url)
    with make_client(echo_server, max_retries=0) as client:
        assert [ask(client, f"via proxy {n}") for n in range(3)] == [f"via proxy {n}" for n in range(3)]
    absolute = f"http://127.0.0.1:{echo_server.port}/v1/chat/completions"
    assert [(seen.method, seen.path) for seen in proxy.seen] == [("POST", absolute)] * 3
    assert proxy.seen[0].json["messages"][0]["content"] == "via proxy 0"
    assert len(proxy.clients) == 1  # the connection to the proxy is kept alive
    assert [r.path for r in echo_server.requests] == ["/v1/chat/completions"] * 3
    assert echo_server.requests[0].headers["authorization"] == "Bearer test-key"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_all_proxy_is_used_when_the_scheme_variable_is_absent(
    request: pytest.FixtureRequest, proxy: Proxy, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    origin, options = origin_for(request, scheme)
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    with make_client(origin, max_retries=0, **options) as client:
        assert ask(client, "all") == "all"
    expected = "CONNECT" if scheme == "https" else "POST"
    assert [seen.method for seen in proxy.seen] == [expected]
    assert len(origin.requests) == 1


@pytest.mark.parametrize("scheme, variable", [("https", "HTTP_PROXY"), ("http", "HTTPS_PROXY")])
def test_the_proxy_of_the_other_scheme_is_not_used(
    request: pytest.FixtureRequest, proxy: Proxy, monkeypatch: pytest.MonkeyPatch, scheme: str, variable: str
) -> None:
    origin, options = origin_for(request, scheme)
    monkeypatch.setenv(variable, proxy.url)
    with make_client(origin, max_retries=0, **options) as client:
        assert ask(client, "direct") == "direct"
    assert proxy.seen == []
    assert len(origin.requests) == 1


@pytest.mark.parametrize(
    "no_proxy, bypassed",
    [
        ("127.0.0.1", True),
        ("*", True),
        ("example.com,127.0.0.1", True),
        ("localhost, 127.0.0.1", True),
        ("example.com", False),
        ("127.0.0.2", False),
    ],
)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_no_proxy_decides_which_hosts_bypass_the_proxy(
    request: pytest.FixtureRequest, proxy: Proxy, monkeypatch: pytest.MonkeyPatch,
    scheme: str, no_proxy: str, bypassed: bool,
) -> None:  # fmt: skip
    origin, options = origin_for(request, scheme)
    monkeypatch.setenv("HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    with make_client(origin, max_retries=0, **options) as client:
        assert ask(client, "maybe proxied") == "maybe proxied"
    assert (proxy.seen == []) is bypassed
    assert len(origin.requests) == 1


@pytest.mark.parametrize("form", ["url", "host:port"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_explicit_proxy_option_works_without_the_environment(
    request: pytest.FixtureRequest, proxy: Proxy, scheme: str, form: str
) -> None:
    origin, options = origin_for(request, scheme)
    option = proxy.url if form == "url" else proxy.url[len("http://") :]
    with make_client(origin, max_retries=0, proxy=option, **options) as client:
        assert ask(client, "explicit") == "explicit"
        assert ask(client, "explicit again") == "explicit again"
    if scheme == "https":
        assert [(s.method, s.path) for s in proxy.seen] == [("CONNECT", f"127.0.0.1:{origin.port}")]
    else:
        assert [s.path for s in proxy.seen] == [f"http://127.0.0.1:{origin.port}/v1/chat/completions"] * 2
    assert len(origin.requests) == 2


def test_an_explicit_proxy_option_wins_over_the_environment(
    echo_server: Server, proxy: Proxy, refused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{refused_port}")
    with make_client(echo_server, max_retries=0, proxy=proxy.url) as client:
        assert ask(client, "explicit") == "explicit"
    assert len(proxy.seen) == 1


@pytest.mark.parametrize(
    "userinfo, credentials",
    [("user:pass", "user:pass"), ("us%40er:p%3Ass%20word", "us@er:p:ss word"), ("token", "token:")],
)
@pytest.mark.parametrize("source", ["environment", "proxy="])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_credentials_are_sent_to_the_proxy_and_never_to_the_origin(
    request: pytest.FixtureRequest, proxy: Proxy, monkeypatch: pytest.MonkeyPatch,
    scheme: str, source: str, userinfo: str, credentials: str,
) -> None:  # fmt: skip
    origin, options = origin_for(request, scheme)
    proxy_url = f"http://{userinfo}@127.0.0.1:{proxy.server_address[1]}"
    if source == "environment":
        monkeypatch.setenv("HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY", proxy_url)
    else:
        options["proxy"] = proxy_url
    with make_client(origin, max_retries=0, **options) as client:
        assert ask(client, "secret") == "secret"
    expected = "Basic " + base64.b64encode(credentials.encode()).decode()
    assert [seen.headers.get("proxy-authorization") for seen in proxy.seen] == [expected]
    assert origin.requests[0].headers["authorization"] == "Bearer test-key"
    if scheme == "https":  # inside the tunnel: only the origin's own headers
        assert "proxy-authorization" not in origin.requests[0].headers
        assert "authorization" not in proxy.seen[0].headers


@pytest.mark.parametrize(
    "scheme, variable, proxy",
    [
        ("http", "ALL_PROXY", "socks5://127.0.0.1:1080"),
        ("https", "HTTPS_PROXY", "socks5h://127.0.0.1:1080"),
        ("http", "HTTP_PROXY", "https://127.0.0.1:3128"),
        ("http", None, "socks5://127.0.0.1:1080"),
    ],
    ids=["ALL_PROXY socks5", "HTTPS_PROXY socks5h", "HTTP_PROXY https", "proxy= socks5"],
)
def test_an_unsupported_proxy_scheme_is_a_clear_connection_error_that_is_not_retried(
    echo_server: Server, monkeypatch: pytest.MonkeyPatch, scheme: str, variable: str | None, proxy: str
) -> None:
    base_url = echo_server.url if scheme == "http" else f"https://127.0.0.1:{echo_server.port}/v1"
    options: dict[str, Any] = {}
    if variable is None:
        options["proxy"] = proxy
    else:
        monkeypatch.setenv(variable, proxy)
    delays: list[float] = []
    # proxy= is a bad argument, refused at construction; from the environment, the call fails.
    expected = ValueError if variable is None else tl.APIConnectionError
    with pytest.raises(expected) as info:
        client = tl.Together(api_key="k", base_url=base_url, timeout=1, max_retries=3, **options)
        record_delays(client, delays)
        chat(client)
    message = str(info.value)
    assert proxy.split(":")[0] in message and "http://" in message
    assert delays == []
    assert echo_server.accepted == 0


def test_a_proxy_refusing_connect_is_a_connection_error(
    tls_server: Server, trusting: ssl.SSLContext, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy.connect_status = 407
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with make_client(tls_server, max_retries=0, ssl_context=trusting) as client:
        with pytest.raises(tl.APIConnectionError, match="407"):
            chat(client)
    assert tls_server.accepted == 0


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_unreachable_proxy_is_a_connection_error(
    request: pytest.FixtureRequest, refused_port: int, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    origin, options = origin_for(request, scheme)
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{refused_port}")
    with make_client(origin, max_retries=0, **options) as client:
        with pytest.raises(tl.APIConnectionError):
            chat(client)
    assert origin.accepted == 0


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("10.0.0.0/8,127.0.0.0/8", "127.0.0.1", 80, True),
        ("10.0.0.0/8, 127.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.0.0.1", 443, False),
        ("192.168.1.5", "192.168.1.5", 443, True),
        ("192.168.1.5:8080", "192.168.1.5", 443, False),
        ("192.168.1.5:8080", "192.168.1.5", 8080, True),
        ("fd00::/8", "fd12::1", 443, True),
        ("[::1]", "::1", 443, True),
        ("[::1]:8080", "::1", 443, False),
        ("example.com", "api.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "api.example.com", 443, True),
        ("example.com", "notexample.com", 443, False),
        ("example.com:443", "api.example.com", 443, True),
        ("*", "anything.at.all", 443, True),
        ("localhost", "127.0.0.1", 80, False),  # names are not resolved
        ("", "example.com", 443, False),
        ("10.0.0.0/33", "10.0.0.1", 443, False),
    ],
)
def test_no_proxy_entries_are_domains_addresses_and_networks(
    no_proxy: str, host: str, port: int, bypassed: bool
) -> None:
    assert tl._no_proxy_matches(no_proxy, host, port) is bypassed


@pytest.mark.parametrize("name", ["NO_PROXY", "no_proxy"])
def test_a_network_in_no_proxy_sends_requests_to_its_addresses_directly(
    server: Server, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv(name, "10.0.0.0/8,127.0.0.0/8")
    assert chat(make_client(server, max_retries=0)).choices[0].message.content == "Hello there."


def test_an_address_outside_the_no_proxy_networks_still_goes_to_the_proxy(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "10.0.0.0/8")
    with pytest.raises(tl.APIConnectionError, match=re.escape(f"through the proxy 127.0.0.1:{port}")):
        chat(make_client(server, max_retries=0))


def test_a_proxy_error_names_the_proxy_and_the_origin(raw_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = raw_server(send_then(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"))
    monkeypatch.setenv("HTTPS_PROXY", f"http://{host_port(proxy)}")
    with pytest.raises(tl.APIConnectionError) as info:
        chat(make_client("https://api.example.test:8443/v1", timeout=1))
    assert f"api.example.test:8443 through the proxy {host_port(proxy)}" in str(info.value)
    assert "407" in str(info.value)


@pytest.mark.parametrize("proxy", ["http://proxy.invalid:80a", "http://:8080"])
def test_a_broken_proxy_variable_is_a_typed_error(server: Server, monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    with pytest.raises(tl.APIConnectionError, match="proxy"):
        chat(make_client(server, max_retries=3))
    assert server.requests == []
    with pytest.raises(ValueError, match="proxy"):
        make_client(server, proxy=proxy)


# -- Transport: TLS -----------------------------------------------------------


def test_tls_verification_is_on_by_default_and_its_failure_is_not_retried(tls_server: Server) -> None:
    delays: list[float] = []
    with make_client(tls_server, max_retries=3) as client:
        record_delays(client, delays)
        with pytest.raises(tl.APIConnectionError, match="(?i)certificate") as info:
            chat(client)
    assert not isinstance(info.value, tl.APITimeoutError)
    assert delays == []
    assert tls_server.accepted == 1
    assert tls_server.handshakes == 0
    assert tls_server.requests == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_with_an_ssl_context_that_trusts_the_certificate_works_and_keeps_alive(
    tls_server: Server, trusting: ssl.SSLContext, host: str
) -> None:
    base_url = f"https://{host}:{tls_server.port}/v1"
    with tl.Together(api_key="test-key", base_url=base_url, timeout=5, max_retries=0, ssl_context=trusting) as client:
        assert [ask(client, "secure"), ask(client, "secure stream", stream=True)] == ["secure", "secure stream"]
        assert ask(client, "again") == "again"
    assert tls_server.handshakes == 1
    assert [r.headers["authorization"] for r in tls_server.requests] == ["Bearer test-key"] * 3


def test_tls_trusts_ssl_cert_file_from_the_environment(
    tls_server: Server, cert: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", cert[0])
    with make_client(tls_server, max_retries=0) as client:
        assert ask(client, "trusted by env") == "trusted by env"
    assert tls_server.handshakes == 1


def test_an_ssl_context_that_trusts_another_certificate_fails(tls_server: Server, tmp_path: Any) -> None:
    other, _ = make_cert(tmp_path)
    with make_client(tls_server, max_retries=0, ssl_context=ssl.create_default_context(cafile=other)) as client:
        with pytest.raises(tl.APIConnectionError, match="(?i)certificate"):
            chat(client)
    assert tls_server.requests == []


def test_a_trusted_certificate_for_another_host_name_fails(tmp_path: Any) -> None:
    cert = make_cert(tmp_path, "DNS:api.example.invalid")
    delays: list[float] = []
    with serving(Server(server_context(cert))) as server:
        trusting = ssl.create_default_context(cafile=cert[0])
        with make_client(server, max_retries=2, ssl_context=trusting) as client:
            record_delays(client, delays)
            with pytest.raises(tl.APIConnectionError, match="(?i)hostname|host name|IP address mismatch"):
                chat(client)
        assert server.accepted == 1 and server.requests == []
    assert delays == []


def test_https_to_a_plain_http_server_is_a_connection_error(echo_server: Server) -> None:
    base_url = f"https://127.0.0.1:{echo_server.port}/v1"
    with tl.Together(api_key="k", base_url=base_url, timeout=1, max_retries=0) as client:
        with pytest.raises(tl.APIConnectionError):
            chat(client)


def test_plain_http_to_a_tls_server_is_a_connection_error(tls_server: Server) -> None:
    base_url = f"http://127.0.0.1:{tls_server.port}/v1"
    with tl.Together(api_key="k", base_url=base_url, timeout=1, max_retries=0) as client:
        with pytest.raises(tl.APIConnectionError):
            chat(client)
    assert tls_server.requests == []


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_ca_bundle_requests_and_curl_read_is_trusted(
    tls_server: Any, monkeypatch: pytest.MonkeyPatch, cert: tuple[str, str], variable: str
) -> None:
    client = tl.Together(api_key="k", base_url=tls_server.url, max_retries=0, timeout=5)
    with pytest.raises(tl.APIConnectionError, match="certificate verification failed"):
        ask(client, "untrusted")
    monkeypatch.setenv(variable, cert[0])
    assert ask(client, "trusted") == "trusted"


def test_ssl_cert_file_comes_before_requests_ca_bundle(
    tls_server: Any, monkeypatch: pytest.MonkeyPatch, cert: tuple[str, str], tmp_path: pathlib.Path
) -> None:
    other, _ = make_cert(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", other)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert[0])
    client = tl.Together(api_key="k", base_url=tls_server.url, max_retries=0, timeout=5)
    with pytest.raises(tl.APIConnectionError, match="certificate verification failed"):
        ask(client, "untrusted")


def test_a_ca_bundle_that_cannot_be_read_is_named_and_not_retried(
    tls_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    missing = str(tmp_path / "missing.pem")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", missing)
    client = tl.Together(api_key="k", base_url=tls_server.url, max_retries=3, timeout=5)
    delays: list[float] = []
    record_delays(client, delays)
    with pytest.raises(tl.APIConnectionError, match=re.escape(f"REQUESTS_CA_BUNDLE={missing!r}")):
        ask(client, "x")
    assert delays == []


def test_a_certificate_error_names_the_host_and_port(tls_server: Any) -> None:
    with pytest.raises(tl.APIConnectionError, match=re.escape(f"for 127.0.0.1:{tls_server.port}")):
        ask(tl.Together(api_key="k", base_url=tls_server.url, max_retries=0, timeout=5), "x")


# -- Transport: redirects -----------------------------------------------------


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize(
    "location, path",
    [
        ("/v1/elsewhere", "/v1/elsewhere"),
        ("http://127.0.0.1:{port}/v1/elsewhere", "/v1/elsewhere"),
        ("//127.0.0.1:{port}/v1/elsewhere", "/v1/elsewhere"),
        ("elsewhere", "/v1/chat/elsewhere"),
        ("/v2/chat?region=eu", "/v2/chat?region=eu"),
    ],
)
def test_a_redirect_to_the_same_origin_is_followed_with_the_same_body_and_key(
    echo_server: Server, status: int, location: str, path: str
) -> None:
    echo_server.reply(Reply(status, headers={"Location": location.format(port=echo_server.port)}))
    with make_client(echo_server, max_retries=0) as client:
        assert ask(client, "moved", max_tokens=7) == "moved"
    first, second = echo_server.requests
    assert (second.method, second.path) == ("POST", path)
    assert second.body == first.body and second.json["max_tokens"] == 7
    assert second.headers["authorization"] == "Bearer test-key"
    assert echo_server.accepted == 1  # the redirect's empty body left the connection reusable


@pytest.mark.parametrize("size", [100, 200_000])
def test_a_redirect_with_a_body_is_followed(echo_server: Server, size: int) -> None:
    echo_server.reply(Reply(307, body=b"x" * size, headers={"Location": "/v1/elsewhere"}, content_type="text/plain"))
    with make_client(echo_server, max_retries=0) as client:
        assert ask(client, "after a body") == "after a body"
        assert ask(client, "and again") == "and again"
    assert [r.path for r in echo_server.requests] == ["/v1/chat/completions", "/v1/elsewhere", "/v1/chat/completions"]


def test_a_followed_redirect_can_lead_to_a_stream(echo_server: Server) -> None:
    echo_server.reply(Reply(307, headers={"Location": "/v1/stream-here"}))
    with make_client(echo_server, max_retries=0) as client:
        assert ask(client, "streamed", stream=True) == "streamed"
    assert [r.path for r in echo_server.requests] == ["/v1/chat/completions", "/v1/stream-here"]
    assert echo_server.requests[1].headers["accept"] == "text/event-stream"


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{other}/v1/chat/completions",
        "//127.0.0.1:{other}/v1/chat/completions",
        "http://localhost:{other}/v1/chat/completions",
        "https://127.0.0.1:{other}/v1/chat/completions",
    ],
    ids=["other port", "scheme-relative other port", "other host name", "other scheme"],
)
def test_a_redirect_to_another_origin_is_not_followed(
    echo_server: Server, other_server: Server, status: int, location: str
) -> None:
    target = location.format(other=other_server.port)
    echo_server.reply(Reply(status, {"moved": True}, headers={"Location": target}))
    delays: list[float] = []
    with make_client(echo_server, max_retries=2) as client:
        record_delays(client, delays)
        with pytest.raises(tl.APIStatusError) as info:
            chat(client)
    assert info.value.status_code == status
    assert "redirect" in str(info.value) and target in str(info.value)
    assert info.value.headers["location"] == target
    assert delays == []
    assert len(echo_server.requests) == 1
    assert other_server.accepted == 0 and other_server.requests == []


@pytest.mark.parametrize("status", [301, 302, 303])
def test_other_redirect_statuses_are_not_followed(echo_server: Server, status: int) -> None:
    echo_server.reply(Reply(status, headers={"Location": "/v1/elsewhere"}))
    with make_client(echo_server, max_retries=2) as client:
        with pytest.raises(tl.APIStatusError) as info:
            chat(client)
        assert info.value.status_code == status
        assert "redirect" in str(info.value) and "/v1/elsewhere" in str(info.value)
        assert ask(client, "next") == "next"
    assert [r.path for r in echo_server.requests] == ["/v1/chat/completions"] * 2


@pytest.mark.parametrize(
    "status, location, reason",
    [
        (302, "/v1/chat/completions", "only 307 and 308"),
        (303, "/v1/elsewhere", "only 307 and 308"),
        (307, "/v1/chat/completions", f"more than {MAX_REDIRECTS} redirects"),
        (308, "http://127.0.0.1:1/v1/chat/completions", "leaves the base URL's origin"),
        (307, "https://127.0.0.1:{port}/v1/chat/completions", "leaves the base URL's origin"),
    ],
    ids=["302", "303", "307 loop", "308 other port", "307 other scheme"],
)
def test_the_error_for_an_unfollowed_redirect_says_why_it_was_not_followed(
    echo_server: Server, status: int, location: str, reason: str
) -> None:
    echo_server.default = Reply(status, headers={"Location": location.format(port=echo_server.port)})
    with make_client(echo_server, max_retries=0) as client:
        with pytest.raises(tl.APIStatusError) as info:
            chat(client)
    phrases = ["only 307 and 308", f"more than {MAX_REDIRECTS} redirects", "leaves the base URL's origin"]
    assert [phrase for phrase in phrases if phrase in str(info.value)] == [reason]


def test_a_redirect_loop_gives_up_after_max_redirects(echo_server: Server) -> None:
    echo_server.default = Reply(307, headers={"Location": "/v1/chat/completions"})
    with make_client(echo_server, max_retries=0) as client:
        with pytest.raises(tl.APIStatusError) as info:
            chat(client)
    assert info.value.status_code == 307
    assert "more than 5 redirects" in str(info.value)
    assert len(echo_server.requests) == MAX_REDIRECTS + 1  # the first request, then each redirect followed


def test_a_redirect_without_location_is_an_error(echo_server: Server) -> None:
    echo_server.reply(Reply(307))
    with make_client(echo_server, max_retries=0) as client:
        with pytest.raises(tl.APIStatusError, match="redirect") as info:
            chat(client)
    assert info.value.status_code == 307
    assert len(echo_server.requests) == 1


@pytest.mark.parametrize("location, sent", [("/v1/with space", "/v1/with%20space"), ("/v1/caf\u00e9", "/v1/caf%C3%A9")])
def test_a_redirect_location_with_unsafe_characters_is_followed_percent_encoded(
    echo_server: Server, location: str, sent: str
) -> None:
    echo_server.reply(Reply(307, headers={"Location": location}))
    with make_client(echo_server, max_retries=0) as client:
        assert chat(client).choices[0].message.content == "hi"  # this server echoes the prompt
        assert [r.path for r in echo_server.requests] == ["/v1/chat/completions", sent]


@pytest.mark.parametrize(
    "location, expected",
    [
        ("https://api.together.xyz/v1/other", "/v1/other"),
        ("https://api.together.xyz:443/v1/other", "/v1/other"),
        ("https://API.Together.XYZ/v1/other", "/v1/other"),
        ("//api.together.xyz/v1/other", "/v1/other"),
        ("/v2/x?a=1&b=2", "/v2/x?a=1&b=2"),
        ("other", "/v1/chat/other"),
        ("../models", "/v1/models"),
        ("https://api.together.xyz/v1/other#fragment", "/v1/other"),
        ("http://api.together.xyz/v1/other", None),
        ("https://api.together.xyz:8443/v1/other", None),
        ("https://api.together.xyz.evil.example/v1/other", None),
        ("https://evil.example/v1/other", None),
        ("//evil.example/v1/other", None),
        ("https://api.together.xyz:99999/v1/other", None),
    ],
)
def test_same_origin_path_keeps_only_redirects_within_the_origin(location: str, expected: str | None) -> None:
    assert tl._same_origin_path(API_ORIGIN, "/v1/chat/completions", location) == expected


@pytest.mark.parametrize("status", [307, 308, 301, 302, 303])
@pytest.mark.parametrize("form", ["absolute", "scheme-relative", "localhost", "userinfo"])
def test_a_redirect_to_another_origin_never_reaches_it(server: Server, status: int, form: str) -> None:
    other = Server()
    thread = threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        port = other.server_address[1]
        location = {
            "absolute": f"http://127.0.0.1:{port}/v1/chat/completions",
            "scheme-relative": f"//127.0.0.1:{port}/v1/chat/completions",
            "localhost": f"http://localhost:{server.server_address[1]}/v1/chat/completions",
            "userinfo": f"http://x@127.0.0.1:{port}/v1/chat/completions",
        }[form]
        server.reply(Reply(status, headers={"Location": location}))
        c = make_client(server, api_key=CANARY, max_retries=2)
        delays: list[float] = []
        record_delays(c, delays)
        with pytest.raises(tl.APIStatusError, match="not followed") as info:
            chat(c)
        assert info.value.status_code == status
        assert other.requests == [] and len(server.requests) == 1 and delays == []
        assert_no_canary(info.value)
    finally:
        other.shutdown()
        other.server_close()


# -- Retries ------------------------------------------------------------------


def test_500_then_200_is_retried_once(server: Server) -> None:
    server.reply(Reply(500, error_body()))
    c, delays = client_and_delays(server, 2)
    assert chat(c).choices[0].message.content == "Hello there."
    assert len(server.requests) == 2
    assert len(delays) == 1
    assert server.requests[0].body == server.requests[1].body


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 520, 599])
def test_retryable_status_is_retried(server: Server, status: int) -> None:
    server.reply(Reply(status, error_body()))
    c, delays = client_and_delays(server, 3)
    chat(c)
    assert len(server.requests) == 2
    assert len(delays) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 415, 418, 422])
def test_other_4xx_are_never_retried(server: Server, status: int) -> None:
    server.default = Reply(status, error_body())
    c, delays = client_and_delays(server, 3)
    with pytest.raises(tl.APIStatusError):
        chat(c)
    assert len(server.requests) == 1
    assert delays == []


def test_max_retries_zero_makes_exactly_one_request(server: Server) -> None:
    server.default = Reply(500, error_body())
    c, delays = client_and_delays(server, 0)
    with pytest.raises(tl.InternalServerError):
        chat(c)
    assert len(server.requests) == 1
    assert delays == []


def test_exhausted_retries_raise_the_last_status_class(server: Server) -> None:
    server.reply(Reply(500, error_body()), Reply(502, error_body()), Reply(429, error_body("slow down")))
    c, delays = client_and_delays(server, 2)
    with pytest.raises(tl.RateLimitError) as info:
        chat(c)
    assert str(info.value) == "Error code: 429 - slow down"
    assert len(server.requests) == 3
    assert len(delays) == 2


@pytest.mark.parametrize("max_retries", [1, 3, 5])
def test_exhausted_retries_make_one_plus_max_retries_requests(server: Server, max_retries: int) -> None:
    server.default = Reply(503, error_body())
    c, delays = client_and_delays(server, max_retries)
    with pytest.raises(tl.ServiceUnavailableError):
        chat(c)
    assert len(server.requests) == 1 + max_retries
    assert len(delays) == max_retries


def test_backoff_delays_double_from_half_a_second_up_to_eight_with_jitter(server: Server) -> None:
    server.default = Reply(500, error_body())
    c, delays = client_and_delays(server, 7)
    with pytest.raises(tl.InternalServerError):
        chat(c)
    assert len(delays) == 7
    for n, delay in enumerate(delays):
        nominal = min(0.5 * 2**n, 8.0)
        assert 0.75 * nominal <= delay <= nominal, (n, delay)


def test_default_client_retries_five_times(server: Server) -> None:
    server.default = Reply(502, error_body())
    c = tl.Together(api_key="test-key", base_url=server.url)  # max_retries left at its default
    delays: list[float] = []
    record_delays(c, delays)
    with pytest.raises(tl.InternalServerError):
        chat(c)
    assert len(server.requests) == 6


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"retry-after-ms": "150"}, 0.15),
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"Retry-After": "60"}, 60.0),
        ({"retry-after-ms": "100", "Retry-After": "5"}, 0.1),
        ({"retry-after-ms": "junk", "Retry-After": "3"}, 3.0),
    ],
)
def test_retry_after_headers_set_the_delay(server: Server, headers: dict[str, str], expected: float) -> None:
    server.reply(Reply(429, error_body(), headers=headers))
    c, delays = client_and_delays(server, 2)
    chat(c)
    assert len(server.requests) == 2
    assert delays == [pytest.approx(expected)]


def test_retry_after_http_date_sets_the_delay(server: Server) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    server.reply(Reply(503, error_body(), headers={"Retry-After": when}))
    c, delays = client_and_delays(server, 2)
    chat(c)
    assert len(server.requests) == 2
    assert len(delays) == 1
    assert 0.5 < delays[0] <= 2.0  # the date has whole seconds, so 1 to 2 s remain


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "3600"},
        {"Retry-After": "61"},
        {"retry-after-ms": "60001"},
        {"Retry-After": "99999999999999999999"},
    ],
)
def test_retry_after_beyond_the_cap_raises_at_once(server: Server, headers: dict[str, str]) -> None:
    server.reply(Reply(429, error_body(), headers=headers))
    c, delays = client_and_delays(server, 3)
    with pytest.raises(tl.RateLimitError) as info:
        chat(c)
    assert len(server.requests) == 1
    assert delays == []
    assert info.value.headers["retry-after" if "Retry-After" in headers else "retry-after-ms"] == next(
        iter(headers.values())
    )


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "-inf", "soon", "Zun, 99 Foo 2023", "1e400"])
def test_unusable_retry_after_falls_back_to_backoff(server: Server, value: str) -> None:
    server.reply(Reply(503, error_body(), headers={"Retry-After": value}))
    c, delays = client_and_delays(server, 2)
    chat(c)
    assert len(server.requests) == 2
    assert len(delays) == 1
    assert 0.375 <= delays[0] <= 0.5


def test_x_should_retry_false_stops_retrying_a_500(server: Server) -> None:
    server.reply(Reply(500, error_body(), headers={"x-should-retry": "false"}))
    c, delays = client_and_delays(server, 3)
    with pytest.raises(tl.InternalServerError):
        chat(c)
    assert len(server.requests) == 1
    assert delays == []


@pytest.mark.parametrize("value", ["true", "True", " TRUE "])
def test_x_should_retry_true_retries_a_400(server: Server, value: str) -> None:
    server.reply(Reply(400, error_body(), headers={"x-should-retry": value}))
    c, delays = client_and_delays(server, 3)
    assert chat(c).choices[0].message.content == "Hello there."
    assert len(server.requests) == 2
    assert len(delays) == 1


def test_per_call_max_retries_overrides_a_lower_client_value(server: Server) -> None:
    server.reply(Reply(500, error_body()), Reply(500, error_body()))
    c, delays = client_and_delays(server, 0)
    chat(c, max_retries=2)
    assert len(server.requests) == 3
    assert len(delays) == 2


def test_per_call_max_retries_zero_overrides_the_client(server: Server) -> None:
    server.default = Reply(500, error_body())
    c, delays = client_and_delays(server, 5)
    with pytest.raises(tl.InternalServerError):
        chat(c, max_retries=0)
    assert len(server.requests) == 1
    assert delays == []


def test_completions_are_retried_too(server: Server) -> None:
    server.reply(Reply(429, error_body()))
    server.default = Reply(200, COMPLETION_RESPONSE)
    c, delays = client_and_delays(server, 1)
    assert c.completions.create(model="m", prompt="p").choices[0].text == " return n"
    assert [r.path for r in server.requests] == ["/v1/completions"] * 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "3600"},
        {"Retry-After": "86400"},
        {"retry-after-ms": "3600000"},
        {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"},
    ],
)
@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_of_an_hour_is_not_retried_and_never_slept(
    server: Server, headers: dict[str, str], status: int
) -> None:
    server.reply(Reply(status, {"error": {"message": "later"}}, headers=headers))
    c = make_client(server, max_retries=5)
    delays: list[float] = []
    record_delays(c, delays)
    with pytest.raises(tl.APIStatusError) as info:
        chat(c)
    assert info.value.status_code == status
    assert delays == [] and len(server.requests) == 1


@pytest.mark.parametrize(
    "value",
    [
        "-5",
        "-0.5",
        "0",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "1e309",
        "9" * 400,
        "junk",
        "",
        " ",
        "0x10",
        "1,5",
        "Mon, 01 Jan 1990 00:00:00 GMT",
        "Wed, 99 Foo 2024 99:99:99 GMT",
        "\u00d9\u00a3\u00d9\u00a3",
    ],
)
def test_an_unusable_retry_after_falls_back_to_normal_backoff(server: Server, value: str) -> None:
    for _ in range(3):
        server.reply(
            Reply(503, {"error": {"message": "busy"}}, headers={"Retry-After": value, "retry-after-ms": value})
        )
    c = make_client(server, max_retries=2)
    delays: list[float] = []
    record_delays(c, delays)
    with pytest.raises(tl.ServiceUnavailableError) as info:
        chat(c)
    assert info.value.headers["retry-after"].strip() == value.strip()  # the header arrived as sent
    assert len(delays) == 2 and len(server.requests) == 3
    for retry, delay in enumerate(delays):
        backoff = min(tl.INITIAL_RETRY_DELAY * 2**retry, tl.MAX_RETRY_DELAY)
        assert 0.75 * backoff <= delay <= backoff <= 8
    assert chat(c).choices[0].message.content == "Hello there."


# -- Retries: the policy as pure functions ------------------------------------
#
# The vectors of openai-python's test_parse_retry_after_header, with
# time frozen at 1696004797 (Fri, 29 Sep 2023 16:26:37 GMT) and max_retries=3,
# adapted to our 60 s cap: a wait above 60 s is not honoured (and not retried).


@pytest.mark.parametrize(
    "remaining, retry_after, expected",
    [
        (3, "20", 20),
        (3, "0", 0.5),
        (3, "-10", 0.5),
        (3, "60", 60),
        (3, "61", 0.5),
        (3, "120", 0.5),
        (3, "121", 0.5),
        (3, "Fri, 29 Sep 2023 16:26:57 GMT", 20),
        (3, "Fri, 29 Sep 2023 16:26:37 GMT", 0.5),
        (3, "Fri, 29 Sep 2023 16:26:27 GMT", 0.5),
        (3, "Fri, 29 Sep 2023 16:27:37 GMT", 60),
        (3, "Fri, 29 Sep 2023 16:27:38 GMT", 0.5),
        (3, "Fri, 29 Sep 2023 16:28:37 GMT", 0.5),
        (3, "Fri, 29 Sep 2023 16:28:38 GMT", 0.5),
        (3, "99999999999999999999999999999999999", 0.5),
        (3, "inf", 0.5),
        (3, "nan", 0.5),
        (3, "Zun, 29 Sep 2023 16:26:27 GMT", 0.5),
        (3, "Fri, 29 Sep 100000 16:26:57 GMT", 0.5),
        (3, "", 0.5),
        (2, "", 1.0),
        (1, "", 2.0),
        (-1100, "", 8),
    ],
)
def test_retry_delay_matches_the_sdk_vectors(remaining: int, retry_after: str, expected: float) -> None:
    retries_taken = 3 - remaining
    seconds = tl._retry_after_seconds({"retry-after": retry_after}, NOW)
    assert tl._retry_delay(retries_taken, seconds, 0.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({}, None),
        ({"retry-after": "20"}, 20.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "-10"}, None),  # delta-seconds are digits: a sign makes it unusable
        ({"retry-after": "1e3"}, None),
        ({"retry-after": "1_000"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "100", "retry-after": "5"}, 0.1),
        ({"retry-after-ms": "nan", "retry-after": "5"}, 5.0),
        ({"retry-after-ms": "abc"}, None),
        ({"retry-after": "Fri, 29 Sep 2023 16:26:57 GMT"}, 20.0),
        ({"retry-after": "Fri, 29 Sep 2023 16:26:27 GMT"}, -10.0),
        ({"retry-after": "Fri, 29 Sep 2023 16:27:38 GMT"}, 61.0),
    ],
)
def test_retry_after_seconds_reads_the_headers(headers: dict[str, str], expected: float | None) -> None:
    result = tl._retry_after_seconds(headers, NOW)
    assert result == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    "value", ["Fri, 29 Sep 100000 16:26:57 GMT", "Zun, 99 Foo 2023 16:26:27 GMT", "Mon, 1 Jan 0 00:00:00 GMT"]
)
def test_retry_after_seconds_survives_odd_dates(value: str) -> None:
    result = tl._retry_after_seconds({"retry-after": value}, NOW)
    assert result is None or isinstance(result, float)
    assert tl._retry_delay(0, result, 0.0) == 0.5


@pytest.mark.parametrize(
    "retries_taken, retry_after, jitter, expected",
    [
        (0, None, 0.0, 0.5),
        (0, None, 0.5, 0.4375),
        (0, None, 1.0, 0.375),
        (1, None, 0.0, 1.0),
        (2, None, 0.0, 2.0),
        (3, None, 0.0, 4.0),
        (4, None, 0.0, 8.0),
        (5, None, 0.0, 8.0),
        (10, None, 0.5, 7.0),
        (1000, None, 0.0, 8.0),
        (10**6, None, 0.0, 8.0),
        (0, 0.2, 0.9, 0.2),
        (3, 60.0, 0.9, 60.0),
        (0, 60.001, 0.0, 0.5),
        (0, 0.0, 0.0, 0.5),
        (0, -1.0, 0.0, 0.5),
    ],
)
def test_retry_delay_applies_backoff_jitter_and_retry_after(
    retries_taken: int, retry_after: float | None, jitter: float, expected: float
) -> None:
    assert tl._retry_delay(retries_taken, retry_after, jitter) == pytest.approx(expected)


@pytest.mark.parametrize(
    "status, headers, expected",
    [
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (500, {}, True),
        (502, {}, True),
        (503, {}, True),
        (504, {}, True),
        (599, {}, True),
        (400, {}, False),
        (401, {}, False),
        (403, {}, False),
        (404, {}, False),
        (413, {}, False),
        (422, {}, False),
        (500, {"x-should-retry": "false"}, False),
        (400, {"x-should-retry": "true"}, True),
        (429, {"x-should-retry": "maybe"}, True),
        (400, {"x-should-retry": "maybe"}, False),
        (429, {"retry-after": "60"}, True),
        (429, {"retry-after": "61"}, False),
        (429, {"retry-after-ms": "60000"}, True),
        (429, {"retry-after-ms": "60001"}, False),
        (429, {"retry-after": "Fri, 29 Sep 2023 16:27:37 GMT"}, True),
        (429, {"retry-after": "Fri, 29 Sep 2023 16:27:38 GMT"}, False),
        (500, {"retry-after": "3600", "x-should-retry": "true"}, False),
        (503, {"retry-after": "junk"}, True),
        (503, {"retry-after": "-5"}, True),
    ],
)
def test_should_retry_policy(status: int, headers: dict[str, str], expected: bool) -> None:
    assert tl._should_retry(status, headers, NOW) is expected


# -- Clients ------------------------------------------------------------------


def test_api_key_argument_is_sent_as_bearer_token(server: Server) -> None:
    with tl.Together(api_key="arg-key", base_url=server.url) as c:
        chat(c)
    assert server.requests[0].headers["authorization"] == "Bearer arg-key"


def test_api_key_falls_back_to_together_api_key_variable(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "env-key")
    with tl.Together(base_url=server.url) as c:
        assert c.api_key == "env-key"
        chat(c)
    assert server.requests[0].headers["authorization"] == "Bearer env-key"


def test_api_key_argument_beats_the_variable(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "env-key")
    with tl.Together(api_key="arg-key", base_url=server.url) as c:
        chat(c)
    assert server.requests[0].headers["authorization"] == "Bearer arg-key"


@pytest.mark.parametrize("api_key", [None, ""])
def test_missing_api_key_raises_authentication_error_naming_the_variable(api_key: str | None) -> None:
    with pytest.raises(tl.AuthenticationError) as info:
        tl.Together(api_key=api_key)
    assert "TOGETHER_API_KEY" in str(info.value)
    assert isinstance(info.value, tl.TogetherException)
    assert info.value.status_code is None


def test_base_url_defaults_to_together_api() -> None:
    c = tl.Together(api_key="k")
    assert c.base_url.rstrip("/") == "https://api.together.xyz/v1"
    assert tl.DEFAULT_BASE_URL == "https://api.together.xyz/v1"


def test_base_url_falls_back_to_together_base_url_variable(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_BASE_URL", server.url)
    with tl.Together(api_key="k") as c:
        chat(c)
    assert server.requests[0].path == "/v1/chat/completions"


def test_base_url_argument_beats_the_variable(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_BASE_URL", refused_url())
    with tl.Together(api_key="k", base_url=server.url, max_retries=0) as c:
        chat(c)
    assert len(server.requests) == 1


@pytest.mark.parametrize("suffix", ["", "/", "//"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_requests_go_to_base_url_plus_endpoint_with_or_without_trailing_slash(
    server: Server, suffix: str, endpoint: str
) -> None:
    server.default = Reply(200, CHAT_RESPONSE if endpoint == "chat" else COMPLETION_RESPONSE)
    with tl.Together(api_key="k", base_url=server.url + suffix) as c:
        if endpoint == "chat":
            chat(c)
        else:
            c.completions.create(model="m", prompt="p")
    expected = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    assert [r.path for r in server.requests] == [expected]


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_base_url_that_is_a_bare_origin_means_its_v1_as_together_3_reads_it(server: Server, suffix: str) -> None:
    root = server.url[: -len("/v1")]
    with tl.Together(api_key="k", base_url=root + suffix) as c:
        chat(c)
        assert c.base_url == root + "/v1/"
    assert server.requests[0].path == "/v1/chat/completions"


def test_default_timeout_and_max_retries_match_the_v1_sdk() -> None:
    c = tl.Together(api_key="k")
    assert c.timeout == 600
    assert c.max_retries == 5


def test_client_is_an_alias_of_together() -> None:
    assert tl.Client is tl.Together


def test_repr_never_shows_the_api_key(server: Server) -> None:
    c = tl.Together(api_key="sk-very-secret-123", base_url=server.url, supplied_headers={"X-A": "b"})
    assert "sk-very-secret-123" not in repr(c)
    assert "sk-very-secret-123" not in str(c)
    assert repr(c).startswith("Together(")


@pytest.mark.parametrize(
    "base_url",
    [
        "ftp://api.together.xyz/v1",
        "file:///etc/passwd",
        "api.together.xyz/v1",
        "http://",
        "https:///v1",
        "https://api.together.xyz/v1#part",
        "https://user:pw@api.together.xyz/v1",
        "http://127.0.0.1:99999/v1",
    ],
)
def test_bad_base_url_raises_value_error(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        tl.Together(api_key="k", base_url=base_url)


def test_bad_base_url_from_the_variable_raises_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_BASE_URL", "ftp://example.com/v1")
    with pytest.raises(ValueError, match="base_url"):
        tl.Together(api_key="k")


def test_base_url_that_is_not_a_string_raises_type_error() -> None:
    with pytest.raises(TypeError, match="base_url"):
        tl.Together(api_key="k", base_url=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options, error, name",
    [
        ({"timeout": "10"}, TypeError, "timeout"),
        ({"timeout": True}, TypeError, "timeout"),
        ({"timeout": [1]}, TypeError, "timeout"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": float("inf")}, ValueError, "timeout"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"max_retries": "3"}, TypeError, "max_retries"),
        ({"max_retries": True}, TypeError, "max_retries"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"timeout": types.SimpleNamespace(connect=None, read=0, write=None)}, ValueError, "timeout.read must be a"),
        ({"timeout": types.SimpleNamespace(connect="5", read=1, write=None)}, TypeError, "timeout.connect must be a"),
        ({"default_query": [("a", "1")]}, TypeError, "default_query must be a dict"),
    ],
)
def test_bad_timeout_max_retries_or_default_query_raises(options: dict[str, Any], error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        tl.Together(api_key="k", **options)


def test_int_timeout_and_zero_retries_are_accepted() -> None:
    c = tl.Together(api_key="k", timeout=3, max_retries=0)
    assert c.timeout == 3.0
    assert c.max_retries == 0


@pytest.mark.parametrize("secret", ["sk-SECRET-1\r\n", "sk-SECRET-1\nX-Injected: 1", "sk-SECRET-1\rx"])
def test_api_key_with_cr_or_lf_raises_value_error_without_echoing_the_key(secret: str) -> None:
    with pytest.raises(ValueError) as info:
        tl.Together(api_key=secret)
    assert "sk-SECRET-1" not in str(info.value)
    assert "sk-SECRET-1" not in repr(info.value)


def test_api_key_variable_with_lf_raises_value_error_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "sk-SECRET-2\nX: y")
    with pytest.raises(ValueError) as info:
        tl.Together()
    assert "sk-SECRET-2" not in str(info.value)


def test_api_key_that_cannot_go_in_a_header_raises_value_error() -> None:
    with pytest.raises(ValueError, match="api_key"):
        tl.Together(api_key="ключ-секрет")


@pytest.mark.parametrize(
    "headers, error",
    [
        ({"X-A": "a\r\nX-B: b"}, ValueError),
        ({"X-A\n": "a"}, ValueError),
        ({"X A": "a"}, ValueError),
        ({"X-A": 1}, TypeError),
        ([("X-A", "a")], TypeError),
    ],
)
def test_bad_supplied_headers_raise_at_construction(headers: Any, error: type) -> None:
    with pytest.raises(error):
        tl.Together(api_key="k", supplied_headers=headers)


def test_an_http_client_is_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="http_client"):
        tl.Together(api_key="k", http_client=object())


def test_together_base_url_as_a_bare_origin_gets_v1_and_a_path_is_kept(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = server.url[: -len("/v1")]
    monkeypatch.setenv("TOGETHER_BASE_URL", origin)
    chat(tl.Together(api_key="k"))
    chat(tl.Together(api_key="k", base_url=origin + "/custom/api"))
    chat(tl.Together(api_key="k", base_url=origin + "/v1?api-version=2"))
    assert [request.path for request in server.requests] == [
        "/v1/chat/completions",
        "/custom/api/chat/completions",
        "/v1/chat/completions?api-version=2",
    ]


def test_default_headers_and_together_custom_headers(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_CUSTOM_HEADERS", "X-Team: search\n\n  X-Env :  prod  \nX-Both: env")
    client = make_client(server, default_headers={"X-Both": "argument"}, supplied_headers={"X-V1": "yes"})
    chat(client)
    headers = server.requests[0].headers
    assert (headers["x-team"], headers["x-env"], headers["x-both"], headers["x-v1"]) == (
        "search",
        "prod",
        "argument",
        "yes",
    )
    monkeypatch.setenv("TOGETHER_CUSTOM_HEADERS", "X-Team search")
    with pytest.raises(ValueError, match="TOGETHER_CUSTOM_HEADERS line 1"):
        make_client(server)


def test_a_timeout_object_sets_connect_read_and_write_by_duck_typing(server: Server) -> None:
    class Timeout:  # what httpx.Timeout(10.0, read=0.1) offers; httpx itself is never imported
        connect, read, write, pool = 10.0, 0.1, 10.0, 10.0

    server.reply(Reply(200, CHAT_RESPONSE, delay=0.3))
    client = make_client(server, timeout=Timeout())
    with pytest.raises(tl.APITimeoutError):
        chat(client)
    assert client.timeout.__class__ is Timeout
    server.reply(Reply(200, CHAT_RESPONSE, delay=0.2))
    assert chat(client, timeout=5).choices[0].message.content == "Hello there."


# -- Clients: with_options and copies -----------------------------------------


def test_with_options_overrides_per_request_and_shares_the_connections(server: Server) -> None:
    server.reply(Reply(500, {"error": {"message": "boom"}}), Reply(200, CHAT_RESPONSE))
    client = make_client(server, max_retries=3)
    with pytest.raises(tl.InternalServerError):
        client.with_options(max_retries=0, timeout=5).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert len(server.requests) == 1  # no retry on the copy
    chat(client)
    assert len(server.connections) == 1  # the copy's connection went back to the shared pool
    assert (client.max_retries, client.copy(timeout=7).timeout) == (3, 7.0)


def test_closing_a_copy_leaves_the_original_working_on_its_connections(server: Server) -> None:
    client = make_client(server)
    chat(client)
    with client.with_options(max_retries=1) as copy:
        chat(copy)
    chat(client)
    assert len(server.connections) == 1


def test_with_options_adds_or_replaces_default_headers(server: Server) -> None:
    client = make_client(server, default_headers={"X-A": "1", "X-B": "2"})
    chat(client.with_options(default_headers={"X-B": "3"}))
    chat(client.with_options(set_default_headers={"X-C": "4"}))
    first, second = (request.headers for request in server.requests)
    assert (first["x-a"], first["x-b"]) == ("1", "3")
    assert "x-a" not in second and second["x-c"] == "4"
    with pytest.raises(ValueError, match="mutually exclusive"):
        client.with_options(default_headers={}, set_default_headers={})


# -- Clients: raw responses ---------------------------------------------------


def test_with_raw_response_gives_headers_status_request_and_parse(server: Server) -> None:
    server.reply(Reply(200, CHAT_RESPONSE, headers=SDK_HEADERS))
    client = make_client(server)
    response = client.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": "Say this is a test"}], model="m"
    )
    print(response.headers.get("X-Ratelimit-Remaining-Requests"))
    completion = response.parse()  # get the object that `chat.completions.create()` would have returned
    assert completion.choices[0].message.content == "Hello there."
    assert completion is response.parse()
    assert response.headers["X-RateLimit-Remaining-Requests"] == "59"
    assert (response.status_code, response.request_id, response.retries_taken) == (200, "req_123", 0)
    assert (response.http_request.method, response.http_request.url) == ("POST", server.url + "/chat/completions")
    assert response.text == response.text() == json.dumps(CHAT_RESPONSE)
    assert response.json() == CHAT_RESPONSE and response.content == json.dumps(CHAT_RESPONSE).encode()
    assert response.is_closed and "test-key" not in repr(vars(response.http_request))


def test_with_raw_response_on_completions_the_client_and_a_stream(server: Server) -> None:
    server.reply(
        Reply(200, COMPLETION_RESPONSE, headers=SDK_HEADERS),
        Reply(chunks=sse(chunk("Hel"), chunk("lo", finish="stop")), headers=SDK_HEADERS),
    )
    client = make_client(server)
    completion = client.with_raw_response.completions.create(model="m", prompt="def").parse()
    assert completion.choices[0].text == " return n"
    response = client.chat.completions.with_raw_response.create(model="m", messages=[], stream=True)
    assert response.headers["x-request-id"] == "req_123"
    stream = response.parse()
    assert isinstance(stream, tl.Stream)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello"


def test_with_streaming_response_reads_nothing_until_asked(server: Server) -> None:
    release = threading.Event()

    def slow_stream(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("X-Request-Id", "req_9")
        handler.end_headers()
        handler.wfile.flush()
        release.wait(5)  # the body comes only once the test has looked at the headers
        for piece in sse(chunk("Hi"), chunk(finish="stop")):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    server.reply(slow_stream)
    client = make_client(server, timeout=5)
    with client.chat.completions.with_streaming_response.create(
        messages=[{"role": "user", "content": "Say this is a test"}], model="m", stream=True
    ) as response:
        assert (response.headers.get("X-Request-ID"), response.status_code) == ("req_9", 200)
        assert not response.is_closed
        release.set()
        lines = list(response.iter_lines())
    assert lines[0].startswith("data: {") and lines[-2:] == ["data: [DONE]", ""]
    assert response.is_closed


def test_raw_response_parse_to_gives_the_body_as_asked(server: Server) -> None:
    server.default = Reply(200, CHAT_RESPONSE)
    create = make_client(server).chat.completions.with_raw_response.create
    assert json.loads(create(model="m", messages=[]).parse(to=str)) == CHAT_RESPONSE
    assert json.loads(create(model="m", messages=[]).parse(to=bytes).decode()) == CHAT_RESPONSE
    assert create(model="m", messages=[]).parse(to=dict) == CHAT_RESPONSE
    typed = create(model="m", messages=[]).parse(to=tl.ChatCompletionResponse)
    assert isinstance(typed, tl.ChatCompletionResponse) and typed.choices[0].message.content == "Hello there."
    with pytest.raises(TypeError, match="str, bytes, dict or a result type, not <class 'int'>"):
        create(model="m", messages=[]).parse(to=int)


BROKEN_UTF8_BODY = ["line one\ncaf\xc3".encode("latin-1"), "\xa9 au lait\r\nlast line \xe2\x82".encode("latin-1")]


def test_with_streaming_response_iterates_bytes_text_and_lines(server: Server) -> None:
    # "é" is split between two chunks, and the body ends inside a character (a U+FFFD at the end)
    server.default = Reply(chunks=BROKEN_UTF8_BODY, headers={"Content-Type": "text/plain"})
    create = make_client(server).chat.completions.with_streaming_response.create
    with create(model="m", messages=[]) as response:
        assert b"".join(response.iter_bytes()) == b"".join(BROKEN_UTF8_BODY)
    with create(model="m", messages=[]) as response:
        assert "".join(response.iter_text()) == "line one\ncafé au lait\r\nlast line \ufffd"
    with create(model="m", messages=[]) as response:
        assert list(response.iter_lines()) == ["line one", "café au lait", "last line \ufffd"]
    with create(model="m", messages=[]) as response:
        body = response.read()
        assert list(response.iter_bytes()) == [body]  # what was read is given again


def test_async_streaming_response_iterates_bytes_and_text(server: Server) -> None:
    server.default = Reply(chunks=BROKEN_UTF8_BODY, headers={"Content-Type": "text/plain"})

    async def main() -> tuple[bytes, str]:
        async with make_async_client(server) as client:
            create = client.chat.completions.with_streaming_response.create
            async with create(model="m", messages=[]) as response:
                raw = b"".join([piece async for piece in response.iter_bytes()])
            async with create(model="m", messages=[]) as response:
                text = "".join([piece async for piece in response.iter_text()])
            return raw, text

    assert run_async(main()) == (b"".join(BROKEN_UTF8_BODY), "line one\ncafé au lait\r\nlast line \ufffd")


def test_with_streaming_response_parse_gives_the_result(server: Server) -> None:
    client = make_client(server)
    with client.chat.completions.with_streaming_response.create(model="m", messages=[]) as response:
        assert response.parse().choices[0].message.content == "Hello there."
    server.reply(Reply(chunks=sse(chunk("a"), chunk("b", finish="stop"))))
    with client.chat.completions.with_streaming_response.create(model="m", messages=[], stream=True) as response:
        assert "".join(c.choices[0].delta.content or "" for c in response.parse()) == "ab"


def test_async_raw_and_streaming_responses(server: Server) -> None:
    server.reply(
        Reply(200, CHAT_RESPONSE, headers=SDK_HEADERS),
        Reply(chunks=sse(chunk("Hel"), chunk("lo", finish="stop")), headers=SDK_HEADERS),
        Reply(200, COMPLETION_RESPONSE),
    )

    async def main() -> tuple[str, list[str], str]:
        async with tl.AsyncTogether(api_key="k", base_url=server.url) as client:
            response = await client.chat.completions.with_raw_response.create(model="m", messages=[])
            assert response.headers.get("x-request-id") == "req_123"
            completion = await response.parse()
            async with client.chat.completions.with_streaming_response.create(
                model="m", messages=[], stream=True
            ) as streamed:
                assert streamed.status_code == 200
                lines = [line async for line in streamed.iter_lines()]
            text = await (await client.with_raw_response.completions.create(model="m", prompt="p")).text()
            return completion.choices[0].message.content, lines, text

    content, lines, text = run_async(main())
    assert content == "Hello there."
    assert "data: [DONE]" in lines and json.loads(text) == COMPLETION_RESPONSE


# -- Clients: structured output -----------------------------------------------


def test_parse_sends_a_strict_json_schema_and_gives_the_parsed_object(server: Server) -> None:
    server.reply(parsed_reply('{"name": "Ada", "age": 36}'))
    completion = make_client(server).chat.completions.parse(
        model="m", messages=[{"role": "user", "content": "Who wrote the first program?"}], response_format=ParsedPerson
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, ParsedPerson) and (person.name, person.age) == ("Ada", 36)
    sent = server.requests[0].json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "ParsedPerson"
    schema = sent["json_schema"]["schema"]
    assert schema["required"] == ["name", "age"] and schema["additionalProperties"] is False
    assert "default" not in schema["properties"]["age"] and sent["json_schema"]["strict"] is True
    assert "stream" not in server.requests[0].json


@pytest.mark.parametrize(
    "reply, error, words",
    [
        (parsed_reply('{"age": 3}'), tl.APIResponseValidationError, "does not fit"),
        (parsed_reply("not json at all"), tl.APIResponseValidationError, "does not fit"),
        (parsed_reply(None, refusal="I can't help with that."), tl.RefusalError, "refused: I can't help"),
        (parsed_reply('{"name": "A', finish="length"), tl.LengthFinishReasonError, "length limit"),
        (parsed_reply("", finish="content_filter"), tl.ContentFilterFinishReasonError, "content filter"),
        (parsed_reply("  "), tl.APIResponseValidationError, "no content to parse"),
        (parsed_reply(None), tl.APIResponseValidationError, "no content to parse"),
    ],
)
def test_parse_raises_a_clear_error_when_the_answer_cannot_be_parsed(
    server: Server, reply: Reply, error: type, words: str
) -> None:
    server.reply(reply)
    with pytest.raises(error, match=words) as info:
        make_client(server).chat.completions.parse(model="m", messages=[], response_format=ParsedPerson)
    assert isinstance(info.value, tl.APIError) and info.value.completion is not None


def test_parse_takes_a_dict_response_format_and_async(server: Server) -> None:
    server.reply(parsed_reply('{"name": "Ada"}'), parsed_reply('{"name": "Grace"}'))

    async def main() -> tuple[Any, Any]:
        async with tl.AsyncTogether(api_key="k", base_url=server.url) as client:
            plain = await client.chat.completions.parse(model="m", messages=[], response_format={"type": "json_object"})
            typed = await client.chat.completions.parse(model="m", messages=[], response_format=ParsedPerson)
            return plain.choices[0].message.parsed, typed.choices[0].message.parsed

    plain, typed = run_async(main())
    assert plain == {"name": "Ada"} and typed.name == "Grace"


@pytest.mark.parametrize(
    "arguments, words",
    [
        ({"response_format": ParsedPerson, "stream": True}, "does not stream"),
        ({"response_format": "json_object"}, "pydantic model class or a dict"),
    ],
)
def test_parse_with_arguments_it_cannot_use_is_a_type_error_and_nothing_is_sent(
    server: Server, arguments: dict[str, Any], words: str
) -> None:
    with pytest.raises(TypeError, match=words):
        make_client(server).chat.completions.parse(model="m", messages=[], **arguments)
    assert server.requests == []


def test_a_model_class_given_to_create_points_at_parse(server: Server) -> None:
    with pytest.raises(TypeError, match="parse()"):
        chat(make_client(server), response_format=ParsedPerson)
    assert server.requests == []


# -- Clients: module paths and sentinels --------------------------------------


@pytest.mark.parametrize(
    "path, names",
    [
        (
            "together_lite.types.chat_completions",
            ["ChatCompletionResponse", "ChatCompletionChunk", "MessageRole", "ChatCompletionMessage"],
        ),
        ("together_lite.types.completions", ["CompletionResponse", "CompletionChunk", "CompletionChoicesData"]),
        ("together_lite.types.common", ["FinishReason", "UsageData", "ObjectType", "LogprobsPart"]),
        (
            "together_lite.types.chat",
            [
                "ChatCompletion",
                "ChatCompletionChunk",
                "ChatCompletionMessage",
                "ChatCompletionUsage",
                "ChatCompletionMessageParam",
            ],
        ),
        ("together_lite.types.chat.chat_completion", ["ChatCompletion", "Choice"]),
        ("together_lite.types.chat.chat_completion_chunk", ["ChatCompletionChunk", "Choice", "ChoiceDelta"]),
        ("together_lite.types.completion", ["Completion", "Choice"]),
        ("together_lite.types.completion_chunk", ["CompletionChunk", "Choice", "Token"]),
        ("together_lite.types", ["Completion", "CompletionChunk", "LogProbs", "ToolChoice", "ChatCompletionResponse"]),
        ("together_lite.types.log_probs", ["LogProbs"]),
        ("together_lite.types.tool_choice", ["ToolChoice", "Function"]),
    ],
)
def test_the_sdks_module_paths_import_with_their_names(path: str, names: list[str]) -> None:
    import importlib

    module = importlib.import_module(path)
    assert all(getattr(module, name) is not None for name in names)


def test_the_3x_types_are_the_classes_results_are_made_of(server: Server) -> None:
    from together_lite.types.chat import ChatCompletion
    from together_lite.types.chat.chat_completion import Choice
    from together_lite.types.chat.chat_completion_chunk import ChatCompletionChunk, ChoiceDelta
    from together_lite.types.completion import Completion

    completion = chat(make_client(server))
    assert isinstance(completion, ChatCompletion) and isinstance(completion.choices[0], Choice)
    assert ChatCompletionChunk is tl.ChatCompletionChunk and ChoiceDelta is tl.ChatDelta
    assert Completion is tl.CompletionResponse
    assert tl.types.chat.chat_completion.Choice is Choice


def test_not_given_and_omit_mean_not_sent(server: Server) -> None:
    from together_lite import NOT_GIVEN, omit

    client = make_client(server, default_headers={"X-Drop": "me"})
    client.chat.completions.create(
        model="m", messages=[], temperature=NOT_GIVEN, max_tokens=omit, timeout=NOT_GIVEN, max_retries=NOT_GIVEN,
        extra_headers={"X-Drop": omit}, reasoning_effort=tl.not_given,
    )  # fmt: skip
    request = server.requests[0]
    assert set(request.json) == {"model", "messages"} and "x-drop" not in request.headers
    assert (repr(NOT_GIVEN), bool(NOT_GIVEN), repr(omit), bool(omit)) == ("NOT_GIVEN", False, "omit", False)


def test_importing_and_a_first_call_load_no_heavy_modules(server: Server) -> None:
    # Import time is measured in the benchmark; this pins what keeps it low.
    script = (
        "import sys, together_lite as tl\n"
        "heavy = ('http.client', 'email', 'asyncio', 'concurrent.futures', 'urllib.request', 'ssl', 'logging')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        f"tl.Together(api_key='k', base_url={server.url!r}, max_retries=0).chat.completions.create("
        "model='m', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("TOGETHER_")}
    env["NO_PROXY"] = "127.0.0.1"  # NO_PROXY alone names no proxy: nothing to look up
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=os.path.dirname(os.path.abspath(tl.__file__)),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "[]"]


def test_the_v1_error_and_types_module_paths_import() -> None:
    import importlib

    assert importlib.import_module("together_lite.error").RateLimitError is tl.RateLimitError
    assert importlib.import_module("together_lite.types").ChatCompletionResponse is tl.ChatCompletionResponse
    assert tl.error.TogetherException is tl.TogetherException


# -- Clients: typing checks ---------------------------------------------------


def test_the_async_create_has_the_full_keyword_signature() -> None:
    import inspect

    for sync, aio in [
        (tl.ChatCompletions.create, tl.AsyncChatCompletions.create),
        (tl.Completions.create, tl.AsyncCompletions.create),
    ]:
        assert list(inspect.signature(aio).parameters) == list(inspect.signature(sync).parameters)
    assert "temperature" in inspect.signature(tl.AsyncChatCompletions.create).parameters


def test_a_typed_program_passes_mypy_strict_without_a_cast(mypy_output: str) -> None:
    assert mypy_lines_about(mypy_output, "typed_program.py") == []


def test_a_misspelt_keyword_is_a_type_error_sync_and_async(mypy_output: str) -> None:
    errors = "\n".join(mypy_lines_about(mypy_output, "misspelt_program.py"))
    assert 'Unexpected keyword argument "temprature"' in errors and 'Unexpected keyword argument "max_token"' in errors


# -- Clients: the seed documents' examples ------------------------------------
#
# Each non-streaming, non-async Python example of the SDK's documentation, verbatim, run
# with only ``from together import`` changed. Examples that continue a page use the
# ``client`` its first example made; SEED_SETUP stands for that first example.
#
# Copied from the SDK's documentation; only `from together import` is changed when run.
# 000 and 003 use the `client` made in the document's first example, so its two
# setup lines are prepended.


@pytest.mark.parametrize("code, needs_client, response, printed, sent", SEED_EXAMPLES)
def test_seed_example_runs_with_only_the_import_changed(
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    code: str,
    needs_client: bool,
    response: dict[str, Any],
    printed: str,
    sent: dict[str, Any],
) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "seed-key")
    monkeypatch.setenv("TOGETHER_BASE_URL", server.url)
    server.default = Reply(200, response)
    assert run_seed(code, needs_client, capsys) == printed
    assert len(server.requests) == 1
    request = server.requests[0]
    assert request.headers["authorization"] == "Bearer seed-key"
    assert request.path == (
        "/v1/completions" if "completions.create(" in code and "chat." not in code else "/v1/chat/completions"
    )
    body = request.json
    for name, value in sent.items():
        assert body[name] == value, name
    assert "stream" not in body


def test_seed_logprobs_example_prints_integer_logprobs_as_floats_like_the_sdk(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "seed-key")
    monkeypatch.setenv("TOGETHER_BASE_URL", server.url)
    server.default = Reply(200, chat_response(" Paris", logprobs={"tokens": [" Paris"], "token_logprobs": [0]}))
    assert run_seed(SEED_000_LOGPROBS, True, capsys) == "Token: ' Paris', Log Probability: 0.0\n"


@pytest.mark.parametrize(
    "code, pieces, path, printed",
    [
        pytest.param(SEED_STREAM_000_CHAT, SEED_CHAT_STREAM, "/v1/chat/completions", " A: Sure thing", id="000-chat"),
        pytest.param(SEED_STREAM_001_CHAT, SEED_CHAT_STREAM, "/v1/chat/completions", " A: Sure thing\n", id="001-chat"),
        pytest.param(SEED_STREAM_002_CHAT, SEED_CHAT_STREAM, "/v1/chat/completions", " A: Sure thing", id="002-chat"),
        pytest.param(
            SEED_STREAM_003_COMPLETIONS,
            SEED_COMPLETION_STREAM,
            "/v1/completions",
            "\n    if n < 2:\n        return False",
            id="003-completions",
        ),
    ],
)
def test_seed_streaming_example_runs_with_only_the_import_changed(
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: str,
    pieces: list[bytes],
    path: str,
    printed: str,
) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "seed-key")
    monkeypatch.setenv("TOGETHER_BASE_URL", server.url)
    server.reply(Reply(chunks=pieces))
    changed = code.replace("from together import", "from together_lite import")
    assert changed.count("together_lite") == 1
    namespace: dict[str, Any] = {"__name__": "seed_example"}
    exec(compile(changed, "seed_example", "exec"), namespace)
    namespace["client"].close()
    assert capsys.readouterr().out == printed
    (request,) = server.requests
    assert request.path == path
    assert request.json["stream"] is True
    assert request.headers["authorization"] == "Bearer seed-key"


# -- Async --------------------------------------------------------------------


def test_async_smoke(server: Server) -> None:
    async def main() -> list[str]:
        async with tl.AsyncTogether(api_key="k", base_url=server.url) as aclient:
            results = await asyncio.gather(*(chat(aclient) for _ in range(5)))
            server.reply(Reply(chunks=sse(chunk("a"), chunk("b", finish="stop"))))
            stream = await chat(aclient, stream=True)
            parts = [c.choices[0].delta.content async for c in stream]
            return [r.choices[0].message.content for r in results] + parts

    assert asyncio.run(main()) == ["Hello there."] * 5 + ["a", "b"]


def test_async_calls_sharing_one_client_each_get_their_own_answer(echo_server: Server) -> None:
    async def main() -> list[str]:
        async with tl.AsyncTogether(api_key="k", base_url=echo_server.url, max_retries=0, timeout=5) as aclient:
            calls = [chat(aclient, messages=[{"role": "user", "content": f"task {n}"}]) for n in range(40)]
            return [r.choices[0].message.content for r in await asyncio.gather(*calls)]

    assert asyncio.run(main()) == [f"task {n}" for n in range(40)]


def test_async_client_is_an_alias_and_mirrors_the_sync_options(server: Server) -> None:
    client = tl.AsyncClient(api_key="k", base_url=server.url, timeout=7, max_retries=2, max_workers=9)
    assert tl.AsyncClient is tl.AsyncTogether
    assert (client.api_key, client.timeout, client.max_retries, client.max_workers) == ("k", 7.0, 2, 9)
    assert client.base_url == server.url + "/"
    assert repr(client) == f"AsyncTogether(base_url={server.url + '/'!r}, timeout=7.0, max_retries=2)"
    assert tl.AsyncTogether(api_key="k", base_url=server.url).max_workers == tl.DEFAULT_MAX_WORKERS == 8


@pytest.mark.parametrize(
    "options, error",
    [
        pytest.param({"api_key": None}, tl.AuthenticationError, id="no-api-key"),
        pytest.param({"base_url": "ftp://example.com/v1"}, ValueError, id="ftp-base-url"),
        pytest.param({"timeout": 0}, ValueError, id="zero-timeout"),
        pytest.param({"timeout": "5"}, TypeError, id="str-timeout"),
        pytest.param({"max_retries": -1}, ValueError, id="negative-max-retries"),
        pytest.param({"supplied_headers": {"X-A": "a\nb"}}, ValueError, id="header-with-newline"),
    ],
)
def test_bad_constructor_options_raise_what_the_sync_client_raises(options: dict[str, Any], error: type) -> None:
    options = {"api_key": "k", "base_url": "http://127.0.0.1:9/v1", **options}
    with pytest.raises(error) as sync_error:
        tl.Together(**options)
    with pytest.raises(error) as async_error:
        tl.AsyncTogether(**options)
    assert str(async_error.value) == str(sync_error.value)


@pytest.mark.parametrize(
    "max_workers, error",
    [(0, ValueError), (-1, ValueError), ("x", TypeError), (1.5, TypeError), (True, TypeError)],
)
def test_invalid_max_workers_is_refused(max_workers: Any, error: type) -> None:
    with pytest.raises(error, match="max_workers"):
        tl.AsyncTogether(api_key="k", base_url="http://127.0.0.1:9/v1", max_workers=max_workers)


def test_a_response_equals_what_the_sync_client_returns(server: Server) -> None:
    server.default = Reply(200, CHAT_RESPONSE, headers={"X-Request-Id": "r1"})
    with make_client(server) as sync_client:
        expected = chat(sync_client, max_tokens=5)

    async def main() -> Any:
        async with make_async_client(server) as client:
            return await chat(client, max_tokens=5)

    response = run_async(main())
    assert isinstance(response, tl.ChatCompletionResponse)
    assert response == expected
    assert response.choices[0].message.content == "Hello there."
    assert (
        server.requests[1].json
        == server.requests[0].json
        == {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
        }
    )
    assert server.requests[1].headers["authorization"] == "Bearer test-key"


def test_a_text_completion_is_awaitable(server: Server) -> None:
    server.default = echo_re

    async def main() -> Any:
        async with make_async_client(server) as client:
            return await client.completions.create(model="m", prompt="def f():", max_tokens=3)

    response = run_async(main())
    assert isinstance(response, tl.CompletionResponse)
    assert response.choices[0].text == "re: def f():"
    assert server.requests[0].path == "/v1/completions"
    assert server.requests[0].json == {"model": "m", "prompt": "def f():", "max_tokens": 3}


@pytest.mark.parametrize(
    "kwargs, error",
    [
        pytest.param({"messages": "hi"}, TypeError, id="messages-not-a-list"),
        pytest.param({"model": ""}, ValueError, id="empty-model"),
        pytest.param({"temperature": "hot"}, TypeError, id="temperature-not-a-number"),
        pytest.param({"stream": "yes"}, TypeError, id="stream-not-a-bool"),
        pytest.param({"bogus_positional_free": float("nan")}, ValueError, id="nan-in-body"),
    ],
)
def test_caller_mistakes_raise_before_anything_is_sent(server: Server, kwargs: dict[str, Any], error: type) -> None:
    async def main() -> None:
        async with make_async_client(server) as client:
            await chat(client, **kwargs)

    with pytest.raises(error):
        run_async(main())
    assert server.requests == []


# -- Async: the seed documents' examples --------------------------------------
#
# The async examples of the seeds, verbatim but for the import (the seed pages lost
# some indentation, restored here). They read TOGETHER_API_KEY and TOGETHER_BASE_URL.


@pytest.mark.parametrize(
    "code, printed, bodies",
    [
        pytest.param(
            ASYNC_SEED_CHAT_PROCESSING,
            "Response 1: re: Explain machine learning\n"
            "Response 2: re: What is deep learning?\n"
            "Response 3: re: How do neural networks work?\n",
            [
                chat_body(LLAMA_32, "Explain machine learning", max_tokens=200),
                chat_body(LLAMA_32, "What is deep learning?", max_tokens=200),
                chat_body(LLAMA_32, "How do neural networks work?", max_tokens=200),
            ],
            id="000-async-chat-processing",
        ),
        pytest.param(
            ASYNC_SEED_CHAT_COMPLETION,
            "re: Hello, world!\n",
            [chat_body("meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "Hello, world!", max_tokens=50)],
            id="001-async-chat-completion",
        ),
        pytest.param(
            ASYNC_SEED_NOTE_ON_ASYNC,
            "re: What are the top things to do in San Francisco?\nre: What country is Paris in?\n",
            [
                chat_body(MIXTRAL, "What are the top things to do in San Francisco?"),
                chat_body(MIXTRAL, "What country is Paris in?"),
            ],
            id="002-a-note-on-async-support",
        ),
        pytest.param(
            ASYNC_SEED_BATCH_PROCESSING,
            "Response 1: re: Write a Python function to sort a list:\n"
            "Response 2: re: Explain the concept of recursion:\n"
            "Response 3: re: Create a simple web scraper in Python:\n",
            [
                {"model": CODELLAMA, "prompt": prompt, "max_tokens": 200, "temperature": 0.3}
                for prompt in (
                    "Write a Python function to sort a list:",
                    "Explain the concept of recursion:",
                    "Create a simple web scraper in Python:",
                )
            ],
            id="003-async-batch-processing",
        ),
    ],
)
def test_seed_async_example_runs_with_only_the_import_changed(
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: str,
    printed: str,
    bodies: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "seed-key")
    monkeypatch.setenv("TOGETHER_BASE_URL", server.url)
    server.default = echo_re
    assert code.count("from together import AsyncTogether") == 1
    code = code.replace("from together import AsyncTogether", "from together_lite import AsyncTogether")

    exec(compile(code, "<seed>", "exec"), {"__name__": "__main__"})

    assert capsys.readouterr().out == printed
    canonical = sorted(json.dumps(request.json, sort_keys=True) for request in server.requests)
    assert canonical == sorted(json.dumps(body, sort_keys=True) for body in bodies)
    endpoint = "/v1/completions" if "prompt" in bodies[0] else "/v1/chat/completions"
    assert {request.path for request in server.requests} == {endpoint}
    assert {request.headers["authorization"] for request in server.requests} == {"Bearer seed-key"}


# -- Async: concurrency -------------------------------------------------------


def test_50_calls_in_flight_at_once_all_succeed_with_their_own_results(server: Server) -> None:
    lock = threading.Lock()
    active = [0]
    peak = [0]

    def slow_echo(handler: Handler) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.3)
        finally:
            with lock:
                active[0] -= 1
        echo_re(handler)

    server.default = slow_echo

    async def main() -> list[Any]:
        async with make_async_client(server) as client:
            return await asyncio.gather(*(say(client, f"q{i}") for i in range(50)))

    results = run_async(main())
    assert [result.choices[0].message.content for result in results] == [f"re: q{i}" for i in range(50)]
    assert len(server.requests) == 50
    assert peak[0] >= 40, f"only {peak[0]} of 50 calls were in flight at once"


@pytest.mark.parametrize("max_workers", [1, 3])
def test_max_workers_bounds_the_threads_and_calls_waiting_for_the_server_hold_none(
    server: Server, max_workers: int
) -> None:
    lock = threading.Lock()
    active = [0]
    peak = [0]

    def slow_echo(handler: Handler) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        echo_re(handler)

    server.default = slow_echo

    threads: list[int] = []

    async def main() -> list[Any]:
        async with make_async_client(server, max_workers=max_workers) as client:
            results = await asyncio.gather(*(say(client, f"q{i}") for i in range(2 * max_workers)))
            threads.append(workers_of(client).threads)
            return results

    results = run_async(main())
    assert [result.choices[0].message.content for result in results] == [f"re: q{i}" for i in range(2 * max_workers)]
    assert peak[0] == 2 * max_workers  # all at the server at once
    assert threads[0] <= max_workers


def test_the_event_loop_keeps_ticking_during_slow_calls_and_a_slow_stream(server: Server) -> None:
    def slow_echo(handler: Handler) -> None:
        time.sleep(0.12)
        echo_re(handler)

    server.default = slow_echo

    async def main() -> tuple[list[Any], list[Any], int, int]:
        ticks = [0]
        ticker = asyncio.ensure_future(count_ticks(ticks))
        try:
            async with make_async_client(server) as client:
                before = ticks[0]
                results = await asyncio.gather(*(say(client, f"q{i}") for i in range(20)))
                during_calls = ticks[0] - before
                server.reply(Reply(chunks=sse(chunk("a"), chunk("b"), chunk("c"), chunk(finish="stop")), pause=0.06))
                stream = await chat(client, stream=True)
                before = ticks[0]
                parts = [part.choices[0].delta.content async for part in stream]
                during_stream = ticks[0] - before
        finally:
            ticker.cancel()
        return results, parts, during_calls, during_stream

    results, parts, during_calls, during_stream = run_async(main())
    assert [result.choices[0].message.content for result in results] == [f"re: q{i}" for i in range(20)]
    assert parts == ["a", "b", "c", None]
    assert during_calls >= 5, f"the loop ticked {during_calls} times during 0.12 s of calls"
    assert during_stream >= 10, f"the loop ticked {during_stream} times during a 0.24 s stream"


def test_contextvars_of_the_calling_task_are_visible_in_the_worker() -> None:
    client = tl.AsyncTogether(api_key="k", base_url="http://127.0.0.1:9/v1")

    def read(suffix: str, *, separator: str) -> tuple[str, int]:
        seen = context_tag.get()
        context_tag.set("changed in the worker")  # must not leak back into the task
        return seen + separator + suffix, threading.get_ident()

    tagged: list[str] = []

    async def task(tag: str) -> tuple[str, int, str]:
        context_tag.set(tag)
        tagged.append(tag)
        await until(lambda: len(tagged) == 2)  # the other task has set its own value meanwhile
        seen, worker = await run_on_worker(client, None, functools.partial(read, "x", separator="/"))
        return seen, worker, context_tag.get()

    async def main() -> list[tuple[str, int, str]]:
        try:
            return await asyncio.gather(task("first"), task("second"))
        finally:
            await client.close()

    results = run_async(main())
    assert [(seen, after) for seen, _, after in results] == [("first/x", "first"), ("second/x", "second")]
    assert all(worker != threading.get_ident() for _, worker, _ in results)
    assert context_tag.get() == "unset"


def test_an_exception_inside_the_worker_reaches_the_caller_unchanged() -> None:
    client = tl.AsyncTogether(api_key="k", base_url="http://127.0.0.1:9/v1")
    error = KeyError("the original")

    def fail() -> None:
        raise error

    async def main() -> None:
        try:
            await run_on_worker(client, None, fail)
        finally:
            await client.close()

    with pytest.raises(KeyError) as info:
        run_async(main())
    assert info.value is error


# -- Async: the workers -------------------------------------------------------


def test_the_executor_is_created_on_the_first_call_and_sized_by_max_workers(server: Server) -> None:
    client = make_async_client(server, max_workers=7)
    assert workers_of(client) is None

    async def main() -> tuple[Any, Any]:
        await chat(client)
        first = workers_of(client)
        await chat(client)
        return first, workers_of(client)

    first, second = run_async(main())
    assert isinstance(first, Workers)
    assert second is first
    assert first.max_workers == 7
    run_async(client.close())


def test_the_default_executor_has_8_workers(server: Server) -> None:
    client = make_async_client(server)
    run_async(chat(client))
    assert workers_of(client) is not None
    assert workers_of(client).max_workers == 8
    run_async(client.close())


@pytest.mark.parametrize("closing", ["close", "aclose", "async with"])
def test_closing_shuts_the_executor_down_and_closes_idle_connections(server: Server, closing: str) -> None:
    client = make_async_client(server)

    async def main() -> tuple[Any, list[Any]]:
        if closing == "async with":
            async with client as entered:
                assert entered is client
                await chat(client)
                return workers_of(client), idle_connections(client)
        await chat(client)
        executor, idle = workers_of(client), idle_connections(client)
        await getattr(client, closing)()
        return executor, idle

    executor, idle = run_async(main())
    assert executor is not None and len(idle) == 1
    assert workers_of(client) is None
    with pytest.raises(RuntimeError):
        executor.submit(int)
    assert idle[0].sock.fileno() == -1  # closed
    assert idle_connections(client) == []


def test_async_with_closes_the_client_when_its_body_raises(server: Server) -> None:
    client = make_async_client(server)
    seen: list[Any] = []

    async def main() -> None:
        async with client:
            await chat(client)
            seen.append(workers_of(client))
            raise LookupError("from the body")

    with pytest.raises(LookupError, match="from the body"):
        run_async(main())
    assert workers_of(client) is None
    with pytest.raises(RuntimeError):
        seen[0].submit(int)


def test_closing_a_client_that_never_made_a_call_is_harmless() -> None:
    client = tl.AsyncTogether(api_key="k", base_url="http://127.0.0.1:9/v1")
    run_async(client.close())
    run_async(client.aclose())
    assert workers_of(client) is None


def test_a_client_works_across_successive_asyncio_runs(server: Server) -> None:
    server.default = echo_re
    client = make_async_client(server)
    first = run_async(say(client, "one"))
    executor = workers_of(client)
    second = run_async(say(client, "two"))
    server.reply(Reply(chunks=sse(chunk("x"), chunk(finish="stop"))))

    async def stream_in_a_third_run() -> list[Any]:
        stream = await chat(client, stream=True)
        return [part.choices[0].delta.content async for part in stream]

    third = run_async(stream_in_a_third_run())
    assert (first.choices[0].message.content, second.choices[0].message.content, third) == (
        "re: one",
        "re: two",
        ["x", None],
    )
    assert workers_of(client) is executor
    assert len(server.connections) == 1  # one kept-alive connection served all three runs
    run_async(client.close())


def test_a_closed_client_starts_a_new_executor_when_used_again(server: Server) -> None:
    client = make_async_client(server)
    run_async(chat(client))
    old = workers_of(client)
    run_async(client.close())
    response = run_async(chat(client))
    assert response.choices[0].message.content == "Hello there."
    assert workers_of(client) is not None and workers_of(client) is not old
    run_async(client.close())


def test_a_burst_runs_on_as_many_workers_as_it_needs_and_idle_ones_retire(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Workers, "idle_seconds", 0.05)
    monkeypatch.setattr(Workers, "warm", 2)
    server.default = Reply(200, CHAT_RESPONSE, delay=0.1)
    client = make_async_client(server)

    async def burst() -> list[Any]:
        return await asyncio.gather(*(chat(client) for _ in range(12)))

    assert len(run_async(burst())) == 12
    workers = workers_of(client)
    assert workers is not None and 2 <= workers.threads <= 12
    deadline = time.monotonic() + 5
    while workers.threads > 2 and time.monotonic() < deadline:  # idle ones end, the warm ones stay
        time.sleep(0.01)
    assert workers.threads == 2
    assert len(run_async(burst())) == 12  # and the pool grows again
    run_async(client.close())


def test_calls_beyond_max_workers_wait_for_a_free_worker(server: Server) -> None:
    server.default = echo_re
    client = make_async_client(server, max_workers=2)

    async def main() -> list[str]:
        answers = await asyncio.gather(*(say(client, str(n)) for n in range(7)))
        return [answer.choices[0].message.content for answer in answers]

    assert run_async(main()) == [f"re: {n}" for n in range(7)]
    assert workers_of(client) is not None and workers_of(client).threads <= 2
    run_async(client.close())


def test_streams_waiting_for_their_next_chunk_hold_no_worker(server: Server, gate: threading.Event) -> None:
    def first_then_wait(handler: Handler) -> None:
        start_stream(handler, chunk("first "))
        gate.wait(10)
        for piece in sse(chunk("last"), chunk(finish="stop")):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    server.default = first_then_wait
    client = make_async_client(server, max_workers=4)

    async def read(stream: Any) -> str:
        return "".join([part.choices[0].delta.content or "" async for part in stream])

    async def main() -> list[str]:
        streams = await asyncio.gather(*(chat(client, stream=True) for _ in range(20)))
        readers = [asyncio.ensure_future(read(stream)) for stream in streams]
        await until(lambda: all(waits_without_a_thread(stream) for stream in streams))
        workers = workers_of(client)
        assert workers is not None and idle_workers(workers) == workers.threads  # every worker is idle
        gate.set()
        return await asyncio.gather(*readers)

    assert run_async(main()) == ["first last"] * 20  # 20 streams progressed on at most 4 threads
    run_async(client.close())


def test_closing_a_stream_wakes_a_read_waiting_in_another_task(server: Server, gate: threading.Event) -> None:
    server.default = lambda handler: (start_stream(handler, chunk("only ")), gate.wait(10))
    client = make_async_client(server)

    async def main() -> list[Any]:
        stream = await chat(client, stream=True)
        parts: list[Any] = []

        async def read() -> None:
            async for part in stream:
                parts.append(part.choices[0].delta.content)

        reader = asyncio.ensure_future(read())
        await until(lambda: waits_without_a_thread(stream))
        await stream.aclose()
        await asyncio.wait_for(reader, 5)  # ends, as a stream closed on purpose does
        return parts

    assert run_async(main()) == ["only "]
    run_async(client.close())


def test_an_async_upload_waits_for_room_to_write_on_the_event_loop(raw_server: Any) -> None:
    server = raw_server(slow_reader(1 << 19, 0.02, 2 << 20), read_requests=False, receive_buffer=65536)

    async def main() -> str:
        async with make_async_client(server.url, timeout=0.2, max_workers=1) as client:
            ticks = [0]
            ticker = asyncio.ensure_future(count_ticks(ticks))
            result = await chat(client, messages=video_message(8 << 20))
            ticker.cancel()
            assert ticks[0] > 3  # the loop went on while the upload waited for room to write
            return str(result.choices[0].message.content)

    assert run_async(main()) == f"got {server.received}"


# -- Async: streaming ---------------------------------------------------------


def test_async_stream_yields_the_chunks_the_sync_stream_yields(server: Server) -> None:
    events = sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"))
    reply = Reply(chunks=events, headers={"X-Request-Id": "req-9"})
    server.reply(reply, reply)
    with make_client(server) as sync_client:
        expected = list(chat(sync_client, stream=True))

    async def main() -> tuple[Any, list[Any], Any]:
        async with make_async_client(server) as client:
            stream = await chat(client, stream=True)
            parts = [part async for part in stream]
            again = await chat(client)  # the stream's connection went back to the pool
            return stream, parts, again

    stream, parts, again = run_async(main())
    assert isinstance(stream, tl.AsyncStream)
    assert stream.headers["x-request-id"] == "req-9"
    assert all(isinstance(part, tl.ChatCompletionChunk) for part in parts)
    assert parts == expected
    assert [part.choices[0].delta.content for part in parts] == ["Hel", "lo", None]
    assert parts[-1].choices[0].finish_reason == "stop"
    assert again.choices[0].message.content == "Hello there."
    request = server.requests[1]
    assert request.json["stream"] is True
    assert request.headers["accept"] == "text/event-stream"
    assert len(server.connections) == 2  # one for the sync client, one reused by the async client


def test_chunks_that_arrive_in_one_read_are_all_yielded_in_order(server: Server) -> None:
    body = b"".join(sse(chunk("a"), chunk("b"), chunk("c"), chunk(finish="stop")))
    server.reply(Reply(body=body, content_type="text/event-stream"))

    async def main() -> list[Any]:
        async with make_async_client(server) as client:
            stream = await chat(client, stream=True)
            parts = [part.choices[0].delta.content async for part in stream]
            with pytest.raises(StopAsyncIteration):  # an exhausted stream stays exhausted (and does not hang)
                await asyncio.wait_for(stream.__anext__(), 5)
            return parts

    parts = run_async(main())
    assert parts == ["a", "b", "c", None]


def test_completions_stream_yields_completion_chunks(server: Server) -> None:
    events = [
        {
            "id": "x",
            "object": "completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "text": "def", "finish_reason": None}],
        },
        {
            "id": "x",
            "object": "completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "text": " f", "finish_reason": "length"}],
        },
    ]
    server.reply(Reply(chunks=sse(*events)))

    async def main() -> list[Any]:
        async with make_async_client(server) as client:
            stream = await client.completions.create(model="m", prompt="p", stream=True)
            assert isinstance(stream, tl.AsyncStream)
            return [part async for part in stream]

    parts = run_async(main())
    assert all(isinstance(part, tl.CompletionChunk) for part in parts)
    assert [part.choices[0].text for part in parts] == ["def", " f"]
    assert parts[-1].choices[0].finish_reason == "length"
    assert server.requests[0].path == "/v1/completions"
    assert server.requests[0].json == {"model": "m", "prompt": "p", "stream": True}


@pytest.mark.parametrize("how", ["async with", "aclose"])
def test_leaving_a_stream_early_closes_its_connection(server: Server, how: str) -> None:
    hung_up = threading.Event()
    server.reply(slow_stream(hung_up))
    client = make_async_client(server)

    async def main() -> tuple[Any, Any, list[Any]]:
        stream = await chat(client, stream=True)
        if how == "async with":
            async with stream as entered:
                assert entered is stream
                first = await stream.__anext__()
        else:
            first = await stream.__anext__()
            await stream.aclose()
        rest = [part async for part in stream]
        return stream, first, rest

    try:
        stream, first, rest = run_async(main())
        assert first.choices[0].delta.content == "Hel"
        assert rest == []
        assert is_released(stream.stream)
        assert hung_up.wait(1.5), "the server never saw the connection close"
        assert idle_connections(client) == []
    finally:
        run_async(client.close())


def test_a_closed_stream_yields_nothing_more_even_if_chunks_were_buffered(server: Server) -> None:
    body = b"".join(sse(chunk("a"), chunk("b"), chunk("c"), chunk(finish="stop")))
    server.reply(Reply(body=body, content_type="text/event-stream"), Reply(body=body, content_type="text/event-stream"))
    with make_client(server) as sync_client:
        sync_stream = chat(sync_client, stream=True)
        next(sync_stream)
        sync_stream.close()
        assert list(sync_stream) == []

    async def main() -> list[Any]:
        async with make_async_client(server) as client:
            stream = await chat(client, stream=True)
            await stream.__anext__()  # "a"; "b", "c" and the finish chunk came in the same read
            await stream.aclose()
            return [part.choices[0].delta.content async for part in stream]

    assert run_async(main()) == []


def test_a_status_error_on_a_stream_request_raises_from_the_await(server: Server) -> None:
    server.reply(Reply(404, {"error": {"message": "no such model", "code": "model_not_found"}}))

    async def main() -> None:
        async with make_async_client(server) as client:
            await chat(client, stream=True)

    with pytest.raises(tl.NotFoundError) as info:
        run_async(main())
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert str(info.value) == "Error code: 404 - no such model"


@pytest.mark.parametrize(
    "pieces, message",
    [
        pytest.param(
            sse(chunk("Hel"), {"error": {"message": "overloaded", "type": "server_error"}}),
            "overloaded",
            id="error-object",
        ),
        pytest.param(
            sse(chunk("Hel"), done=False) + [b'event: error\ndata: {"message": "boom"}\n\n'],
            "boom",
            id="error-event",
        ),
        pytest.param(sse(chunk("Hel"), "not json"), "The stream sent data that is not JSON: 'not json'", id="not-json"),
    ],
)
def test_an_error_inside_the_stream_raises_api_error(server: Server, pieces: list[bytes], message: str) -> None:
    server.reply(Reply(chunks=pieces))
    got: list[Any] = []

    async def main() -> None:
        async with make_async_client(server) as client:
            stream = await chat(client, stream=True)
            async for part in stream:
                got.append(part.choices[0].delta.content)

    with pytest.raises(tl.APIError) as info:
        run_async(main())
    assert type(info.value) is (tl.JSONError if "not JSON" in message else tl.APIError)
    assert str(info.value) == message
    assert info.value.status_code == 200
    assert got == ["Hel"]


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(Reply(chunks=sse(chunk("Hel"), done=False)), id="ends-without-done-or-finish-reason"),
        pytest.param(
            raw_reply(STREAM_HEAD + chunked(sse(chunk("Hel"))[0]) + b'40\r\ndata: {"id'),
            id="cut-mid-chunk",
        ),
    ],
)
def test_a_truncated_stream_raises_api_connection_error(server: Server, action: Any) -> None:
    server.reply(action)
    got: list[Any] = []

    async def main() -> None:
        async with make_async_client(server) as client:
            stream = await chat(client, stream=True)
            async for part in stream:
                got.append(part.choices[0].delta.content)

    with pytest.raises(tl.APIConnectionError):
        run_async(main())
    assert got == ["Hel"]


def test_a_stall_inside_a_stream_raises_timeout(server: Server) -> None:
    hung_up = threading.Event()
    server.reply(slow_stream(hung_up))
    got: list[Any] = []

    async def main() -> None:
        async with make_async_client(server, timeout=0.1) as client:
            stream = await chat(client, stream=True)
            async for part in stream:
                got.append(part.choices[0].delta.content)

    with pytest.raises(tl.Timeout):
        run_async(main())
    assert got == ["Hel"]
    assert hung_up.wait(1.5)


# -- Async: errors and retries ------------------------------------------------


@pytest.mark.parametrize(
    "status, error",
    [
        (400, tl.BadRequestError),
        (401, tl.AuthenticationError),
        (403, tl.PermissionDeniedError),
        (404, tl.NotFoundError),
        (409, tl.ConflictError),
        (422, tl.UnprocessableEntityError),
        (429, tl.RateLimitError),
        (500, tl.InternalServerError),
        (503, tl.ServiceUnavailableError),
    ],
)
def test_an_error_status_raises_the_same_error_as_the_sync_client(server: Server, status: int, error: type) -> None:
    reply = Reply(status, ERROR_BODY, headers={"X-Request-Id": "req-e"})
    server.reply(reply, reply)
    with make_client(server, max_retries=0) as sync_client:
        with pytest.raises(tl.APIStatusError) as sync_info:
            chat(sync_client)

    async def main() -> None:
        async with make_async_client(server) as client:
            await chat(client)

    with pytest.raises(tl.APIStatusError) as async_info:
        run_async(main())
    got, expected = async_info.value, sync_info.value
    assert type(got) is type(expected) is error
    assert (str(got), got.status_code, got.request_id, got.code, got.param, got.type, got.body) == (
        str(expected),
        expected.status_code,
        expected.request_id,
        expected.code,
        expected.param,
        expected.type,
        expected.body,
    )
    assert (got.status_code, str(got), got.request_id) == (status, f"Error code: {status} - nope", "req-e")
    assert len(server.requests) == 2  # one attempt each: max_retries=0


@pytest.mark.parametrize(
    "script, max_retries, error, delay_bounds",
    [
        pytest.param(
            [Reply(500), Reply(200, CHAT_RESPONSE)], 2, None, [(0.375, 0.5)], id="500-then-200-is-retried-once"
        ),
        pytest.param(
            [Reply(429, headers={"Retry-After": "2"}), Reply(200, CHAT_RESPONSE)],
            2,
            None,
            [(2.0, 2.0)],
            id="429-waits-its-retry-after",
        ),
        pytest.param([hang_up, Reply(200, CHAT_RESPONSE)], 2, None, [(0.375, 0.5)], id="hang-up-then-200-is-retried"),
        pytest.param(
            [Reply(503), Reply(503), Reply(503)],
            2,
            tl.ServiceUnavailableError,
            [(0.375, 0.5), (0.75, 1.0)],
            id="503s-give-up-after-max-retries",
        ),
        pytest.param([Reply(500)], 0, tl.InternalServerError, [], id="max-retries-0-is-one-attempt"),
        pytest.param([Reply(400, ERROR_BODY)], 3, tl.BadRequestError, [], id="400-is-not-retried"),
    ],
)
def test_retries_match_the_sync_client(
    server: Server, script: list[Any], max_retries: int, error: type | None, delay_bounds: list[tuple[float, float]]
) -> None:
    outcomes = []
    for mode in ("sync", "async"):
        server.requests.clear()
        server.reply(*script)
        delays: list[float] = []
        try:
            if mode == "sync":
                with make_client(server, max_retries=max_retries) as sync_client:
                    record_delays(sync_client, delays)
                    result: Any = chat(sync_client).choices[0].message.content
            else:
                client = make_async_client(server, max_retries=max_retries)
                record_delays(client, delays)
                try:
                    result = run_async(chat(client)).choices[0].message.content
                finally:
                    run_async(client.close())
        except tl.TogetherException as exc:
            result = type(exc)
        assert len(delays) == len(delay_bounds)
        assert all(low <= delay <= high for delay, (low, high) in zip(delays, delay_bounds)), delays
        outcomes.append((mode, result, len(server.requests)))
    expected = error or "Hello there."
    assert outcomes == [("sync", expected, len(script)), ("async", expected, len(script))]


def test_a_per_call_max_retries_0_makes_one_attempt(server: Server) -> None:
    server.reply(Reply(500), Reply(200, CHAT_RESPONSE))
    client = make_async_client(server, max_retries=3)
    delays: list[float] = []
    record_delays(client, delays)

    async def main() -> None:
        async with client:
            await chat(client, max_retries=0)

    with pytest.raises(tl.InternalServerError):
        run_async(main())
    assert len(server.requests) == 1
    assert delays == []


@pytest.mark.parametrize("where", ["client", "call"])
def test_a_slow_answer_raises_timeout(server: Server, where: str) -> None:
    hung_up = threading.Event()
    server.reply(stall(1.0, hung_up))
    client = make_async_client(server, timeout=0.1 if where == "client" else 5)
    per_call = {"timeout": 0.1} if where == "call" else {}

    async def main() -> None:
        async with client:
            await chat(client, **per_call)

    with pytest.raises(tl.Timeout) as info:
        run_async(main())
    assert isinstance(info.value, tl.APITimeoutError)
    assert len(server.requests) == 1
    assert hung_up.wait(1.5)


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param("refused", id="connection-refused"),
        pytest.param(hang_up, id="hang-up-without-a-response"),
        pytest.param(raw_reply(b"garbage\r\n\r\n"), id="garbage-status-line"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_network_failure_raises_api_connection_error(server: Server, failure: Any, stream: bool) -> None:
    if failure == "refused":
        client = tl.AsyncTogether(api_key="k", base_url=refused_url(), timeout=5, max_retries=0)
    else:
        server.reply(failure)
        client = make_async_client(server)

    async def main() -> None:
        async with client:
            await chat(client, stream=stream)

    with pytest.raises(tl.APIConnectionError) as info:
        run_async(main())
    assert not isinstance(info.value, tl.Timeout)
    if failure == "refused":
        assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_connection_refused_is_retried_then_raises_api_connection_error() -> None:
    client = tl.AsyncTogether(api_key="k", base_url=refused_url(), timeout=5, max_retries=2)
    delays: list[float] = []
    record_delays(client, delays)

    async def main() -> None:
        async with client:
            await chat(client)

    with pytest.raises(tl.APIConnectionError):
        run_async(main())
    assert len(delays) == 2


# -- Async: cancellation ------------------------------------------------------


def test_cancelling_a_slow_call_returns_promptly_and_drops_its_connection(server: Server) -> None:
    hung_up = threading.Event()
    slow_addresses: list[Any] = []

    def slow(handler: Handler) -> None:
        slow_addresses.append(handler.client_address)
        stall(2.0, hung_up)(handler)

    server.reply(slow)
    server.default = echo_re
    client = make_async_client(server, max_retries=5)  # retries on: a cancelled call must not be retried

    async def main() -> tuple[float, bool, Any]:
        started = time.monotonic()
        task = asyncio.ensure_future(say(client, "slow"))
        await until(lambda: server.requests)  # the call waits for the stalled answer
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.monotonic() - started
        saw_hangup = await asyncio.get_running_loop().run_in_executor(None, hung_up.wait, 2.0)
        idle_after_cancel = idle_connections(client)
        following = await say(client, "next")
        return elapsed, saw_hangup, (idle_after_cancel, following)

    elapsed, saw_hangup, (idle_after_cancel, following) = run_async(main())
    assert elapsed < 1.5, f"the cancelled await took {elapsed:.2f} s (the server stalls 2 s)"
    assert saw_hangup, "the abandoned request's connection was never closed"
    assert idle_after_cancel == []
    assert following.choices[0].message.content == "re: next"
    shutdown_workers(client)  # the abandoned worker has finished too
    assert [r.json["messages"][0]["content"] for r in server.requests] == ["slow", "next"]  # no retry
    assert len(server.connections) == 2
    idle = idle_connections(client)
    assert len(idle) == 1 and idle[0].sock.getsockname() != slow_addresses[0]
    run_async(client.close())


def test_cancelling_during_the_retry_wait_stops_the_retries(server: Server) -> None:
    server.reply(Reply(503, headers={"Retry-After": "5"}))
    client = make_async_client(server, max_retries=3)  # the real sleep: the wait must be interruptible
    sleeping = notify_sleeps(client)

    async def main() -> float:
        started = time.monotonic()
        task = asyncio.ensure_future(chat(client))
        await until(sleeping.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert run_async(main()) < 1.5
    shutdown_workers(client, 2.0)  # a worker still sleeping out the 5 s wait would fail this
    assert len(server.requests) == 1
    run_async(client.close())


def test_cancelling_a_task_inside_async_for_closes_the_stream(server: Server) -> None:
    hung_up = threading.Event()
    server.reply(slow_stream(hung_up))
    client = make_async_client(server)
    got: list[Any] = []
    streams: list[Any] = []

    async def consume() -> None:
        stream = await chat(client, stream=True)
        streams.append(stream)
        async for part in stream:
            got.append(part.choices[0].delta.content)

    async def main() -> float:
        started = time.monotonic()
        task = asyncio.ensure_future(consume())
        await until(lambda: got and waits_without_a_thread(streams[0]))  # waiting for the stalled next chunk
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    elapsed = run_async(main())
    assert elapsed < 1.5, f"the cancelled stream took {elapsed:.2f} s (the server stalls 2 s)"
    assert got == ["Hel"]
    stream = streams[0].stream
    assert is_released(stream)
    assert hung_up.wait(1.5), "the server never saw the stream's connection close"
    shutdown_workers(client, 1.5)  # the worker blocked in the read was released
    assert idle_connections(client) == []
    run_async(client.close())


def test_a_read_cancelled_by_a_timeout_makes_the_next_read_raise_not_end(server: Server) -> None:
    hung_up = threading.Event()
    server.reply(slow_stream(hung_up))
    client = make_async_client(server)

    async def main() -> list[Any]:
        stream = await chat(client, stream=True)
        reads: list[Any] = [(await stream.__anext__()).choices[0].delta.content]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0.2)  # the server stalls: this read is cancelled
        with pytest.raises(tl.APIConnectionError, match="cancelled"):
            await stream.__anext__()
        await stream.aclose()  # closing on purpose afterwards: the stream then just ends
        reads.extend([part async for part in stream])
        return reads

    assert run_async(main()) == ["Hel"]
    assert hung_up.wait(1.5), "the server never saw the stream's connection close"
    run_async(client.close())


def test_reading_a_stream_closed_while_a_cancelled_read_still_runs_just_ends(
    server: Server, client: tl.Together, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.reply(Reply(chunks=sse(chunk("a"), chunk("b", finish="stop"))))
    inside, release = threading.Event(), threading.Event()

    def slowly(parse: Callable[..., Any]) -> Callable[..., Any]:
        def slow_parse(payload: Any) -> Any:
            inside.set()
            release.wait(5)
            return parse(payload)

        return slow_parse

    wrap_chunk_parse(monkeypatch, slowly)
    stream = chat(client, stream=True)
    abandoned = threading.Thread(target=next_available, args=(stream,))  # a read whose awaiting task was cancelled
    abandoned.start()
    try:
        assert inside.wait(5)
        stream.close()  # what cancelling does; the abandoned read is still inside the generator
        assert next_available(stream) is STREAM_END  # not "ValueError: generator already executing"
    finally:
        release.set()
        abandoned.join(5)


def test_a_stream_produced_after_its_call_was_cancelled_is_closed(server: Server) -> None:
    hung_up = threading.Event()
    gate = threading.Event()
    server.reply(slow_stream(hung_up))
    client = make_async_client(server)
    made: list[Any] = []

    def open_then_wait() -> Any:
        stream = sync_of(client).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        made.append(stream)
        gate.wait(5)  # the task is cancelled meanwhile; the stream is returned anyway
        return stream

    async def main() -> None:
        task = asyncio.ensure_future(run_on_worker(client, new_cancel(), open_then_wait))
        await until(lambda: made)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        run_async(main())
    finally:
        gate.set()
    shutdown_workers(client)
    assert is_released(made[0])
    assert hung_up.wait(1.5)
    run_async(client.close())


# -- Command line -------------------------------------------------------------


def test_chat_streams_the_answer_then_a_newline(server: Server, invocation: str) -> None:
    server.reply(stream_reply("Hello", ", ", "world"))
    result = run_cli(server, "chat", "Say hello", invocation=invocation)
    assert result.returncode == 0
    assert result.stdout == "Hello, world\n"
    assert result.stderr == ""
    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {CLI_API_KEY}"
    assert request.json == {
        "model": CLI_DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
    }


@pytest.mark.parametrize(
    "options, model_env, expected",
    [
        ([], "env/model", "env/model"),
        (["-m", "flag/model"], None, "flag/model"),
        (["--model", "flag/model"], "env/model", "flag/model"),
    ],
)
def test_chat_model_comes_from_the_option_then_together_model_then_the_default(
    server: Server, options: list[str], model_env: str | None, expected: str
) -> None:
    server.reply(stream_reply("ok"))
    result = run_cli_here(server, "chat", *options, "hi", env=cli_env(server, TOGETHER_MODEL=model_env))
    assert result.returncode == 0
    assert server.requests[0].json["model"] == expected


def test_chat_system_message_comes_before_the_user_message(server: Server) -> None:
    server.reply(stream_reply("ok"))
    result = run_cli_here(server, "chat", "--system", "Be brief.", "Why is the sky blue?")
    assert result.returncode == 0
    assert server.requests[0].json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            ["--max-tokens", "50", "--temperature", "0.25", "--top-p", "0.9", "--stop", "\n\n"],
            {"max_tokens": 50, "temperature": 0.25, "top_p": 0.9, "stop": ["\n\n"]},
        ),
        (["--stop", "a", "--stop", "b", "--temperature", "0"], {"stop": ["a", "b"], "temperature": 0.0}),
    ],
)
def test_chat_sampling_options_land_in_the_body(server: Server, options: list[str], expected: dict[str, Any]) -> None:
    server.reply(stream_reply("ok"))
    result = run_cli_here(server, "chat", *options, "hi")
    assert result.returncode == 0
    assert server.requests[0].json == {
        "model": CLI_DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        **expected,
    }


def test_chat_no_stream_prints_the_message_content(server: Server) -> None:
    result = run_cli_here(server, "chat", "--no-stream", "hi")
    assert result.returncode == 0
    assert result.stdout == "Hello there.\n"
    assert result.stderr == ""
    body = server.requests[0].json
    assert body.get("stream", False) is False
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_chat_json_prints_the_whole_response_without_streaming(server: Server) -> None:
    result = run_cli_here(server, "chat", "--json", "hi")
    assert result.returncode == 0
    printed = json.loads(result.stdout)
    assert printed["id"] == "chat-1"
    assert printed["choices"][0]["message"]["content"] == "Hello there."
    assert printed["usage"]["total_tokens"] == 8
    assert server.requests[0].json.get("stream", False) is False


def test_chat_images_become_data_urls_or_stay_urls_in_order(server: Server, tmp_path: pathlib.Path) -> None:
    png = tmp_path / "picture.png"
    png.write_bytes(CLI_PNG)
    png_url = "data:image/png;base64," + base64.b64encode(CLI_PNG).decode()
    jpeg_url = "data:image/jpeg;base64," + base64.b64encode(CLI_JPEG).decode()
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(CLI_JPEG)
    server.reply(stream_reply("A cat."))
    url = "https://example.com/cat.jpg"
    result = run_cli_here(server, "chat", "--image", str(png), "--image", url, "--image", str(jpeg), "What is this?")
    assert result.returncode == 0
    assert result.stdout == "A cat.\n"
    assert server.requests[0].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": png_url}},
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "image_url", "image_url": {"url": jpeg_url}},
            ],
        }
    ]


@pytest.mark.parametrize("content, words", [(None, "No such file"), (CLI_UNKNOWN, "MIME type")])
def test_an_image_that_cannot_be_sent_is_a_usage_error_and_nothing_is_sent(
    server: Server, tmp_path: pathlib.Path, content: bytes | None, words: str
) -> None:
    image = tmp_path / "picture"
    if content is not None:
        image.write_bytes(content)
    result = run_cli_here(server, "chat", "--image", str(image), "hi")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith(f"together-lite: error: --image {image}: ")
    assert words in result.stderr
    assert server.requests == []


@pytest.mark.parametrize("args", [["chat", "-"], ["chat"]], ids=["dash", "no-prompt"])
def test_chat_reads_the_prompt_from_piped_stdin(server: Server, args: list[str]) -> None:
    server.reply(stream_reply("ok"))
    result = run_cli_here(server, *args, input="line one\nline two")
    assert result.returncode == 0
    assert server.requests[0].json["messages"] == [{"role": "user", "content": "line one\nline two"}]


@pytest.mark.parametrize("args, piped", [(["chat"], None), (["chat", "-"], " \n"), (["complete"], "")])
def test_an_empty_prompt_on_stdin_is_a_usage_error(server: Server, args: list[str], piped: str | None) -> None:
    result = run_cli_here(server, *args, input=piped or "")
    assert result.returncode == 2
    assert "the prompt on stdin is empty" in result.stderr
    assert server.requests == []


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_complete_without_a_prompt_on_a_terminal_is_a_usage_error(server: Server) -> None:
    controller, terminal = os.openpty()
    try:
        result = run_cli(server, "complete", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "PROMPT" in result.stderr
    assert server.requests == []


def test_a_reader_that_stops_reading_ends_the_command_quietly(server: Server) -> None:
    reader_gone = threading.Event()

    def act(handler: Handler) -> None:  # the first piece, then the rest once the reader has gone
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        handler.wfile.write(b"".join(sse(chunk("first "), done=False)))
        handler.wfile.flush()
        reader_gone.wait(5)
        handler.wfile.write(b"".join(sse(*(chunk("more ") for _ in range(50)), chunk(finish="stop"))))
        handler.close_connection = True

    server.reply(act)
    with subprocess.Popen(
        [*CLI_INVOCATIONS["script"], "chat", "hi"],
        cwd=module_directory(),
        env=cli_env(server),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.read(6) == b"first "  # then hang up, as `| head -c 6` does
        process.stdout.close()
        reader_gone.set()
        stderr = process.stderr.read().decode()
        assert process.wait(20) == 141
    assert stderr == ""


# -- Command line: complete ---------------------------------------------------


def test_complete_streams_the_text_pieces(server: Server) -> None:
    pieces = [text_chunk(" return"), text_chunk(" n"), text_chunk("", "length")]
    server.reply(Reply(chunks=sse(*pieces)))
    result = run_cli_here(server, "complete", "def f(n):")
    assert result.returncode == 0
    assert result.stdout == " return n\n"
    assert result.stderr == ""
    [request] = server.requests
    assert request.path == "/v1/completions"
    assert request.json == {"model": CLI_DEFAULT_MODEL, "prompt": "def f(n):", "stream": True}


def test_complete_no_stream_prints_the_text(server: Server) -> None:
    server.reply(Reply(200, COMPLETION_RESPONSE))
    options = ["--no-stream", "-m", "code/model", "--max-tokens", "2", "--stop", "\n"]
    result = run_cli_here(server, "complete", *options, "def f")
    assert result.returncode == 0
    assert result.stdout == " return n\n"
    [request] = server.requests
    assert request.path == "/v1/completions"
    body = request.json
    assert body.get("stream", False) is False
    assert {k: v for k, v in body.items() if k != "stream"} == {
        "model": "code/model",
        "prompt": "def f",
        "max_tokens": 2,
        "stop": ["\n"],
    }


def test_complete_json_prints_the_whole_response(server: Server) -> None:
    server.reply(Reply(200, COMPLETION_RESPONSE))
    result = run_cli_here(server, "complete", "--json", "def f")
    assert result.returncode == 0
    assert json.loads(result.stdout)["choices"][0]["text"] == " return n"
    assert server.requests[0].json.get("stream", False) is False


def test_complete_reads_the_prompt_from_stdin(server: Server) -> None:
    server.reply(Reply(200, COMPLETION_RESPONSE))
    result = run_cli_here(server, "complete", "--no-stream", "-", input="def fib(n):\n")
    assert result.returncode == 0
    assert server.requests[0].json["prompt"] == "def fib(n):\n"


# -- Command line: version, help and usage errors -----------------------------


@pytest.mark.parametrize("args", [["--version"], ["complete", "--version"]])
def test_version_prints_the_name_and_version(server: Server, args: list[str]) -> None:
    result = run_cli_here(server, *args)
    assert result.returncode == 0
    assert result.stdout == f"together_lite {tl.__version__}\n"
    assert server.requests == []


@pytest.mark.parametrize("args", [["--help"], ["chat", "--help"], ["complete", "-h"]])
def test_help_exits_0(server: Server, args: list[str]) -> None:
    result = run_cli_here(server, *args)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: together-lite")
    assert result.stderr == ""
    assert server.requests == []


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--bogus"],
        ["frobnicate", "hi"],
        ["chat", "--max-tokens", "many", "hi"],
        ["chat", "--max-tokens", "-5", "hi"],
        ["complete", "--max-tokens", "0", "hi"],
        ["chat", "--temperature", "hot", "hi"],
        ["chat", "one", "two"],
        ["complete", "--image", "x.png", "p"],
    ],
)
def test_usage_error_exits_2_and_sends_nothing(server: Server, args: list[str]) -> None:
    result = run_cli_here(server, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: together-lite")
    assert "error:" in result.stderr
    assert server.requests == []


# -- Command line: errors -----------------------------------------------------


@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["stream", "json"])
def test_invalid_api_key_is_one_error_line_and_exit_1(server: Server, mode: list[str]) -> None:
    server.reply(error_reply(401, "Invalid API key provided."))
    result = run_cli_here(server, "chat", *mode, "hi")
    assert result.returncode == 1
    assert result.stderr == "error: 401 Invalid API key provided.\n"
    assert result.stdout in ("", "\n")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "reply, line",
    [
        (error_reply(400, "max_tokens is too large"), "error: 400 max_tokens is too large"),
        (error_reply(422, "bad\nrequest"), "error: 422 bad request"),
        (error_reply(500, "Internal error", **{"x-should-retry": "false"}), "error: 500 Internal error"),
    ],
    ids=["400", "422-multiline", "500-not-retried"],
)
def test_api_error_is_one_line_with_status_and_message(server: Server, reply: Reply, line: str) -> None:
    server.reply(reply)
    result = run_cli_here(server, "complete", "hi")
    assert result.returncode == 1
    assert result.stderr == line + "\n"
    assert result.stdout in ("", "\n")


def test_missing_api_key_exits_1_naming_together_api_key(server: Server) -> None:
    result = run_cli_here(server, "chat", "hi", env=cli_env(server, TOGETHER_API_KEY=None))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert "TOGETHER_API_KEY" in result.stderr
    assert server.requests == []


def test_bad_base_url_exits_1_with_one_error_line(server: Server) -> None:
    result = run_cli_here(server, "chat", "hi", env=cli_env(server, TOGETHER_BASE_URL="ftp://127.0.0.1/v1"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert "ftp://127.0.0.1/v1" in result.stderr


def test_connection_dropped_mid_stream_exits_1_with_one_error_line(server: Server) -> None:
    # A refused connection is retried 5 times with backoff (~12 s), so the fast
    # connection error is a stream cut off after its headers: never retried.
    server.reply(cut_mid_stream)
    result = run_cli_here(server, "chat", "hi")
    assert result.returncode == 1
    assert result.stdout.startswith("Hel")
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert "onnection" in result.stderr


def test_error_event_in_the_stream_exits_1_with_one_error_line(server: Server) -> None:
    server.reply(Reply(chunks=sse(chunk("Hel"), {"error": {"message": "boom"}})))
    result = run_cli_here(server, "chat", "hi")
    assert result.returncode == 1
    assert result.stdout.startswith("Hel")
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.rstrip("\n").endswith("boom")


def test_error_after_streamed_text_still_ends_the_output_line(server: Server) -> None:
    server.reply(Reply(chunks=sse(chunk("Hel"), {"error": {"message": "boom"}})))
    result = run_cli_here(server, "chat", "hi")
    assert result.returncode == 1
    assert result.stdout == "Hel\n"


def test_error_event_in_the_stream_is_printed_without_the_200_status(server: Server) -> None:
    server.reply(Reply(chunks=sse(chunk("Hel"), {"error": {"message": "boom"}})))
    result = run_cli_here(server, "chat", "hi")
    assert result.stderr == "error: boom\n"


@needs_sigint
def test_ctrl_c_while_waiting_for_the_answer_exits_130_without_traceback(server: Server, gate: threading.Event) -> None:
    server.reply(lambda handler: gate.wait(15))
    process = subprocess.Popen(
        interruptible_cli("chat", "hi"),
        cwd=module_directory(),
        env=cli_env(server),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    try:
        wait_for_requests(server, 1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        stop_process(process)
    assert process.returncode == 130
    check_cli_output(stdout, stderr)
    assert stderr == ""
    assert stdout == "\n"


@needs_sigint
def test_ctrl_c_in_the_middle_of_a_stream_keeps_the_text_and_exits_130(server: Server, gate: threading.Event) -> None:
    def stall_after_one_chunk(handler: Handler) -> None:
        start_stream(handler, chunk("Hel"))
        gate.wait(15)

    server.reply(stall_after_one_chunk)
    process = subprocess.Popen(
        interruptible_cli("chat", "hi"),
        cwd=module_directory(),
        env=cli_env(server),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 15)
        assert readable, "the first piece of the stream was never printed"
        first = os.read(process.stdout.fileno(), 100)
        process.send_signal(signal.SIGINT)
        rest, stderr = process.communicate(timeout=20)
    finally:
        stop_process(process)
    assert process.returncode == 130
    check_cli_output((first + rest).decode(), stderr.decode())
    assert first + rest == b"Hel\n"
    assert stderr == b""


# -- Command line: a conversation on a terminal -------------------------------


@needs_a_terminal
def test_chat_on_a_terminal_is_a_conversation_that_keeps_its_history(server: Server, terminal: Any) -> None:
    server.reply(stream_reply("Paris", "."), stream_reply("About 2.1 million."))
    terminal = terminal("-s", "Be brief.")
    assert "Chatting with" in terminal.wait_for("> ")
    terminal.type(b"What is the capital of France?\r")
    assert "Paris." in terminal.wait_for("> ")
    terminal.type(b"And its population?\r")
    assert "About 2.1 million." in terminal.wait_for("> ")
    terminal.type(b"exit\r")
    assert terminal.exit_code() == 0
    assert server.requests[1].json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And its population?"},
    ]
    assert all(request.json["stream"] is True for request in server.requests)


@needs_a_terminal
def test_reset_starts_the_conversation_over_and_ctrl_d_leaves(server: Server, terminal: Any) -> None:
    server.reply(stream_reply("One."), stream_reply("Two."))
    terminal = terminal()
    terminal.wait_for("> ")
    terminal.type(b"first\r")
    terminal.wait_for("One.")
    terminal.wait_for("> ")
    terminal.type(b"/reset\r")
    assert "starts over" in terminal.wait_for("> ")
    terminal.type(b"second\r")
    terminal.wait_for("Two.")
    terminal.wait_for("> ")
    terminal.type(b"\x04")  # Ctrl-D at the prompt
    assert terminal.exit_code() == 0
    assert server.requests[1].json["messages"] == [{"role": "user", "content": "second"}]


@needs_a_terminal
def test_ctrl_c_stops_an_answer_and_the_conversation_goes_on(
    server: Server, terminal: Any, gate: threading.Event
) -> None:
    def stall_after_one_chunk(handler: Handler) -> None:
        start_stream(handler, chunk("A long answ"))
        gate.wait(15)

    server.reply(stall_after_one_chunk, stream_reply("Short."))
    terminal = terminal()
    terminal.wait_for("> ")
    terminal.type(b"tell me everything\r")
    terminal.wait_for("A long answ")
    terminal.type(b"\x03")  # Ctrl-C, through the terminal
    assert "(stopped)" in terminal.wait_for("> ")
    terminal.type(b"something short\r")
    assert "Short." in terminal.wait_for("> ")
    terminal.type(b"\x04")
    assert terminal.exit_code() == 0
    assert server.requests[1].json["messages"] == [{"role": "user", "content": "something short"}]


@needs_a_terminal
def test_an_api_error_in_a_conversation_is_one_line_and_it_goes_on(server: Server, terminal: Any) -> None:
    server.reply(error_reply(400, "max_tokens is too large"), stream_reply("Fine."))
    terminal = terminal()
    terminal.wait_for("> ")
    terminal.type(b"too much\r")
    assert "error: 400 max_tokens is too large" in terminal.wait_for("> ")
    terminal.type(b"less\r")
    assert "Fine." in terminal.wait_for("> ")
    terminal.type(b"quit\r")
    assert terminal.exit_code() == 0
    assert server.requests[1].json["messages"] == [{"role": "user", "content": "less"}]


# -- Command line: input, options and output ----------------------------------


def test_piped_text_comes_before_the_prompt_argument(server: Server) -> None:
    server.reply(stream_reply("ok"))
    result = run_cli_here(server, "chat", "explain this code", input="def fib(n):\n    return n\n")
    assert result.returncode == 0
    assert server.requests[0].json["messages"] == [
        {"role": "user", "content": "def fib(n):\n    return n\n explain this code"}
    ]


def test_option_sets_any_body_parameter_reading_json_values(server: Server) -> None:
    server.reply(stream_reply("ok"))
    result = run_cli_here(
        server, "chat", "-o", "top_k", "40", "-o", "response_format", '{"type": "json_object"}',
        "-o", "reasoning_effort", "low", "-o", "echo", "true", "hi",
    )  # fmt: skip
    assert result.returncode == 0
    body = server.requests[0].json
    assert (body["top_k"], body["response_format"], body["reasoning_effort"], body["echo"]) == (
        40,
        {"type": "json_object"},
        "low",
        True,
    )


def test_usage_prints_tokens_and_speed_to_stderr_after_the_answer(server: Server) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    server.reply(
        Reply(chunks=sse(chunk("a"), chunk("b"), chunk(finish="stop", usage=usage))), Reply(200, CHAT_RESPONSE)
    )
    result = run_cli_here(server, "chat", "--usage", "hi")
    assert result.returncode == 0 and result.stdout == "ab\n"
    assert re.fullmatch(r"12 tokens in, 3 out; first token after \d+\.\d\d s; \d+\.\d tokens/s\n", result.stderr)
    result = run_cli_here(server, "chat", "--usage", "--no-stream", "hi")
    assert result.stdout == "Hello there.\n"
    assert result.stderr.startswith("5 tokens in, 3 out; first token after ")


def test_json_prints_what_the_server_sent_and_nothing_it_did_not(server: Server) -> None:
    sent = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    }
    server.reply(Reply(200, sent))
    result = run_cli_here(server, "chat", "--json", "hi")
    assert result.returncode == 0
    assert json.loads(result.stdout) == sent
    assert "null" not in result.stdout


def test_while_retrying_the_command_says_so_and_the_error_names_the_host(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tl, "_pause", lambda seconds, cancel: None)  # the note, not the wait
    port = free_port()
    result = run_cli_here(
        server, "chat", "--max-retries", "1", "hi", env=cli_env(server, TOGETHER_BASE_URL=f"http://127.0.0.1:{port}/v1")
    )
    assert result.returncode == 1
    note, error = result.stderr.splitlines()
    assert re.fullmatch(rf"connection refused by 127\.0\.0\.1:{port}; retrying in 0\.\d s \(1/1\)", note)
    assert error.startswith("error: ") and f"127.0.0.1:{port}" in error


@pytest.mark.parametrize(
    "args",
    [
        ["--temperature", "nan"],
        ["--temperature", "inf"],
        ["--top-p", "much"],
        ["--model", ""],
        ["-s", " "],
        ["--max-retries", "-1"],
        ["-o", "stream", "false"],
        ["-o", "messages", "[]"],
    ],
)
def test_a_bad_option_value_is_a_usage_error_and_nothing_is_sent(server: Server, args: list[str]) -> None:
    result = run_cli_here(server, "chat", *args, "hi")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: together-lite") and "error:" in result.stderr.splitlines()[-1]
    assert server.requests == []


def test_a_warning_prints_as_one_line(server: Server) -> None:
    result = run_cli_here(
        server,
        "chat",
        "--max-retries",
        "0",
        "hi",
        env=cli_env(server, TOGETHER_BASE_URL=f"http://0.0.0.0:{free_port()}/v1"),
    )
    first = result.stderr.splitlines()[0]
    assert first == "warning: together_lite will send the API key unencrypted to 0.0.0.0 (base_url uses http://)."
    assert "sys.exit" not in result.stderr and "InsecureTransportWarning" not in result.stderr


def test_pip_install_puts_the_command_on_the_path_and_leaves_nothing_in_the_checkout(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("flit_core", reason="flit_core is not installed (CI installs it for this check)")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("together_lite.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(module_directory(), name), checkout / name)
    target = tmp_path / "installed"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-build-isolation",
        "--no-deps",
        "--target",
        str(target),
        str(checkout),
    ]
    subprocess.run(command, check=True, timeout=120, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert sorted(os.listdir(checkout)) == ["LICENSE", "README.md", "pyproject.toml", "together_lite.py"]
    script = (target / "bin" / "together-lite").read_text()
    assert "together_lite" in script and (target / "together_lite.py").exists()


# -- Logging ------------------------------------------------------------------


@pytest.mark.parametrize("level", ["info", " INFO "])
def test_together_log_info_prints_one_line_per_request(server: Server, level: str) -> None:
    server.reply(Reply(chunks=sse(chunk("ok")), headers={"x-request-id": "req-cli-7"}))
    result = run_cli_here(server, "chat", "hi", env=cli_env(server, TOGETHER_LOG=level))
    assert result.returncode == 0
    assert result.stdout == "ok\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert re.search(log_line_pattern(server, "/chat/completions", 200, "req-cli-7"), lines[0])
    assert "request body" not in result.stderr


def test_together_log_info_prints_the_retry_with_reason_and_delay(server: Server) -> None:
    server.reply(
        error_reply(500, "try again", **{"x-request-id": "req-first", "retry-after-ms": "30"}),
        Reply(200, COMPLETION_RESPONSE, headers={"x-request-id": "req-second"}),
    )
    result = run_cli_here(server, "complete", "--no-stream", "hi", env=cli_env(server, TOGETHER_LOG="info"))
    assert result.returncode == 0
    assert result.stdout == " return n\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 4
    assert re.search(log_line_pattern(server, "/completions", 500, "req-first"), lines[0])
    retry = re.search(r"INFO retrying in 0\.03s \(retry 1 of 5\) after HTTP 500 from 127.0.0.1:\d+$", lines[1])
    assert retry is not None  # the wait the server asked for
    assert re.fullmatch(r"HTTP 500 from 127.0.0.1:\d+; retrying in 0\.0 s \(1/5\)", lines[2])  # the command's own note
    assert re.search(log_line_pattern(server, "/completions", 200, "req-second"), lines[3])
    assert len(server.requests) == 2


def test_together_log_debug_adds_the_request_body(server: Server) -> None:
    server.reply(Reply(200, CHAT_RESPONSE, headers={"x-request-id": "req-dbg"}))
    result = run_cli_here(
        server, "chat", "--no-stream", "-s", "Be brief.", "hi", env=cli_env(server, TOGETHER_LOG="debug")
    )
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    body = re.search(r"DEBUG request body (.*)$", lines[0])
    assert body is not None
    assert json.loads(body.group(1)) == server.requests[0].json
    assert re.search(log_line_pattern(server, "/chat/completions", 200, "req-dbg"), lines[1])


@pytest.mark.parametrize("level", [None, "", "bogus"])
def test_without_together_log_nothing_is_logged(server: Server, level: str | None) -> None:
    server.reply(Reply(200, CHAT_RESPONSE, headers={"x-request-id": "req-quiet"}))
    result = run_cli_here(server, "chat", "--no-stream", "hi", env=cli_env(server, TOGETHER_LOG=level))
    assert result.returncode == 0
    assert result.stdout == "Hello there.\n"
    assert result.stderr == ""


# -- Logging: the together_lite logger in-process -----------------------------


def test_logger_at_info_receives_one_record_per_call(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="together_lite")
    server.reply(Reply(200, CHAT_RESPONSE, headers={"x-request-id": "req-in-1"}))
    with make_client(server, api_key=CLI_API_KEY, max_retries=0) as client:
        chat(client)
    [record] = logger_records(caplog)
    assert record.levelno == logging.INFO
    assert re.fullmatch(
        rf"POST {re.escape(server.url)}/chat/completions -> 200 in \d+\.\d{{3}}s \(request id req-in-1\)",
        record.getMessage(),
    )


def test_logger_at_debug_sees_body_and_retry_but_never_the_key(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="together_lite")
    server.reply(error_reply(503, "busy", **{"x-request-id": "req-a"}), Reply(200, CHAT_RESPONSE))
    delays: list[float] = []
    with make_client(server, api_key=CLI_API_KEY, max_retries=2) as client:
        record_delays(client, delays)
        chat(client, messages=[{"role": "user", "content": "secret-free prompt"}])
    records = logger_records(caplog)
    messages = [record.getMessage() for record in records]
    assert [record.levelno for record in records] == [logging.DEBUG, logging.INFO, logging.INFO, logging.INFO]
    assert messages[0].startswith("request body ")
    assert json.loads(messages[0][len("request body ") :]) == server.requests[0].json
    assert " -> 503 " in messages[1] and "req-a" in messages[1]
    assert (
        messages[2]
        == f"retrying in {delays[0]:.2f}s (retry 1 of 2) after HTTP 503 from 127.0.0.1:{server.server_address[1]}"
    )
    assert " -> 200 " in messages[3]
    everything = caplog.text + "".join(messages) + "".join(repr(record.args) for record in records)
    assert CLI_API_KEY not in everything
    assert "Bearer" not in everything
    assert "uthorization" not in everything


def test_logger_above_info_receives_nothing(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="together_lite")
    server.reply(error_reply(500, "busy"), Reply(200, CHAT_RESPONSE))
    with make_client(server, api_key=CLI_API_KEY, max_retries=1) as client:
        skip_sleeps(client)
        chat(client)
    assert len(server.requests) == 2
    assert logger_records(caplog) == []


def test_logger_receives_records_for_a_stream_too(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="together_lite")
    server.reply(Reply(chunks=sse(chunk("ok")), headers={"x-request-id": "req-s"}))
    with make_client(server, api_key=CLI_API_KEY, max_retries=0) as client:
        with chat(client, stream=True) as stream:
            assert [c.choices[0].delta.content for c in stream] == ["ok"]
    [record] = logger_records(caplog)
    assert " -> 200 " in record.getMessage() and "req-s" in record.getMessage()


# -- Multimodal helpers -------------------------------------------------------


@pytest.mark.parametrize("data, mime_type", CLI_SIGNATURES, ids=[m for _, m in CLI_SIGNATURES])
def test_file_to_data_url_sniffs_the_type_and_round_trips_the_bytes(
    tmp_path: pathlib.Path, data: bytes, mime_type: str
) -> None:
    path = tmp_path / "blob.bin"  # an extension that says nothing, so the bytes decide
    path.write_bytes(data)
    assert decoded_data_url(tl.file_to_data_url(str(path)), mime_type) == data
    assert decoded_data_url(tl.file_to_data_url(path), mime_type) == data  # a PathLike too


@pytest.mark.parametrize("data, mime_type", CLI_SIGNATURES, ids=[m for _, m in CLI_SIGNATURES])
def test_file_to_data_url_accepts_bytes(data: bytes, mime_type: str) -> None:
    assert decoded_data_url(tl.file_to_data_url(data), mime_type) == data
    assert decoded_data_url(tl.file_to_data_url(bytearray(data)), mime_type) == data


@pytest.mark.parametrize("name, mime_type", [("song.mp3", "audio/mpeg"), ("clip.MP4", "video/mp4")])
def test_file_to_data_url_falls_back_to_the_extension(tmp_path: pathlib.Path, name: str, mime_type: str) -> None:
    path = tmp_path / name
    path.write_bytes(CLI_UNKNOWN)
    assert decoded_data_url(tl.file_to_data_url(path), mime_type) == CLI_UNKNOWN


@pytest.mark.parametrize("name", ["mystery", "mystery.unknownext42"])
def test_file_of_unknown_type_is_a_value_error(tmp_path: pathlib.Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(CLI_UNKNOWN)
    with pytest.raises(ValueError, match="mime_type"):
        tl.file_to_data_url(path)
    with pytest.raises(ValueError):
        tl.image_part(str(path))


@pytest.mark.parametrize(
    "data", [CLI_UNKNOWN, b"", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(8)], ids=["text", "empty", "riff-wave"]
)
def test_bytes_of_unknown_type_are_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="mime_type"):
        tl.file_to_data_url(data)
    with pytest.raises(ValueError):
        tl.video_part(data)


def test_explicit_mime_type_wins_over_bytes_and_extension(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "picture.jpg"
    path.write_bytes(CLI_PNG)
    assert decoded_data_url(tl.file_to_data_url(path, mime_type="image/x-custom"), "image/x-custom") == CLI_PNG
    assert decoded_data_url(tl.file_to_data_url(CLI_UNKNOWN, mime_type="image/avif"), "image/avif") == CLI_UNKNOWN
    assert tl.image_part(CLI_UNKNOWN, mime_type="image/avif")["image_url"]["url"].startswith("data:image/avif;base64,")


def test_bytes_beat_a_misleading_extension(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "picture.jpg"
    path.write_bytes(CLI_PNG)
    assert decoded_data_url(tl.file_to_data_url(path), "image/png") == CLI_PNG


@pytest.mark.parametrize(
    "data, mime_type",
    [
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "image/avif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "image/heic"),
    ],
    ids=["avif", "heic"],
)
def test_avif_and_heic_images_are_not_sniffed_as_video(data: bytes, mime_type: str) -> None:
    assert tl.file_to_data_url(data).startswith(f"data:{mime_type};base64,")


@pytest.mark.parametrize(
    "url", ["https://x/y.jpg", "http://example.com/a.png?size=2", "data:image/png;base64,iVBORw0KGgo="]
)
def test_image_part_keeps_a_url(url: str) -> None:
    assert tl.image_part(url) == {"type": "image_url", "image_url": {"url": url}}
    assert tl.image_part(url, detail="high") == {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


def test_image_part_of_a_file_with_detail(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(CLI_PNG)
    url = "data:image/png;base64," + base64.b64encode(CLI_PNG).decode("ascii")
    assert tl.image_part(str(path), detail="low") == {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
    assert tl.image_part(path) == {"type": "image_url", "image_url": {"url": url}}
    assert tl.image_part(CLI_PNG) == {"type": "image_url", "image_url": {"url": url}}


def test_video_part_of_a_file_or_url(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(CLI_MP4)
    url = "data:video/mp4;base64," + base64.b64encode(CLI_MP4).decode("ascii")
    assert tl.video_part(str(path)) == {"type": "video_url", "video_url": {"url": url}}
    assert tl.video_part(CLI_MP4) == {"type": "video_url", "video_url": {"url": url}}
    assert tl.video_part("https://x/clip.mp4") == {"type": "video_url", "video_url": {"url": "https://x/clip.mp4"}}


@pytest.mark.parametrize("helper", [tl.file_to_data_url, tl.image_part, tl.video_part])
def test_missing_file_raises_file_not_found(tmp_path: pathlib.Path, helper: Any) -> None:
    with pytest.raises(FileNotFoundError):
        helper(str(tmp_path / "nowhere.png"))


def test_helper_parts_are_sent_unchanged_in_a_chat_request(server: Server, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(CLI_PNG)
    content = [{"type": "text", "text": "What is this?"}, tl.image_part(path, detail="auto"), tl.video_part(CLI_MP4)]
    with make_client(server, max_retries=0) as client:
        chat(client, messages=[{"role": "user", "content": content}])
    assert server.requests[0].json["messages"][0]["content"] == content


# -- Security -----------------------------------------------------------------
#
# The API key never leaks: not in a repr, an error, a log record or a process's output.


@pytest.mark.parametrize(
    "reply, args, status",
    [
        (stream_reply("ok"), ["chat", "hi"], 0),
        (error_reply(401, "Invalid API key provided."), ["chat", "hi"], 1),
        (Reply(chunks=sse(chunk("a"), {"error": {"message": "boom"}})), ["chat", "hi"], 1),
        (cut_mid_stream, ["chat", "hi"], 1),
    ],
    ids=["stream", "401", "stream-error", "cut"],
)
def test_api_key_never_appears_in_output_even_with_debug_logging(
    server: Server, reply: Any, args: list[str], status: int
) -> None:
    server.reply(reply)
    result = run_cli_here(server, *args, env=cli_env(server, TOGETHER_LOG="debug"))
    assert result.returncode == status
    assert server.requests[0].headers["authorization"] == f"Bearer {CLI_API_KEY}"  # the key was really used
    assert "request body" in result.stderr  # and debug logging was really on
    assert CLI_API_KEY not in result.stdout + result.stderr
    assert "Bearer" not in result.stderr
    assert "uthorization" not in result.stderr


def test_the_key_is_not_in_the_repr_or_str_of_either_client(server: Server) -> None:
    sync = tl.Together(api_key=CANARY, base_url=server.url, supplied_headers={"X-A": "b"})
    aclient = tl.AsyncTogether(api_key=CANARY, base_url=server.url)
    for client in (sync, aclient, sync.chat, sync.chat.completions, sync.completions, aclient.chat.completions):
        assert CANARY not in repr(client) and CANARY not in str(client)
        assert CANARY not in f"{client}" and CANARY not in f"{client!r}"
    assert "Together(base_url=" in repr(sync) and "AsyncTogether(base_url=" in repr(aclient)


@pytest.mark.parametrize("case", KEY_CASES)
def test_the_key_is_not_in_any_error_raised_by_a_call(server: Server, raw_server: Any, case: str) -> None:
    url = server.url
    if case == "401":
        server.reply(Reply(401, {"error": {"message": "Invalid API key provided", "type": "invalid_request_error"}}))
    elif case == "500-after-retry":
        server.reply(Reply(500, {"error": {"message": "boom"}}), Reply(500, {"error": {"message": "boom"}}))
    elif case == "timeout":
        url = stalling_url(raw_server)
    elif case == "refused":
        url = f"http://127.0.0.1:{free_port()}/v1"
    elif case == "reset":
        url = raw_server(send_then(b"", "reset")).url
    elif case == "stream-error":
        server.reply(Reply(chunks=[b'event: error\ndata: {"error": {"message": "overloaded"}}\n\n']))
    elif case == "html-200":
        server.reply(Reply(200, body=HTML_PAGE, content_type="text/html"))
    else:
        server.reply(Reply(307, headers={"Location": f"http://127.0.0.1:{free_port()}/v1/chat/completions"}))
    c = tl.Together(api_key=CANARY, base_url=url, max_retries=1, timeout=0.1)
    skip_sleeps(c)
    with pytest.raises(tl.TogetherException) as info:
        list(chat(c, stream=case == "stream-error"))
    assert_no_canary(info.value)


def test_the_key_is_not_in_an_async_error(server: Server) -> None:
    server.reply(Reply(401, {"error": {"message": "Invalid API key provided"}}))

    async def main() -> BaseException:
        async with tl.AsyncTogether(api_key=CANARY, base_url=server.url, max_retries=0) as aclient:
            try:
                await chat(aclient)
            except tl.TogetherException as exc:
                return exc
        raise AssertionError("no error")

    exc = asyncio.run(main())
    assert isinstance(exc, tl.AuthenticationError)
    assert_no_canary(exc)


@pytest.mark.parametrize(
    "make",
    [
        lambda url: tl.Together(api_key=CANARY + "\n", base_url=url),
        lambda url: tl.Together(api_key=CANARY + "\u20ac", base_url=url),
        lambda url: tl.AsyncTogether(api_key="\x00" + CANARY, base_url=url),
        lambda url: tl.Together(api_key="k", base_url=url.replace("http://", f"http://{CANARY}@")),
        lambda url: tl.Together(api_key="k", base_url=url.replace("http://", f"http://user:{CANARY}@")),
        lambda url: chat(
            tl.Together(api_key="k", base_url=url), extra_headers={"Authorization": f"Bearer {CANARY}\r\n"}
        ),
        lambda url: tl.Together(api_key="k", base_url=url, supplied_headers={"Authorization": f"Bearer {CANARY}\n"}),
    ],
    ids=["key-LF", "key-non-latin1", "async-key-NUL", "url-user", "url-password", "extra-header", "supplied-header"],
)
def test_the_key_is_not_in_a_bad_input_value_error(server: Server, make: Callable[[str], Any]) -> None:
    with pytest.raises(ValueError) as info:
        make(server.url)
    assert_no_canary(info.value)
    assert server.requests == []


def test_the_key_is_not_in_debug_logs(server: Server, raw_server: Any) -> None:
    logger = logging.getLogger("together_lite")
    handler = ListHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        c = tl.Together(api_key=CANARY, base_url=server.url, max_retries=2, timeout=1)
        skip_sleeps(c)
        server.reply(Reply(503, {"error": {"message": "busy"}}, headers={"x-request-id": "req-1"}))
        chat(c)  # one retry, then success
        server.reply(Reply(chunks=sse(chunk("a"), chunk(finish="stop"))))
        list(chat(c, stream=True))
        server.reply(Reply(401, {"error": {"message": "Invalid API key provided"}}))
        with pytest.raises(tl.AuthenticationError):
            chat(c)
        stalled = tl.Together(api_key=CANARY, base_url=stalling_url(raw_server), max_retries=1, timeout=0.1)
        skip_sleeps(stalled)
        with pytest.raises(tl.Timeout):
            chat(stalled)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    messages = [record.getMessage() for record in handler.records]
    assert any(m.startswith("request body") for m in messages)
    assert any(m.startswith("retrying") for m in messages)
    for record in handler.records:
        formatted = logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s").format(record)
        assert CANARY not in formatted and CANARY not in repr(vars(record))


def test_the_key_is_not_in_the_output_of_a_process_run_with_together_log_debug(server: Server) -> None:
    server.reply(
        Reply(503, {"error": {"message": "busy"}}),
        Reply(200, CHAT_RESPONSE),
        Reply(chunks=sse(chunk("a"), chunk(finish="stop"))),
        Reply(401, {"error": {"message": "Invalid API key provided"}}),
    )
    env = dict(os.environ, TOGETHER_LOG="debug", PYTHONPATH=os.path.dirname(os.path.abspath(tl.__file__)))
    result = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT, server.url, CANARY],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 3, stderr
    assert "together_lite DEBUG request body" in stderr and "retrying" in stderr and "-> 401" in stderr
    assert "Invalid API key provided" in stdout
    assert CANARY not in stdout and CANARY not in stderr
    assert [r.headers["authorization"] for r in server.requests] == [f"Bearer {CANARY}"] * 4


# -- Security: plain HTTP to a remote host ------------------------------------


@pytest.mark.parametrize("make", [tl.Together, tl.AsyncTogether], ids=["Together", "AsyncTogether"])
def test_plain_http_to_a_remote_host_warns_and_connects_nowhere(make: Any) -> None:
    with audit() as events, pytest.warns(tl.InsecureTransportWarning, match="example.invalid"):
        client = make(api_key="k", base_url="http://example.invalid/v1")
    assert issubclass(tl.InsecureTransportWarning, UserWarning)
    assert [e for e in events if e[0].startswith("socket.")] == []
    assert client.base_url == "http://example.invalid/v1/"


@pytest.mark.parametrize("make", [tl.Together, tl.AsyncTogether], ids=["Together", "AsyncTogether"])
def test_the_insecure_transport_warning_points_at_the_caller(make: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make(api_key="k", base_url="http://example.invalid/v1")
    # Other warnings (a finalizer that runs meanwhile) may be recorded too; only ours is checked.
    insecure = [w for w in caught if issubclass(w.category, tl.InsecureTransportWarning)]
    assert [w.filename for w in insecure] == [__file__]


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1/v1",
        "http://127.0.0.1:8080/v1",
        "http://127.1.2.3/v1",
        "http://localhost/v1",
        "http://LOCALHOST:8000/v1",
        "http://[::1]:8000/v1",
        "https://example.invalid/v1",
        "HTTPS://api.together.xyz/v1",
    ],
)
def test_no_insecure_transport_warning_for_loopback_or_https(base_url: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl.Together(api_key="k", base_url=base_url)
    assert [w for w in caught if issubclass(w.category, tl.InsecureTransportWarning)] == []


@pytest.mark.parametrize(
    "base_url",
    [
        "http://10.0.0.1/v1",
        "http://localhost.example.invalid/v1",
        "http://192.168.1.1:8000/v1",
        "http://[2001:db8::1]/v1",
    ],
)
def test_plain_http_to_any_other_host_warns(base_url: str) -> None:
    with pytest.warns(tl.InsecureTransportWarning):
        tl.Together(api_key="k", base_url=base_url)


@pytest.mark.parametrize("base_url", ["http://127.0.0.1.example.invalid/v1", "http://127.attacker.invalid/v1"])
def test_plain_http_to_a_dns_name_that_starts_with_127_warns(base_url: str) -> None:
    with pytest.warns(tl.InsecureTransportWarning):
        tl.Together(api_key="k", base_url=base_url)


# -- Leaks and soak -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind, calls",
    [
        ("kept alive", 200),
        ("streams read to the end", 60),
        ("error statuses", 60),
        ("server closes each connection", 60),
        ("streams broken off early", 60),
    ],
)
def test_open_file_descriptors_do_not_grow_over_many_calls(echo_server: Server, kind: str, calls: int) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd on this system")
    if kind == "error statuses":
        echo_server.default = Reply(400, {"error": {"message": "bad"}})
    elif kind == "server closes each connection":
        echo_server.default = close_after_answer("HTTP/1.1", length=True, connection_close=True)
    elif kind == "streams broken off early":
        echo_server.default = Reply(chunks=sse(*[chunk("x")] * 5, chunk(finish="stop")))

    def call(number: int) -> None:
        marker = f"call {number}"
        if kind == "error statuses":
            with pytest.raises(tl.BadRequestError):
                ask(client, marker)
        elif kind == "streams broken off early":
            break_off_stream(client, marker)
        else:
            assert ask(client, marker, stream=kind.startswith("streams")) == marker

    def settled(server: Server) -> bool:  # every connection but the kept-alive one is closed
        return server.closed >= server.accepted - 1

    with no_unclosed_sockets(), make_client(echo_server, max_retries=0) as client:
        for number in range(20):
            call(number)
        assert echo_server.wait_for(settled)
        before = open_fds()
        for number in range(calls):
            call(number)
        assert echo_server.wait_for(settled)
        gc.collect()
        after = open_fds()
    assert after <= before + 3


def test_many_calls_leak_no_file_descriptors_or_threads(soak_url: str) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    settle_threads()
    start_fds, start_threads = open_fds(), threading.active_count()
    client = tl.Together(api_key="k", base_url=soak_url, max_retries=0, timeout=5)
    soak_mix(client, 60, 40)
    warm_fds, warm_threads = open_fds(), threading.active_count()
    soak_mix(client, 300, 200)
    after_fds, after_threads = open_fds(), threading.active_count()
    assert after_fds <= warm_fds + 3
    assert after_threads <= warm_threads <= start_threads
    assert warm_fds <= start_fds + 8  # no more kept-alive connections than threads that used them
    client.close()
    assert open_fds() <= start_fds
    soak_call(client, 1)  # a closed client still works, and keeps nothing open
    assert open_fds() <= start_fds
