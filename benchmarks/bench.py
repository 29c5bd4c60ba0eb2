#!/usr/bin/env python3
"""Benchmark together_lite against the stdlib floor and peer SDKs.

Run from anywhere (stdlib only, Python 3.8+, POSIX, needs the `openssl` CLI):

    python3 benchmarks/bench.py                  # full run of rows 1-12, several minutes
    python3 benchmarks/bench.py --quick          # small sizes, for development
    python3 benchmarks/bench.py --rounds 9       # more turns, steadier medians on a busy machine
    python3 benchmarks/bench.py --only 3,6 --clients together_lite,httpclient
    python3 benchmarks/bench.py --rows 10-14 --rounds 3   # --rows is --only; "all" = 1-14
    python3 benchmarks/bench.py --json benchmarks/results.json   (git-ignored)

Peer SDKs are looked up in virtualenvs under $PEERS (default /tmp/peers, see
benchmarks/setup_peers.sh): together1 (together 1.6), together3 (together
3.x) and openai. A missing venv, or a together_lite that does not import yet,
is skipped with a note.

Everything happens on 127.0.0.1. A server process (started by this script)
serves fixed Together-style chat completion responses over HTTP/1.1
keep-alive: plain HTTP, HTTPS with a throwaway CA made by `openssl`, HTTPS
that sleeps 20 ms after accepting each new connection, and an asyncio server
that answers after 0.1 s; and, for rows 11-14, an asyncio server that holds
thousands of connections and sends each stream's chunks 50 ms apart, at times
fixed from the request's arrival (so a late wake-up does not push back the
rest). The server process asks for nice -10, so that a client's hundreds of
threads or other work on the machine do not starve it (they would not starve
a remote server), and the paced server reports how late its chunks went out;
a raw aiohttp ClientSession without a connection limit, from the together1
venv, checks that it keeps pace (rows 11 and 13, in the notes). Each client's
workload runs in its own subprocess (`bench.py --worker CLIENT WORKLOAD
key=value...`) under that client's interpreter, and reports its timings as
JSON. The clients take turns, one timing each per round (5 rounds unless
--rounds), each timing after one untimed warm-up call, and the median is
reported.
together_lite and the stdlib floors run under the interpreter running this
script, in a bare venv made from it (so that, like each peer in its own venv,
they start without whatever the base installation's site-packages preload).

Columns:
    together_lite      this project, imported from the repo root
    http.client floor  one kept-alive http.client connection, json.dumps of
                       the request and json.loads of the response (streams:
                       json.loads of each `data: ` line until [DONE])
    urlopen            urllib.request.urlopen, one connection per call
    together 1.6, together 3.x, openai   the peer SDKs

Rows:
    1. import   import of the client module in a fresh process (median of 7)
    2. cold     fresh process: import + construct the client + one chat call
    3. http     500 sequential non-streaming chat calls over HTTP, one client
    4. https    200 sequential chat calls over HTTPS (certificate verified)
    5. slow     50 sequential HTTPS calls; the server sleeps 20 ms before
                serving each new connection, standing in for the handshake
                cost of a real network (rewards keep-alive)
    6. stream   consume one 20,000-chunk chat stream (stream=True)
    7. async    256 concurrent async calls that take 0.1 s of server time
                each (floor: the 0.1 s itself; urlopen: the default executor)
    8. rss      peak RSS of the process that ran row 3
    9. async_rss   peak RSS of the process of row 7, when its burst is over
   10. async_warm  a second burst of 256 on row 7's client, right after the
                first: its threads and connections already exist
   11. astream  1,000 concurrent async streams (asyncio.gather of `await
                create(stream=True)` then `async for`), 40 chunks each, 50 ms
                apart (ideal: 2.0 s); a client that errors on any stream or
                misses any chunk is reported as an error, not timed. Floor:
                the 2.0 s itself; urlopen: not run
   12. astream_rss     peak RSS of the process of row 11
   13. astream_2x      row 11 with 2,000 streams (not run by default)
   14. astream_2x_rss  peak RSS of the process of row 13 (not run by default)
"""

from __future__ import annotations

# Only cheap modules at the top: workers time their own imports, so nothing
# a client needs may be imported before the clock starts.
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any, Awaitable, Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_MARKER = "BENCH_RESULT "

API_KEY = "bench-key"
MODEL = "m"
MESSAGES = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 16
CLIENT_TIMEOUT = 60.0
WORKER_TIMEOUT = 600.0

SLOW_ACCEPT_DELAY = 0.02  # row 5: server sleep per new connection
ASYNC_SERVER_DELAY = 0.1  # rows 7 and 10: server time per request
STREAM_WRITE_SIZE = 64 * 1024  # row 6: bytes per server write
PACED_INTERVAL = 0.05  # rows 11-14: the paced server's time between chunks
PACED_BACKLOG = 4096  # the paced server's listen backlog (the kernel caps it at somaxconn)
PACED_SERVER_FDS = 8192  # descriptors the server process asks for (2,000 streams and the rest)
# The server process asks for this nice value (it needs privilege to go below 0),
# so that a client's hundreds of threads or a busy machine do not starve it:
# a remote server would not share the client's CPUs.
SERVER_NICE = -10

FULL_SIZES = {
    "import_reps": 7,
    "cold_reps": 5,
    "runs": 5,
    "http_calls": 500,
    "https_calls": 200,
    "slow_calls": 50,
    "stream_chunks": 20000,
    "async_calls": 256,
    "astreams": 1000,
    "astreams_2x": 2000,
    "astream_chunks": 40,
}
QUICK_SIZES = dict(
    FULL_SIZES,
    import_reps=3,
    cold_reps=3,
    http_calls=50,
    https_calls=20,
    slow_calls=10,
    stream_chunks=2000,
    async_calls=64,
    astreams=100,
    astreams_2x=200,
)

CLIENTS = ["together_lite", "httpclient", "urllib", "together1", "together3", "openai"]
CLIENT_TITLES = {
    "together_lite": "together_lite",
    "httpclient": "http.client floor",
    "urllib": "urlopen",
    "together1": "together 1.6",
    "together3": "together 3.x",
    "openai": "openai",
}
PEER_VENVS = {"together1": "together1", "together3": "together3", "openai": "openai"}
PEER_DISTS = {"together1": "together", "together3": "together", "openai": "openai"}

# Not a table column: a bare aiohttp ClientSession without a connection limit,
# run from the together1 venv against the paced server of rows 11-14 to show
# that the server keeps its pace (numbers in the notes).
SERVER_CHECK = "aiohttp"
SERVER_CHECK_VENV = "together1"
CLIENT_TITLES[SERVER_CHECK] = "raw aiohttp (server check)"
PEER_DISTS[SERVER_CHECK] = "aiohttp"
IMPORT_STATEMENTS = {
    "together_lite": "from together_lite import Together",
    "httpclient": "import http.client",
    "urllib": "import urllib.request, ssl",
    "together1": "from together import Together",
    "together3": "from together import Together",
    "openai": "from openai import OpenAI",
}

