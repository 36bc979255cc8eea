"""Bounded load through the sandbox's local load balancer to two loopback targets.

    .venv/bin/python bench/alb_throughput.py [--requests 2000] [--concurrency 8]

Each client thread keeps one HTTP/1.1 connection to the load balancer; the balancer opens one
connection per request to a target, as it does in the sandbox. The targets run in a child
process, so the figures are those of the balancer plus its clients (one process, one GIL).
Prints requests/s, p50/p99 latency, the split across targets, and the resident memory of the
balancer's process. Stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import statistics
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from release.clock import SystemClock
from release.sandbox.engines.alb import LocalLoadBalancer


class _Target(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True


def _handler(name: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(name)))
            self.end_headers()
            self.wfile.write(name)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _serve_targets(ports: multiprocessing.SimpleQueue[tuple[str, int]], stop: threading.Event) -> None:
    """In the child process: two targets until `stop` is set."""
    targets = [_Target(("127.0.0.2", 0), _handler(b"a")), _Target(("127.0.0.3", 0), _handler(b"b"))]
    serving = [threading.Thread(target=t.serve_forever, kwargs={"poll_interval": 0.05}) for t in targets]
    for thread in serving:
        thread.start()
    for target in targets:
        ports.put((str(target.server_address[0]), int(target.server_address[1])))
    stop.wait()
    for target in targets:
        target.shutdown()
        target.server_close()
    for thread in serving:
        thread.join()


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _client(address: tuple[str, int], count: int, latencies: list[float], seen: Counter[bytes]) -> None:
    connection = http.client.HTTPConnection(*address, timeout=10)
    mine: list[float] = []
    bodies: Counter[bytes] = Counter()
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", "/version")
        response = connection.getresponse()
        body = response.read()
        mine.append(time.perf_counter() - started)
        bodies[body if response.status == 200 else f"HTTP {response.status}".encode()] += 1
    connection.close()
    latencies.extend(mine)
    seen.update(bodies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    context = multiprocessing.get_context("fork")
    ports: multiprocessing.SimpleQueue[tuple[str, int]] = context.SimpleQueue()
    stop = context.Event()
    child = context.Process(target=_serve_targets, args=(ports, stop), name="bench-targets")
    child.start()
    endpoints = [ports.get(), ports.get()]
    latencies: list[float] = []
    seen: Counter[bytes] = Counter()
    rss_before = _rss_mib()
    try:
        with LocalLoadBalancer(lambda: endpoints, SystemClock()) as alb:
            share, extra = divmod(args.requests, args.concurrency)
            clients = [
                threading.Thread(target=_client, args=(alb.address, share + (i < extra), latencies, seen))
                for i in range(args.concurrency)
            ]
            started = time.perf_counter()
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            elapsed = time.perf_counter() - started
            rss_after = _rss_mib()
            metrics = {d.metric_name: d.value for d in alb.drain_metrics(include_current=True) if d.unit == "Count"}
    finally:
        stop.set()
        child.join(10)

    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"requests      {len(ordered)} over {args.concurrency} keep-alive connections, two targets")
    print(f"throughput    {len(ordered) / elapsed:,.0f} requests/s ({elapsed:.2f} s)")
    print(f"latency       p50 {statistics.median(ordered) * 1000:.2f} ms   p99 {p99 * 1000:.2f} ms")
    print(f"split         {dict(sorted((k.decode(), v) for k, v in seen.items()))}")
    print(
        f"metrics       RequestCount {metrics.get('RequestCount', 0):.0f}, "
        f"Target_2XX {metrics.get('HTTPCode_Target_2XX_Count', 0):.0f}, "
        f"ELB_5XX {metrics.get('HTTPCode_ELB_5XX_Count', 0):.0f}"
    )
    print(f"rss           {rss_before:.1f} MiB before, {rss_after:.1f} MiB under load (balancer and clients)")


if __name__ == "__main__":
    main()
