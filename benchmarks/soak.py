"""Soak test for together_lite: many calls on one client, watching for leaks.

Runs a loopback server in its own process, then on ONE client:

1. 5,000 sequential calls (every fifth a stream; every tenth stream is broken
   off after its first chunk and closed early),
2. 2,000 concurrent calls from 32 threads sharing a sync client, the same mix,
3. 2,000 concurrent calls through AsyncTogether (all in flight at once),

six rounds of them, and prints open file descriptors, threads (all of the
process's, counted by the kernel), current and peak RSS after each phase. The
first round warms the connection pools (up to 256 idle connections per client)
and the async client's worker threads (at most max_workers, 8 by default); a
healthy run shows no growth after that.

    python benchmarks/soak.py            # the full run
    python benchmarks/soak.py --scale 0.1   # a tenth of the calls
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import together_lite as tl  # noqa: E402

RESPONSE = json.dumps(
    {
        "id": "soak",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


def _stream_body(chunks: int) -> bytes:
    event = {"id": "soak", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    pieces = [
        b"data: " + json.dumps({**event, "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}).encode() + b"\n\n"
        for _ in range(chunks - 1)
    ]
    pieces.append(b"data: " + json.dumps({**event, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode() + b"\n\n")
    pieces.append(b"data: [DONE]\n\n")
    return b"".join(pieces)


STREAM = _stream_body(20)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        if request.get("stream"):
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(STREAM), STREAM))
        else:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(RESPONSE)))
            self.end_headers()
            self.wfile.write(RESPONSE)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def _serve(port_queue: multiprocessing.Queue[int]) -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def _thread_count() -> int:
    """Every thread of the process: the async client's workers are not threading.Thread objects."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _snapshot() -> dict[str, float]:
    gc.collect()
    rss_kb = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": _thread_count(),
        "rss_mb": rss_kb / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _one_call(client: tl.Together, index: int) -> None:
    messages = [{"role": "user", "content": f"call {index}"}]
    if index % 5:
        assert client.chat.completions.create(model="m", messages=messages).choices[0].message.content == "ok"
        return
    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    if (index // 5) % 10 == 0:  # every tenth stream: break off after one chunk
        next(iter(stream))
        stream.close()
        return
    assert sum(1 for _ in stream) == 20


async def _one_async_call(client: tl.AsyncTogether, index: int) -> None:
    messages = [{"role": "user", "content": f"call {index}"}]
    if index % 5:
        response = await client.chat.completions.create(model="m", messages=messages)
        assert response.choices[0].message.content == "ok"
        return
    stream = await client.chat.completions.create(model="m", messages=messages, stream=True)
    if (index // 5) % 10 == 0:
        await stream.__anext__()
        await stream.aclose()
        return
    count = 0
    async for _ in stream:
        count += 1
    assert count == 20


def _run_async(client: tl.AsyncTogether, calls: int) -> None:
    async def main() -> None:
        await asyncio.gather(*(_one_async_call(client, index) for index in range(calls)))

    asyncio.run(main())


def _run_threads(client: tl.Together, calls: int) -> None:
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda index: _one_call(client, index), range(calls)))


def _print_row(phase: str, seconds: float, snapshot: dict[str, float]) -> None:
    print(
        f"| {phase:<46} | {seconds:7.2f} | {snapshot['fds']:5.0f} | {snapshot['threads']:7.0f} "
        f"| {snapshot['rss_mb']:7.1f} | {snapshot['peak_rss_mb']:8.1f} |",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the call counts (default 1)")
    parser.add_argument("--rounds", type=int, default=6, help="how many times to run the three phases (default 6)")
    parser.add_argument("--max-workers", type=int, default=8, help="threads of the AsyncTogether (default 8)")
    parser.add_argument("--serve", action="store_true", help="only run the server: print its port, serve until killed")
    args = parser.parse_args()
    if args.serve:  # the test suite's small soak uses this server too
        server = _Server(("127.0.0.1", 0), _Handler)
        print(server.server_address[1], flush=True)
        server.serve_forever()
    sequential, concurrent = int(5000 * args.scale), int(2000 * args.scale)

    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    base_url = f"http://127.0.0.1:{ports.get(timeout=10)}/v1"
    client = tl.Together(api_key="soak-key", base_url=base_url, max_retries=2, timeout=30)
    async_client = tl.AsyncTogether(
        api_key="soak-key", base_url=base_url, max_retries=2, timeout=30, max_workers=args.max_workers
    )

    print(f"Python {sys.version.split()[0]}, together_lite {tl.__version__}")
    print("| phase | seconds | fds | threads | RSS MB | peak MB |")
    print("|---|---|---|---|---|---|")
    _print_row("start", 0.0, _snapshot())
    phases = [
        (f"{sequential} sequential calls", lambda: [_one_call(client, i) for i in range(sequential)]),
        (f"{concurrent} calls from 32 threads", lambda: _run_threads(client, concurrent)),
        (f"{concurrent} concurrent async calls", lambda: _run_async(async_client, concurrent)),
    ]
    for round_number in range(1, args.rounds + 1):
        for name, run in phases:
            started = time.perf_counter()
            run()
            _print_row(f"round {round_number}: {name}", time.perf_counter() - started, _snapshot())
    client.close()
    asyncio.run(async_client.close())
    time.sleep(0.2)
    _print_row("after close()", 0.0, _snapshot())
    server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