ROWS = [
    "import",
    "cold",
    "http",
    "https",
    "slow",
    "stream",
    "async",
    "rss",
    "async_rss",
    "async_warm",
    "astream",
    "astream_rss",
    "astream_2x",
    "astream_2x_rss",
]
# Rows run when --rows is not given (`--rows all` runs every row).
DEFAULT_ROWS = [row for row in ROWS if row not in ("astream_2x", "astream_2x_rss")]
MIB_ROWS = ("rss", "async_rss", "astream_rss", "astream_2x_rss")
# Rows of the paced stream server, and the size key each one's stream count is under.
ASTREAM_ROWS = {
    "astream": "astreams",
    "astream_rss": "astreams",
    "astream_2x": "astreams_2x",
    "astream_2x_rss": "astreams_2x",
}


def row_label(row: str, sizes: dict[str, int]) -> str:
    """The table's first column for ROW, with its unit."""
    labels = {
        "import": "1. import (ms)",
        "cold": "2. cold start: import + client + 1 call (ms)",
        "http": "3. {http_calls} calls, HTTP (ms)",
        "https": "4. {https_calls} calls, HTTPS (ms)",
        "slow": "5. {slow_calls} calls, HTTPS, 20 ms per new connection (ms)",
        "stream": "6. {stream_chunks:,}-chunk stream (ms)",
        "async": "7. {async_calls} concurrent async calls, 0.1 s each (ms)",
        "rss": "8. peak RSS, {http_calls} HTTP calls (MiB)",
        "async_rss": "9. peak RSS, {async_calls} async calls in flight (MiB)",
        "async_warm": "10. {async_calls} concurrent async calls, second burst on a warm client (ms)",
        "astream": "11. {astreams:,} concurrent async streams, {astream_chunks} chunks {ms} ms apart"
        " (ms)",
        "astream_rss": "12. peak RSS, {astreams:,} async streams (MiB)",
        "astream_2x": "13. {astreams_2x:,} concurrent async streams, {astream_chunks} chunks"
        " {ms} ms apart (ms)",
        "astream_2x_rss": "14. peak RSS, {astreams_2x:,} async streams (MiB)",
    }
    return labels[row].format(ms=round(PACED_INTERVAL * 1000), **sizes)


# ---------------------------------------------------------------------------
# Clients: one adapter per library, all with the same small interface.
# ---------------------------------------------------------------------------


class Target:
    """Where a worker sends requests: a base URL and, for HTTPS, a CA file."""

    def __init__(self, url: str, cafile: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.cafile = cafile or None
        scheme, _, hostport = self.url.partition("://")
        host, _, port = hostport.partition(":")
        self.is_https = scheme == "https"
        self.host = host
        self.port = int(port)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying client context trusting only the bench CA (None for HTTP)."""
        if not self.is_https:
            return None
        import ssl

        return ssl.create_default_context(cafile=self.cafile)


def chat_payload(stream: bool = False, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
    if stream:
        payload["stream"] = True
    return payload


class SdkSession:
    """Adapts an SDK client (together_lite, together, openai) to the workloads."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def chat(self) -> None:
        response = self.client.chat.completions.create(**chat_payload())
        _ = response.choices[0].message.content

    def stream(self, chunks: int) -> int:
        received = 0
        for chunk in self.client.chat.completions.create(**chat_payload(True, chunks)):
            if chunk.choices and chunk.choices[0].delta.content is not None:
                received += 1
        return received

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


class HttpClientFloor:
    """The stdlib floor: one kept-alive http.client connection."""

    def __init__(self, target: Target) -> None:
        import http.client
        import json

        self.json = json
        self.conn: http.client.HTTPConnection
        if target.is_https:
            self.conn = http.client.HTTPSConnection(
                target.host, target.port, timeout=CLIENT_TIMEOUT, context=target.ssl_context()
            )
        else:
            self.conn = http.client.HTTPConnection(target.host, target.port, timeout=CLIENT_TIMEOUT)
        self.headers = {"Content-Type": "application/json", "Authorization": "Bearer " + API_KEY}

    def _post(self, payload: dict[str, Any]) -> Any:
        body = self.json.dumps(payload).encode()
        self.conn.request("POST", "/v1/chat/completions", body=body, headers=self.headers)
        response = self.conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return response

    def chat(self) -> None:
        data = self.json.loads(self._post(chat_payload()).read())
        _ = data["choices"][0]["message"]["content"]

    def stream(self, chunks: int) -> int:
        response = self._post(chat_payload(True, chunks))
        received = _read_sse(response, self.json.loads)
        response.read()  # the terminating chunk, so the connection stays usable
        return received

    def close(self) -> None:
        self.conn.close()


class UrllibFloor:
    """urllib.request.urlopen: a new connection for every call."""

    def __init__(self, target: Target) -> None:
        import json
        import urllib.request

        self.json = json
        self.request = urllib.request
        self.url = target.url + "/v1/chat/completions"
        self.context = target.ssl_context()
        self.headers = {"Content-Type": "application/json", "Authorization": "Bearer " + API_KEY}

    def _open(self, payload: dict[str, Any]) -> Any:
        request = self.request.Request(
            self.url, data=self.json.dumps(payload).encode(), headers=self.headers, method="POST"
        )
        return self.request.urlopen(request, timeout=CLIENT_TIMEOUT, context=self.context)

    def chat(self) -> None:
        with self._open(chat_payload()) as response:
            data = self.json.loads(response.read())
        _ = data["choices"][0]["message"]["content"]

    def stream(self, chunks: int) -> int:
        with self._open(chat_payload(True, chunks)) as response:
            return _read_sse(response, self.json.loads)

    def close(self) -> None:
        pass


def _read_sse(lines: Any, loads: Callable[[bytes], Any]) -> int:
    """Count the content deltas of an SSE chat stream, stopping at [DONE]."""
    received = 0
    for line in lines:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        if loads(data)["choices"][0]["delta"].get("content") is not None:
            received += 1
    return received


def open_together_lite(target: Target) -> SdkSession:
    sys.path.insert(0, REPO_ROOT)
    from together_lite import Together

    return SdkSession(
        Together(
            api_key=API_KEY,
            base_url=target.url + "/v1",
            max_retries=0,
            timeout=CLIENT_TIMEOUT,
            ssl_context=target.ssl_context(),
        )
    )


def open_together1(target: Target) -> SdkSession:
    if target.cafile:  # requests has no per-client CA option that together 1.x exposes
        os.environ["REQUESTS_CA_BUNDLE"] = target.cafile
    from together import Together

    return SdkSession(
        Together(
            api_key=API_KEY, base_url=target.url + "/v1", max_retries=0, timeout=CLIENT_TIMEOUT
        )
    )


def open_together3(target: Target) -> SdkSession:
    import together

    http_client = (
        together.DefaultHttpxClient(verify=target.ssl_context()) if target.is_https else None
    )
    # together 3.x puts /v1 into its request paths, so the base URL has none.
    return SdkSession(
        together.Together(
            api_key=API_KEY,
            base_url=target.url,
            max_retries=0,
            timeout=CLIENT_TIMEOUT,
            http_client=http_client,
        )
    )


def open_openai(target: Target) -> SdkSession:
    import openai

    http_client = (
        openai.DefaultHttpxClient(verify=target.ssl_context()) if target.is_https else None
    )
    return SdkSession(
        openai.OpenAI(
            api_key=API_KEY,
            base_url=target.url + "/v1",
            max_retries=0,
            timeout=CLIENT_TIMEOUT,
            http_client=http_client,
        )
    )


SYNC_OPENERS: dict[str, Callable[[Target], Any]] = {
    "together_lite": open_together_lite,
    "httpclient": HttpClientFloor,
    "urllib": UrllibFloor,
    "together1": open_together1,
    "together3": open_together3,
    "openai": open_openai,
}


def async_together_lite(target: Target) -> Any:
    sys.path.insert(0, REPO_ROOT)
    from together_lite import AsyncTogether

    return AsyncTogether(
        api_key=API_KEY, base_url=target.url + "/v1", max_retries=0, timeout=CLIENT_TIMEOUT
    )


def async_together1(target: Target) -> Any:
    from together import AsyncTogether

    return AsyncTogether(
        api_key=API_KEY, base_url=target.url + "/v1", max_retries=0, timeout=CLIENT_TIMEOUT
    )


def async_together3(target: Target) -> Any:
    from together import AsyncTogether

    return AsyncTogether(
        api_key=API_KEY, base_url=target.url, max_retries=0, timeout=CLIENT_TIMEOUT
    )


def async_openai(target: Target) -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        api_key=API_KEY, base_url=target.url + "/v1", max_retries=0, timeout=CLIENT_TIMEOUT
    )


