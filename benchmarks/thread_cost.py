"""What one Python thread costs by itself, before any chat server code runs.

Usage::

    python benchmarks/thread_cost.py            # 1000 threads, 2000 start/stop cycles

Two figures put the threaded server's own numbers (``run.py``) in proportion:

- memory: the growth of this process's resident memory (RSS, from psutil) per ``threading.Thread``
  that is blocked in ``recv()`` on a socket pair, divided by the number of threads. That is
  the least a thread-per-client server can spend per idle client.
- start-up: the time to start a thread that does nothing and wait for it to end (median of
  a few rounds), the least a thread-per-client server spends per connection.

Every loop is bounded; only socket pairs are used, no network.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

import psutil


def rss_kib() -> int:
    """This process's resident memory in KiB (VmRSS on Linux), as psutil reads it from the system."""
    return psutil.Process().memory_info().rss // 1024


def memory_per_thread(n: int, recv_size: int = 1024) -> float:
    """KiB of resident memory per thread blocked in recv(), over ``n`` threads."""
    pairs = [socket.socketpair() for _ in range(n)]
    try:
        time.sleep(0.1)
        before = rss_kib()
        threads = [
            threading.Thread(target=ours.recv, args=(recv_size,), name=f"cost-{i}", daemon=True)
            for i, (ours, _) in enumerate(pairs)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # let every thread reach recv()
        grown = rss_kib() - before
    finally:
        for _ours, theirs in pairs:
            theirs.close()  # recv() returns b"" and the thread ends
        for thread in threads:
            thread.join(5)
        for ours, _ in pairs:
            ours.close()
    return grown / n


def start_and_join_us(cycles: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time, in µs, to start an empty thread and join it."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(cycles // rounds):
            thread = threading.Thread(target=int, name="cost-start", daemon=True)
            thread.start()
            thread.join()
        results.append((time.perf_counter() - start) / (cycles // rounds) * 1e6)
    return statistics.median(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1000, help="threads for the memory figure")
    parser.add_argument("--cycles", type=int, default=2000, help="start/join cycles for the time figure")
    args = parser.parse_args(argv)
    print(
        f"memory per idle thread blocked in recv(): {memory_per_thread(args.threads):.1f} KiB "
        f"({args.threads} threads)"
    )
    print(f"start a thread and join it: {start_and_join_us(args.cycles):.0f} µs (median of 5 rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
