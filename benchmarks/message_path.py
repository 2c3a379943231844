"""One message's path through each server model: the kit's functions it crosses, in order.

    python benchmarks/message_path.py            # every model
    python benchmarks/message_path.py --show     # and the path itself, one call a line

A server of each model runs in this process; alice and bob are raw sockets (no kit code on the
clients' side). After one message to warm up, from the moment alice sends ``%bob%hi`` until
bob has read it, a profiler (``threading.setprofile``) notes every call into a function of the
``chatlab`` package, in the server's threads. Printed per model: the calls, the distinct
functions, the files they sit in, and the file crossings (consecutive calls in different
files), then each model's module length.
Bounded: each model is measured once, with a 5 s limit on every read.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from pathlib import Path

import chatlab
from chatlab.servers import MODELS, server_class

PACKAGE = Path(chatlab.__file__).resolve().parent
TIMEOUT = 5.0


class PathRecorder:
    """Notes calls into the chatlab package while ``on`` is set, from every thread."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.calls: list[tuple[str, str]] = []  # (file relative to the package, function)
        self._lock = threading.Lock()

    def __call__(self, frame, event, arg):  # noqa: ANN001 (the profiler's signature)
        if event != "call" or not self.on.is_set():
            return
        path = Path(frame.f_code.co_filename)
        if PACKAGE not in path.parents:
            return
        with self._lock:
            self.calls.append((path.relative_to(PACKAGE).as_posix(), frame.f_code.co_qualname))


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def read_until(sock: socket.socket, wanted: bytes, limit: int = 20) -> None:
    for _ in range(limit):
        if read_line(sock).rstrip(b"\r\n") == wanted:
            return
    raise AssertionError(f"never got {wanted!r}")


def join(port: int, name: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    read_line(sock)  # the greeting
    sock.sendall(name.encode() + b"\n")
    read_until(sock, b"* welcome " + name.encode())
    return sock


def measure(model: str) -> list[tuple[str, str]]:
    recorder = PathRecorder()
    threading.setprofile(recorder)  # threads started from now on (the server's) are profiled
    server = server_class(model)("127.0.0.1", 0).start()
    try:
        alice = join(server.port, "alice")
        bob = join(server.port, "bob")
        read_until(alice, b"* bob joined")
        alice.sendall(b"%bob%warm up\n")  # a first message, so what joining left to do is done
        read_until(bob, b"%alice%warm up")
        recorder.on.set()
        alice.sendall(b"%bob%hi\n")
        read_until(bob, b"%alice%hi")
        recorder.on.clear()
        alice.close()
        bob.close()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        server.stop()
    return recorder.calls


def crossings(calls: list[tuple[str, str]]) -> int:
    return sum(1 for before, after in zip(calls, calls[1:], strict=False) if before[0] != after[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print each path, one call a line")
    args = parser.parse_args()
    modules = {"threads": "servers/threads.py", "selectors": "servers/selectors_loop.py",
               "asyncio": "servers/asyncio_loop.py"}  # fmt: skip
    print(f"{'model':<10} {'calls':>5} {'functions':>9} {'files':>5} {'crossings':>9} {'module lines':>12}")
    for model in MODELS:
        calls = measure(model)
        functions = list(dict.fromkeys(calls))
        files = {file for file, _ in calls}
        lines = len((PACKAGE / modules[model]).read_text().splitlines()) if model in modules else 0
        figures = f"{len(calls):>5} {len(functions):>9} {len(files):>5} {crossings(calls):>9} {lines:>12}"
        print(f"{model:<10} {figures}")
        if args.show:
            for file, function in calls:
                print(f"    {file}: {function}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