ASYNC_OPENERS: dict[str, Callable[[Target], Any]] = {
    "together_lite": async_together_lite,
    "together1": async_together1,
    "together3": async_together3,
    "openai": async_openai,
}


# ---------------------------------------------------------------------------
# Worker side: one workload of one client, timings printed as JSON.
# ---------------------------------------------------------------------------


def peak_rss_kib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform == "darwin" else float(peak)  # bytes on macOS


def cpu_seconds() -> float:
    """User and system CPU time of this process so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_cold_start(client: str, target: Target) -> float:
    """Seconds from before the import to after the first chat call."""
    start = time.perf_counter()
    session = SYNC_OPENERS[client](target)
    session.chat()
    elapsed = time.perf_counter() - start
    session.close()
    return elapsed


def time_sequential(client: str, target: Target, calls: int, runs: int) -> list[float]:
    """RUNS timings of CALLS sequential chat calls, each on a fresh warmed-up client."""
    times = []
    for _ in range(runs):
        session = SYNC_OPENERS[client](target)
        session.chat()  # warm-up: imports, connection
        start = time.perf_counter()
        for _ in range(calls):
            session.chat()
        times.append(time.perf_counter() - start)
        session.close()
    return times


def time_stream(client: str, target: Target, chunks: int, runs: int) -> list[float]:
    """RUNS timings of consuming one CHUNKS-chunk stream."""
    times = []
    for _ in range(runs):
        session = SYNC_OPENERS[client](target)
        session.stream(MAX_TOKENS)  # warm-up: a short stream
        start = time.perf_counter()
        received = session.stream(chunks)
        times.append(time.perf_counter() - start)
        session.close()
        if received != chunks:
            raise RuntimeError(f"received {received} of {chunks} chunks")
    return times


def time_async(
    client: str, target: Target, calls: int, runs: int
) -> tuple[list[float], list[float], float]:
    """RUNS timings of a first and a second burst of CALLS concurrent async chat
    calls on one client, and the peak RSS (KiB) when the first burst is over."""
    import asyncio

    run_once = _async_urllib_run if client == "urllib" else _async_sdk_run
    first, second, rss_kib = [], [], 0.0
    for _ in range(runs):
        (first_burst, rss_kib), (second_burst, _) = asyncio.run(run_once(client, target, calls))
        first.append(first_burst)
        second.append(second_burst)
    return first, second, rss_kib


async def _bursts(call: Callable[[], Awaitable[Any]], calls: int) -> list[tuple[float, float]]:
    """Two bursts of CALLS concurrent CALL()s, one after the other: (seconds, peak RSS KiB) each."""
    import asyncio

    bursts = []
    for _ in range(2):
        start = time.perf_counter()
        await asyncio.gather(*(call() for _ in range(calls)))
        bursts.append((time.perf_counter() - start, peak_rss_kib()))
    return bursts


async def _async_sdk_run(client: str, target: Target, calls: int) -> list[tuple[float, float]]:
    sdk = ASYNC_OPENERS[client](target)

    async def one_call() -> None:
        response = await sdk.chat.completions.create(**chat_payload())
        _ = response.choices[0].message.content

    try:
        await one_call()  # warm-up
        return await _bursts(one_call, calls)
    finally:
        await _close_async(sdk)


async def _async_urllib_run(client: str, target: Target, calls: int) -> list[tuple[float, float]]:
    import asyncio

    session = UrllibFloor(target)
    loop = asyncio.get_running_loop()

    def one_call() -> Awaitable[None]:
        return loop.run_in_executor(None, session.chat)  # the default executor

    await one_call()  # warm-up
    return await _bursts(one_call, calls)


async def _close_async(client: Any) -> None:
    """CLIENT.close(), awaited if it is a coroutine function."""
    import asyncio

    close = getattr(client, "close", None)
    if close is not None:
        result = close()
        if asyncio.iscoroutine(result):
            await result


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files to WANTED (at most the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def time_async_streams(
    client: str, target: Target, streams: int, chunks: int, runs: int
) -> list[float]:
    """RUNS timings of STREAMS concurrent async streams of CHUNKS chunks each."""
    import asyncio

    raise_fd_limit(2 * streams + 1024)
    return [asyncio.run(_async_streams_run(client, target, streams, chunks)) for _ in range(runs)]


async def _async_streams_run(client: str, target: Target, streams: int, chunks: int) -> float:
    import asyncio

    opener = RawAiohttp if client == SERVER_CHECK else ASYNC_OPENERS[client]
    sdk = opener(target)

    async def one_stream(wanted: int) -> int:
        stream = await sdk.chat.completions.create(**chat_payload(True, wanted))
        received = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content is not None:
                received += 1
        return received

    try:
        await one_stream(1)  # warm-up: imports, and one connection
        start = time.perf_counter()
        counts = await asyncio.gather(
            *(one_stream(chunks) for _ in range(streams)), return_exceptions=True
        )
        elapsed = time.perf_counter() - start
    finally:
        await _close_async(sdk)
    check_stream_counts(counts, chunks)
    return elapsed


def check_stream_counts(counts: list[int | BaseException], chunks: int) -> None:
    """Raise if any stream failed or got other than CHUNKS chunks."""
    errors = [c for c in counts if isinstance(c, BaseException)]
    short = [c for c in counts if not isinstance(c, BaseException) and c != chunks]
    if not errors and not short:
        return
    problems = []
    if errors:
        first = errors[0]
        problems.append(f"{len(errors)} failed (first: {type(first).__name__}: {first})")
    if short:
        problems.append(f"{len(short)} got other than {chunks} chunks (e.g. {short[0]})")
    raise RuntimeError(f"of {len(counts)} streams, " + "; ".join(problems))


class RawAiohttp:
    """The server check: a bare aiohttp ClientSession without a connection
    limit, shaped like an SDK (``await chat.completions.create(stream=True)``,
    then ``async for chunk``) but doing as little as it can: it counts the
    `data: ` lines before [DONE] instead of decoding them."""

    def __init__(self, target: Target) -> None:
        self.url = target.url + "/v1/chat/completions"
        self.session: Any = None
        self.chat = self
        self.completions = self

    async def create(self, **payload: Any) -> Any:
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT),
                headers={"Authorization": "Bearer " + API_KEY},
            )
        response = await self.session.post(self.url, json=payload)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return self._chunks(response)

    async def _chunks(self, response: Any) -> Any:
        from types import SimpleNamespace

        chunk = SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=" tok"))])
        async with response:
            async for line in response.content:
                if line.startswith(b"data: [DONE]"):
                    break
                if line.startswith(b"data: "):
                    yield chunk

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def worker_main(argv: list[str]) -> None:
    """`--worker CLIENT WORKLOAD url=... [cafile=...] [count=N] [runs=N] [chunks=N]`.

    Arguments are plain strings (not JSON) so that nothing a client needs is
    imported before a cold start's clock starts.
    """
    client, workload = argv[0], argv[1]
    params = dict(arg.split("=", 1) for arg in argv[2:])
    target = Target(params["url"], params.get("cafile"))
    count, runs = int(params.get("count", "1")), int(params.get("runs", "1"))
    result: dict[str, Any] = {}
    if workload == "cold":
        result["samples"] = [time_cold_start(client, target)]
    elif workload == "seq":
        result["samples"] = time_sequential(client, target, count, runs)
        result["rss_kib"] = peak_rss_kib()
    elif workload == "stream":
        result["samples"] = time_stream(client, target, count, runs)
    elif workload == "async":
        result["samples"], result["warm_samples"], result["rss_kib"] = time_async(
            client, target, count, runs
        )
    elif workload == "astream":
        chunks = int(params["chunks"])
        result["samples"] = time_async_streams(client, target, count, chunks, runs)
        result["rss_kib"] = peak_rss_kib()
        result["cpu_s"] = cpu_seconds()
    else:
        raise SystemExit("unknown workload " + workload)
    import json

    print(RESULT_MARKER + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# Server side: runs in its own process (`bench.py --serve TLS_DIR`).
# ---------------------------------------------------------------------------

CHAT_RESPONSE = {
    "id": "8f5a9c1e2b3d4f60-SJC",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20},
}


def stream_body(chunks: int) -> bytes:
    """A Together-style SSE chat stream of CHUNKS content chunks, then [DONE]."""
    import json

    def event(finish_reason: str | None, usage: dict[str, int] | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": "8f5a9c1e2b3d4f61-SJC",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": " tok"},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    usage = {"prompt_tokens": 11, "completion_tokens": chunks, "total_tokens": chunks + 11}
    middle = event(None, None)
    return middle * (chunks - 1) + event("stop", usage) + b"data: [DONE]\n\n"


def chunked_pieces(body: bytes, size: int = STREAM_WRITE_SIZE) -> list[bytes]:
    """BODY split into writes of SIZE bytes, framed for Transfer-Encoding: chunked."""
    pieces = []
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        pieces.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    pieces.append(b"0\r\n\r\n")
    return pieces


def make_http_server(tls: ssl.SSLContext | None, accept_delay: float) -> Any:
    """A threaded HTTP/1.1 keep-alive server on 127.0.0.1 (port 0 = any)."""
    import json
    import socketserver
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    chat_body = json.dumps(CHAT_RESPONSE).encode()
    stream_cache: dict[int, list[bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        wbufsize = STREAM_WRITE_SIZE  # headers and a small body leave in one send

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if not self.path.endswith("/chat/completions"):
                self._send_json(404, b'{"error":{"message":"not found"}}')
            elif request.get("stream"):
                self._send_stream(int(request.get("max_tokens") or MAX_TOKENS))
            else:
                self._send_json(200, chat_body)

        def _send_json(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_stream(self, chunks: int) -> None:
            if chunks not in stream_cache:
                stream_cache[chunks] = chunked_pieces(stream_body(chunks))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in stream_cache[chunks]:
                self.wfile.write(piece)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

        def finish_request(self, request: Any, client_address: Any) -> None:
            # Runs on the connection's own thread, so the delay and the TLS
            # handshake never hold up other connections.
            if accept_delay:
                time.sleep(accept_delay)
            if tls is None:
                socketserver.TCPServer.finish_request(self, request, client_address)
                return
            try:
                conn = tls.wrap_socket(request, server_side=True)
            except OSError:
                return
            try:
                socketserver.TCPServer.finish_request(self, conn, client_address)
            finally:
                conn.close()

    return Server(("127.0.0.1", 0), Handler)


async def _handle_async_connection(reader: Any, writer: Any, response: bytes, delay: float) -> None:
    """Minimal HTTP/1.1 keep-alive loop: read a request, sleep DELAY, answer."""
    import asyncio

    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                await _read_chunked(reader)
            else:
                await reader.readexactly(int(headers.get("content-length") or 0))
            await asyncio.sleep(delay)
            writer.write(response)
            await writer.drain()
            if headers.get("connection", "").lower() == "close" or lines[0].endswith("HTTP/1.0"):
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _read_chunked(reader: Any) -> None:
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def _serve_forever(ports: dict[str, int]) -> None:
    import asyncio
    import json

    body = json.dumps(CHAT_RESPONSE).encode()
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(body)
    ) + body

    async def handle(reader: Any, writer: Any) -> None:
        await _handle_async_connection(reader, writer, response, ASYNC_SERVER_DELAY)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    ports["async"] = server.sockets[0].getsockname()[1]
    paced = await make_paced_server()
    ports["paced"] = paced.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


class PacedStats:
    """How well the paced server kept its schedule since the last /stats request."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.writes = 0
        self.late_total = 0.0
        self.late_max = 0.0
        self.streams = 0
        self.open = 0
        self.open_max = 0
        self.first_start = self.last_start = 0.0  # of streams of more than one chunk
        self.last_end = 0.0  # when the last chunk of such a stream went out
        self.cpu_start = time.process_time()

    def stream_started(self, now: float, chunks: int) -> None:
        self.streams += 1
        if chunks > 1:
            self.first_start = self.first_start or now
            self.last_start = now

    def report(self) -> dict[str, float]:
        return {
            "streams": self.streams,
            "writes": self.writes,
            "late_max_ms": self.late_max * 1000.0,
            "late_mean_ms": self.late_total * 1000.0 / max(1, self.writes),
            "open_max": self.open_max,
            "start_spread_ms": (self.last_start - self.first_start) * 1000.0,
            "span_ms": max(0.0, self.last_end - self.first_start) * 1000.0,
            "cpu_s": time.process_time() - self.cpu_start,
        }


async def make_paced_server() -> Any:
    """The server of rows 11-14: an asyncio HTTP/1.1 keep-alive server whose
    chat streams send one chunk every PACED_INTERVAL, as a model would. Each
    stream's chunks are due at fixed times from its request's arrival, so a
    late wake-up does not push back the rest. `GET /stats` answers (and resets)
    how late its writes were, and how much CPU time the process used."""
    import asyncio
    import json

    loop = asyncio.get_running_loop()
    stats = PacedStats()
    chat_body = json.dumps(CHAT_RESPONSE).encode()
    pieces_cache: dict[int, list[bytes]] = {}

    def stream_pieces(chunks: int) -> list[bytes]:
        """One write per chunk (an HTTP chunk each); [DONE] and the end go with the last."""
        if chunks not in pieces_cache:
            events = [e + b"\n\n" for e in stream_body(chunks).split(b"\n\n") if e]
            events[-2:] = [events[-2] + events[-1]]
            pieces = [b"%x\r\n" % len(e) + e + b"\r\n" for e in events]
            pieces[-1] += b"0\r\n\r\n"
            pieces_cache[chunks] = pieces
        return pieces_cache[chunks]

    class Paced(asyncio.Protocol):
        def __init__(self) -> None:
            self.transport: Any = None
            self.buffer = b""
            self.busy = False  # a stream is being sent; later requests wait in the buffer

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            stats.open += 1
            stats.open_max = max(stats.open_max, stats.open)

        def connection_lost(self, exc: Exception | None) -> None:
            stats.open -= 1

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            self.next_request()

        def next_request(self) -> None:
            while not self.busy and not self.transport.is_closing():
                request = self.take_request()
                if request is None:
                    return
                self.answer(*request)

        def take_request(self) -> tuple[str, dict[str, str], bytes] | None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.transport.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()
                return None
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return None
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            return lines[0], headers, body

        def answer(self, request_line: str, headers: dict[str, str], body: bytes) -> None:
            path = request_line.split(" ")[1] if " " in request_line else ""
            if path == "/stats":
                self.send_json(json.dumps(stats.report()).encode())
                stats.reset()
                return
            request = json.loads(body or b"{}")
            if not request.get("stream"):
                self.send_json(chat_body)
                return
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            self.busy = True
            pieces = stream_pieces(int(request.get("max_tokens") or MAX_TOKENS))
            now = loop.time()
            stats.stream_started(now, len(pieces))
            due = now + PACED_INTERVAL
            loop.call_at(due, self.send_piece, pieces, 0, due)

        def send_json(self, body: bytes) -> None:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )

        def send_piece(self, pieces: list[bytes], index: int, due: float) -> None:
            if self.transport.is_closing():
                return
            late = loop.time() - due
            stats.writes += 1
            stats.late_total += late
            stats.late_max = max(stats.late_max, late)
            self.transport.write(pieces[index])
            if index + 1 < len(pieces):
                due += PACED_INTERVAL
                loop.call_at(due, self.send_piece, pieces, index + 1, due)
            else:
                if len(pieces) > 1:
                    stats.last_end = loop.time()
                self.busy = False
                self.next_request()

    return await loop.create_server(Paced, "127.0.0.1", 0, backlog=PACED_BACKLOG)


def serve_main(tls_dir: str) -> None:
    """`--serve TLS_DIR`: start all servers, print their ports as JSON, serve
    until standard input closes."""
    import asyncio
    import ssl
    import threading

    raise_fd_limit(PACED_SERVER_FDS)
    try:  # before any thread starts: Linux keeps a nice value per thread, and new ones inherit it
        os.setpriority(os.PRIO_PROCESS, 0, SERVER_NICE)
    except OSError:
        pass  # unprivileged: the orchestrator notes it
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(os.path.join(tls_dir, "server.pem"), os.path.join(tls_dir, "server.key"))
    servers = {
        "http": make_http_server(None, 0.0),
        "https": make_http_server(tls, 0.0),
        "slow": make_http_server(tls, SLOW_ACCEPT_DELAY),
    }
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def exit_on_eof() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_on_eof, daemon=True).start()
    ports = {name: server.server_address[1] for name, server in servers.items()}
    asyncio.run(_serve_forever(ports))


def make_tls_files(directory: str) -> str:
    """A throwaway CA and a server certificate for 127.0.0.1; returns the CA path."""
    import subprocess

    def openssl(command: str, *extra: str) -> None:
        args = ["openssl", *command.split(), *extra]
        subprocess.run(args, cwd=directory, check=True, capture_output=True)

    with open(os.path.join(directory, "server.ext"), "w") as ext:
        ext.write(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
    new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    openssl(
        f"req -x509 {new_key} -keyout ca.key -out ca.pem -days 2"
        " -addext basicConstraints=critical,CA:TRUE"
        " -addext keyUsage=critical,keyCertSign,cRLSign",
        "-subj",
        "/CN=together_lite bench CA",
    )
    openssl(f"req {new_key} -keyout server.key -out server.csr -subj /CN=127.0.0.1")
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
        " -out server.pem -days 2 -extfile server.ext"
    )
    return os.path.join(directory, "ca.pem")


# ---------------------------------------------------------------------------
# Orchestration: start the server, run every (row, client), print the table.
# ---------------------------------------------------------------------------


def median(samples: list[float]) -> float:
    import statistics

    return statistics.median(samples)


def worker_env(pycache: str) -> dict[str, str]:
    """The environment for client processes: no proxies, no banner, no
    base-URL overrides, and bytecode cached (as a user's would be) but outside
    the repository."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    for name in (
        "TOGETHER_BASE_URL",
        "OPENAI_BASE_URL",
        "REQUESTS_CA_BUNDLE",
        "PYTHONDONTWRITEBYTECODE",
    ):
        env.pop(name, None)
    env.update(
        TOGETHER_NO_BANNER="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONPYCACHEPREFIX=pycache,
    )
    return env


class Runner:
    """Runs measurements in subprocesses and collects the results."""

    def __init__(
        self,
        interpreters: dict[str, str],
        sizes: dict[str, int],
        ports: dict[str, int],
        cafile: str,
        env: dict[str, str],
    ) -> None:
        self.interpreters = interpreters
        self.sizes = sizes
        self.ports = ports
        self.cafile = cafile
        self.env = env
        self.paced_stats: dict[str, list[dict[str, Any]]] = {}  # row -> one report per run
        self.progress: list[str] = []  # lines for stderr after the current measurement's own

    def url(self, server: str) -> str:
        scheme = "https" if server in ("https", "slow") else "http"
        return f"{scheme}://127.0.0.1:{self.ports[server]}"

    def _run(self, client: str, args: list[str]) -> str:
        import subprocess

        proc = subprocess.run(
            [self.interpreters[client], *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise RuntimeError(f"exit {proc.returncode}: {tail}")
        return proc.stdout

    def worker(
        self, client: str, workload: str, server: str, count: int = 1, runs: int = 1, **extra: int
    ) -> dict[str, Any]:
        import json

        args = [
            os.path.abspath(__file__),
            "--worker",
            client,
            workload,
            "url=" + self.url(server),
            f"count={count}",
            f"runs={runs}",
        ]
        args += [f"{name}={value}" for name, value in extra.items()]
        if server in ("https", "slow"):
            args.append("cafile=" + self.cafile)
        for line in self._run(client, args).splitlines():
            if line.startswith(RESULT_MARKER):
                result: dict[str, Any] = json.loads(line[len(RESULT_MARKER) :])
                return result
        raise RuntimeError("worker printed no result")

    def import_time(self, client: str) -> list[float]:
        snippet = (
            "import sys, time\n"
            f"sys.path.insert(0, {REPO_ROOT!r})\n"
            "t0 = time.perf_counter()\n"
            f"{IMPORT_STATEMENTS[client]}\n"
            "print(time.perf_counter() - t0)\n"
        )
        self._run(client, ["-c", snippet])  # warm-up: bytecode and file caches
        return [float(self._run(client, ["-c", snippet])) for _ in range(self.sizes["import_reps"])]

    def cold_start(self, client: str) -> list[float]:
        self.worker(client, "cold", "http")  # warm-up
        return [
            self.worker(client, "cold", "http")["samples"][0]
            for _ in range(self.sizes["cold_reps"])
        ]

    def paced_server_stats(self) -> dict[str, float]:
        """The paced server's schedule report since the last call (which resets it)."""
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.ports["paced"], timeout=10)
        try:
            conn.request("GET", "/stats")
            report: dict[str, float] = json.loads(conn.getresponse().read())
            return report
        finally:
            conn.close()

    def async_streams(self, row: str, client: str) -> dict[str, Any]:
        """One worker's run of ROW's concurrent streams, with the server's report on it."""
        s = self.sizes
        streams, chunks = s[ASTREAM_ROWS[row]], s["astream_chunks"]
        self.paced_server_stats()  # reset
        try:
            return self.worker(client, "astream", "paced", streams, s["runs"], chunks=chunks)
        finally:
            report = self.paced_server_stats()
            self.progress.append(
                "    paced server: {streams:.0f} streams started over {start_spread_ms:.0f} ms"
                " and ended {span_ms:.0f} ms after the first began; chunks late"
                " {late_mean_ms:.1f} ms on average, {late_max_ms:.1f} ms at most;"
                " {cpu_s:.2f} s of CPU".format(**report)
            )
            self.paced_stats.setdefault(row.replace("_rss", ""), []).append(
                dict(report, client=client)
            )

    def measure_async_streams(
        self, row: str, client: str, cache: dict[tuple[str, str], Any]
    ) -> dict[str, Any]:
        """Rows 11-14: wall time of the concurrent streams, or the peak RSS of that process."""
        rss_row = row.endswith("_rss")
        if client == "httpclient":  # the floor: the server's own pacing
            if rss_row:
                return {"median": None, "samples": []}
            ideal = self.sizes["astream_chunks"] * PACED_INTERVAL
            return {"median": ideal, "samples": [], "note": "server pacing"}
        if client == "urllib":  # a few executor threads for thousands of 2 s streams: minutes
            return {"median": None, "samples": []}
        key = (client, ASTREAM_ROWS[row])
        if key not in cache:
            try:
                cache[key] = self.async_streams(row, client)
            except Exception as exc:  # remembered, so the RSS row does not run it again
                cache[key] = exc
        result = cache[key]
        if isinstance(result, Exception):
            raise result
        if rss_row:
            return {"median": result["rss_kib"] / 1024.0, "samples": [result["rss_kib"] / 1024.0]}
        return {"median": median(result["samples"]), "samples": result["samples"]}

    def measure(self, row: str, client: str, cache: dict[tuple[str, str], Any]) -> dict[str, Any]:
        """Median and samples of ROW for CLIENT (seconds, or MiB for rss)."""
        s = self.sizes
        runs = s["runs"]
        if row in ASTREAM_ROWS:
            return self.measure_async_streams(row, client, cache)
        if row == "import":
            samples = self.import_time(client)
        elif row == "cold":
            samples = self.cold_start(client)
        elif row in ("http", "rss"):
            if (client, "http") not in cache:
                cache[client, "http"] = self.worker(client, "seq", "http", s["http_calls"], runs)
            result = cache[client, "http"]
            if row == "rss":
                return {
                    "median": result["rss_kib"] / 1024.0,
                    "samples": [result["rss_kib"] / 1024.0],
                }
            samples = result["samples"]
        elif row == "https":
            samples = self.worker(client, "seq", "https", s["https_calls"], runs)["samples"]
        elif row == "slow":
            samples = self.worker(client, "seq", "slow", s["slow_calls"], runs)["samples"]
        elif row == "stream":
            samples = self.worker(client, "stream", "http", s["stream_chunks"], runs)["samples"]
        elif row in ("async", "async_rss", "async_warm"):
            if client == "httpclient":
                if row == "async_rss":
                    return {"median": None, "samples": []}
                return {"median": ASYNC_SERVER_DELAY, "samples": [], "note": "server time"}
            if (client, "async") not in cache:
                cache[client, "async"] = self.worker(client, "async", "async", s["async_calls"], runs)
            result = cache[client, "async"]
            if row == "async_rss":
                return {"median": result["rss_kib"] / 1024.0, "samples": [result["rss_kib"] / 1024.0]}
            samples = result["warm_samples" if row == "async_warm" else "samples"]
        else:
            raise ValueError(row)
        return {"median": median(samples), "samples": samples}


def make_bare_venv(directory: str) -> str:
    """A venv of this interpreter with nothing installed, so that together_lite
    and the stdlib floors, like each peer in its own venv, run without
    whatever the base installation's site-packages would preload."""
    import subprocess

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", directory], check=True)
    return os.path.join(directory, "bin", "python")


def locate_clients(
    clients: list[str], peers: str, own_python: str, env: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The interpreter for each usable client, and notes on skipped ones."""
    import subprocess

    interpreters, notes = {}, []
    for client in clients:
        if client in PEER_VENVS:
            python = os.path.join(peers, PEER_VENVS[client], "bin", "python")
            if not os.path.exists(python):
                venv = os.path.join(peers, PEER_VENVS[client])
                notes.append(f"{CLIENT_TITLES[client]} skipped: no venv at {venv}")
                continue
        else:
            python = own_python
        if client == "together_lite":
            check = f"import sys; sys.path.insert(0, {REPO_ROOT!r}); import together_lite"
            proc = subprocess.run(
                [python, "-c", check], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            if proc.returncode != 0:
                last = (proc.stdout.decode(errors="replace").strip().splitlines() or ["?"])[-1]
                notes.append(f"together_lite skipped: does not import ({last})")
                continue
        interpreters[client] = python
    return interpreters, notes


def python_output(python: str, code: str) -> str:
    """What PYTHON prints when running CODE (empty on failure)."""
    import subprocess

    run = subprocess.run([python, "-c", code], stdout=subprocess.PIPE, text=True)
    return run.stdout.strip()


def describe_interpreters(interpreters: dict[str, str]) -> list[str]:
    """One line per client: its Python version, interpreter and package version."""
    lines = []
    for client, python in interpreters.items():
        version = python_output(python, "import platform; print(platform.python_version())")
        line = f"- {CLIENT_TITLES[client]}: Python {version} ({python})"
        if client in PEER_DISTS:
            dist = PEER_DISTS[client]
            code = f"from importlib.metadata import version; print(version({dist!r}))"
            line += f", {dist} {python_output(python, code)}"
        lines.append(line)
    return lines


def start_server(tls_dir: str) -> tuple[Any, dict[str, int]]:
    import json
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", tls_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("server process failed to start")
    return proc, json.loads(line)


def stop_server(proc: Any) -> None:
    proc.stdin.close()  # the server exits on end of input
    try:
        proc.wait(timeout=5)
    except Exception:
        proc.kill()
        proc.wait()


def format_value(row: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if row not in MIB_ROWS:
        value *= 1000.0  # seconds -> ms
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def render_table(rows: list[str], results: dict[str, dict[str, Any]], sizes: dict[str, int]) -> str:
    header = ["workload"] + [CLIENT_TITLES[c] for c in CLIENTS]
    header += ["together_lite / floor", "together_lite / together 1.6"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        cells = [row_label(row, sizes)]
        medians: dict[str, float | None] = {}
        for client in CLIENTS:
            entry = results.get(row, {}).get(client)
            if entry is None:
                medians[client] = None
                cells.append("n/a")
            elif "error" in entry:
                medians[client] = None
                cells.append("error")
            else:
                medians[client] = entry["median"]
                mark = " *" if entry.get("note") else ""
                cells.append(format_value(row, entry["median"]) + mark)
        lite = medians["together_lite"]
        cells.append(format_ratio(lite, medians["httpclient"]))
        cells.append(format_ratio(lite, medians["together1"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_selection(
    text: str | None, choices: list[str], what: str, default: list[str] | None = None
) -> list[str]:
    """Comma-separated names (or 1-based numbers) from CHOICES, in CHOICES order;
    DEFAULT (or all of CHOICES) if TEXT is empty, and all of them for "all"."""
    if not text:
        return list(choices if default is None else default)
    if text.strip() == "all":
        return list(choices)
    picked = set()
    items = []
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        if dash and first.isdigit() and last.isdigit():  # a range of numbers: 10-14
            items += [str(number) for number in range(int(first), int(last) + 1)]
        else:
            items.append(item)
    for item in items:
        item = item.strip()
        if item.isdigit() and 1 <= int(item) <= len(choices):
            item = choices[int(item) - 1]
        if item not in choices:
            raise SystemExit(
                "unknown {} {!r} (choose from {})".format(what, item, ", ".join(choices))
            )
        picked.add(item)
    return [c for c in choices if c in picked]


def parse_args(argv: list[str] | None) -> Any:
    import argparse

    parser = argparse.ArgumentParser(description="Benchmark together_lite on 127.0.0.1.")
    parser.add_argument("--json", metavar="PATH", help="save raw numbers to PATH")
    parser.add_argument(
        "--only",
        "--rows",
        dest="only",
        metavar="ROWS",
        help="rows to run, by number or name (default: all but {}; 'all' for every row): {}".format(
            ",".join(str(ROWS.index(r) + 1) for r in ROWS if r not in DEFAULT_ROWS), ",".join(ROWS)
        ),
    )
    parser.add_argument("--clients", metavar="LIST", help="clients to run: " + ",".join(CLIENTS))
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument(
        "--rounds", type=int, metavar="N", help="rounds of turns (default 5); more steady a noisy machine"
    )
    parser.add_argument(
        "--no-server-check",
        action="store_true",
        help="with rows 11-14, skip timing a raw aiohttp client against the paced server",
    )
    parser.add_argument(
        "--peers",
        default=os.environ.get("PEERS", "/tmp/peers"),
        help="directory of peer venvs (default $PEERS or /tmp/peers)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import platform
    import tempfile

    args = parse_args(argv)
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("--rounds must be at least 1")
        sizes["runs"] = args.rounds
    rows = parse_selection(args.only, ROWS, "row", DEFAULT_ROWS)
    clients = parse_selection(args.clients, CLIENTS, "client")

    print("# together_lite benchmark")
    print()
    print(
        f"- Python {platform.python_version()} ({sys.executable}),"
        f" {platform.system()} {platform.machine()}, nproc {os.cpu_count()}"
    )
    env = worker_env(os.path.join(tempfile.gettempdir(), "together-lite-bench-pycache"))
    with tempfile.TemporaryDirectory(prefix="together-lite-bench-") as tmp:
        own_python = make_bare_venv(os.path.join(tmp, "venv"))
        peers = os.path.abspath(args.peers)
        interpreters, notes = locate_clients(clients, peers, own_python, env)
        if not args.no_server_check and any(row in ASTREAM_ROWS for row in rows):
            checker = os.path.join(peers, SERVER_CHECK_VENV, "bin", "python")
            if os.path.exists(checker):
                interpreters[SERVER_CHECK] = checker
            else:
                notes.append(f"server check skipped: no venv with aiohttp at {checker}")
        for line in describe_interpreters(interpreters):
            print(line)
        sys.stdout.flush()
        results, paced_stats = run_all(rows, interpreters, sizes, env, tmp)

    print()
    print(render_table(rows, results, sizes))
    print()
    notes.extend(result_notes(rows, interpreters, results, sizes))
    notes.extend(paced_notes(results, paced_stats, sizes))
    for note in notes:
        print("- " + note)
    if args.json:
        save_json(args.json, sizes, interpreters, dict(results, paced_server=paced_stats), notes)
        print("- raw numbers saved to " + args.json)
    return 0


def run_all(
    rows: list[str],
    interpreters: dict[str, str],
    sizes: dict[str, int],
    env: dict[str, str],
    tmp: str,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Start the server, measure every (row, client), stop the server. Also
    returns the paced server's reports on its schedule, by row."""
    results: dict[str, dict[str, Any]] = {}
    cafile = make_tls_files(tmp)
    server, ports = start_server(tmp)
    if os.getpriority(os.PRIO_PROCESS, server.pid) != SERVER_NICE:
        print(f"note: the server runs without nice {SERVER_NICE} (no privilege)", file=sys.stderr)
    # The clients take turns, one sample each per round: a shared machine's slow
    # spells (seconds long) then hit every client alike instead of one client's run.
    rounds = sizes["runs"]
    per_round = dict(
        sizes,
        runs=1,
        import_reps=max(1, -(-sizes["import_reps"] // rounds)),
        cold_reps=max(1, -(-sizes["cold_reps"] // rounds)),
    )
    try:
        runner = Runner(interpreters, per_round, ports, cafile, env)
        for round_number in range(rounds):
            print(f"round {round_number + 1} of {rounds}", file=sys.stderr)
            cache: dict[tuple[str, str], Any] = {}
            for row in rows:
                for client in interpreters:
                    if client == SERVER_CHECK and row not in ASTREAM_ROWS:
                        continue
                    entry = measure_safely(runner, row, client, cache)
                    merge_entry(results.setdefault(row, {}), client, entry)
    finally:
        stop_server(server)
    return results, runner.paced_stats


def merge_entry(row_results: dict[str, Any], client: str, entry: dict[str, Any]) -> None:
    """Add one round's samples for CLIENT to its earlier ones; the median is over all of them."""
    merged = row_results.setdefault(client, {"samples": []})
    if "error" in entry:
        merged["error"] = entry["error"]
    for key in ("note",):
        if key in entry:
            merged[key] = entry[key]
    merged["samples"].extend(entry.get("samples", []))
    if merged["samples"]:
        merged["median"] = median(merged["samples"])
    else:
        merged["median"] = entry.get("median")


def result_notes(
    rows: list[str],
    interpreters: dict[str, str],
    results: dict[str, dict[str, Any]],
    sizes: dict[str, int],
) -> list[str]:
    notes = []
    if "httpclient" in interpreters:
        numbers = row_numbers(rows, ("async", "async_warm"))
        if numbers:
            notes.append(
                f"* http.client floor, {numbers}: the server time itself"
                f" ({ASYNC_SERVER_DELAY:g} s), not a measurement"
            )
        numbers = row_numbers(rows, ("astream", "astream_2x"))
        if numbers:
            pacing = sizes["astream_chunks"] * PACED_INTERVAL
            notes.append(
                f"* http.client floor, {numbers}: the server's pacing itself"
                f" ({sizes['astream_chunks']} x {PACED_INTERVAL * 1000:g} ms = {pacing:g} s),"
                " not a measurement"
            )
    if "urllib" in interpreters and row_numbers(rows, tuple(ASTREAM_ROWS)):
        notes.append(
            "urlopen, rows 11-14: not run (the default executor's few threads would"
            " take minutes over thousands of 2 s streams)"
        )
    notes.append(
        f"medians of {sizes['runs']} rounds in which the clients take turns"
        f" (import and cold start: fresh processes each round);"
        " ratios below 1 mean together_lite is faster or smaller"
    )
    for row, client_results in results.items():
        for client, entry in client_results.items():
            if "error" in entry:
                last_line = entry["error"].strip().splitlines()[-1]
                title, number = CLIENT_TITLES[client], ROWS.index(row) + 1
                notes.append(f"error in {title}, row {number}: {last_line}")
    return notes


def row_numbers(rows: list[str], wanted: tuple[str, ...]) -> str:
    """'row 7' or 'rows 7 and 10': the numbers of those of WANTED that are in ROWS."""
    numbers = [str(ROWS.index(row) + 1) for row in ROWS if row in wanted and row in rows]
    if not numbers:
        return ""
    if len(numbers) == 1:
        return "row " + numbers[0]
    return "rows " + ", ".join(numbers[:-1]) + " and " + numbers[-1]


def paced_notes(
    results: dict[str, dict[str, Any]],
    paced_stats: dict[str, list[dict[str, Any]]],
    sizes: dict[str, int],
) -> list[str]:
    """How the paced server of rows 11-14 kept up: the raw aiohttp check, and its lateness."""
    notes = []
    for row in ("astream", "astream_2x"):
        entry = results.get(row, {}).get(SERVER_CHECK)
        if entry is None:
            continue
        streams = sizes[ASTREAM_ROWS[row]]
        if "error" in entry:
            shown = "error"
        else:
            times = sorted(entry["samples"])
            shown = f"{format_value(row, entry['median'])} ms"
            shown += f" (runs {format_value(row, times[0])}-{format_value(row, times[-1])} ms)"
        reports = [r for r in paced_stats.get(row, []) if r["client"] == SERVER_CHECK]
        if reports:
            spans = sorted(r["span_ms"] for r in reports)
            shown += (
                f"; the server wrote its last chunk {spans[0]:,.0f}-{spans[-1]:,.0f} ms"
                " after the first stream began"
            )
        notes.append(
            f"server check, row {ROWS.index(row) + 1}: a raw aiohttp ClientSession without a"
            f" connection limit read the {streams:,} streams in {shown}"
        )
    for row, reports in paced_stats.items():
        if not reports:
            continue
        late = max(r["late_max_ms"] for r in reports)
        mean = max(r["late_mean_ms"] for r in reports)
        worst = max(reports, key=lambda r: r["late_max_ms"])
        notes.append(
            f"paced server, row {ROWS.index(row) + 1}: chunks at most {late:.1f} ms late"
            f" (worst mean per run {mean:.2f} ms; worst run: {CLIENT_TITLES[str(worst['client'])]},"
            f" {worst['cpu_s']:.2f} s of server CPU)"
        )
    return notes


def save_json(
    path: str,
    sizes: dict[str, int],
    interpreters: dict[str, str],
    results: dict[str, dict[str, Any]],
    notes: list[str],
) -> None:
    import json
    import platform

    data = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "sizes": sizes,
        "interpreters": interpreters,
        "results": results,
        "notes": notes,
    }
    with open(path, "w") as out:
        json.dump(data, out, indent=2)


def measure_safely(
    runner: Runner, row: str, client: str, cache: dict[tuple[str, str], Any]
) -> dict[str, Any]:
    """runner.measure, with progress on stderr and errors recorded, not raised."""
    started = time.perf_counter()
    try:
        entry = runner.measure(row, client, cache)
        shown = format_value(row, entry["median"])
    except Exception as exc:  # a broken client must not sink the whole run
        entry = {"error": str(exc).strip() or type(exc).__name__}
        shown = "error: " + entry["error"].splitlines()[-1]
    elapsed = time.perf_counter() - started
    print(f"  {row:<7} {CLIENT_TITLES[client]:<18} {shown}  ({elapsed:.1f}s)", file=sys.stderr)
    for line in runner.progress:
        print(line, file=sys.stderr)
    runner.progress.clear()
    return entry


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_main(sys.argv[2])
    else:
        sys.exit(main())
