"""Out of file descriptors: every model backs off instead of spinning, and says so once.

When a process may open no more files, ``accept()`` fails with EMFILE and the connection stays
in the kernel's queue, so the listening socket stays readable. A loop that simply tries again
spins at full CPU and fills the log; the selectors server stops watching the listener for a
moment (``ACCEPT_BACKOFF``), the threaded server's accept thread waits as long, asyncio waits a
second by itself; each says so once, and takes the waiting connection in once a descriptor is
free. A server whose ``max_clients`` the file limit cannot hold says so when it starts. The
server runs in a subprocess whose file limit the test lowers with
``resource.setrlimit`` (POSIX only: on Windows this test is skipped), and psutil measures its
CPU time.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from transcript import GREETING, wait_until

resource = pytest.importorskip("resource")  # not on Windows
psutil = pytest.importorskip("psutil")

SERVER = """
import logging, os, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from chatlab.servers import server_class
server = server_class(sys.argv[1])("127.0.0.1", 0, name_timeout=None).start()
free = os.dup(0)  # the lowest free descriptor: all below it are open
os.close(free)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (free + 2, hard))  # room for two clients
print(server.port, flush=True)
sys.stdin.read()  # until the test closes standard input
server.stop()
"""
WINDOW = 1.0  # seconds of wall time over which the server's CPU time is measured


@pytest.mark.parametrize("model", ["threads", "selectors", "asyncio"])
def test_out_of_file_descriptors_the_loop_waits_logs_once_and_goes_on(model):
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, model],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(server.stderr), name="server-log", daemon=True)
    reader.start()
    clients: list[socket.socket] = []
    try:
        port = int(server.stdout.readline())
        for _ in range(3):  # the third waits in the kernel's queue: the server has no descriptor for it
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(lambda: any("accept failed" in line for line in log), message=f"no accept failure: {log}")
        process = psutil.Process(server.pid)
        before = sum(process.cpu_times()[:2])
        time.sleep(WINDOW)  # a measurement window, not a wait for something
        busy = sum(process.cpu_times()[:2]) - before
        assert busy < 0.25 * WINDOW, f"the loop spins: {busy:.2f} s of CPU in {WINDOW} s"
        assert sum("accept failed" in line for line in log) == 1, log
        clients.pop(0).close()  # frees a descriptor in the server once it has closed its end
        waiting = clients[-1]
        waiting.settimeout(5)
        assert waiting.recv(1024).decode().startswith(GREETING)  # taken in at last
    finally:
        for client in clients:
            client.close()
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        reader.join(5)


LIMITED = """
import logging, resource, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
from chatlab.servers import server_class
server_class(sys.argv[1])("127.0.0.1", 0, max_clients=int(sys.argv[2])).start().stop()
"""


@pytest.mark.parametrize("model", ["threads", "selectors", "asyncio"])
def test_a_server_warns_at_start_when_max_clients_exceeds_the_file_limit(model):
    def warnings(max_clients: int) -> str:
        done = subprocess.run(
            [sys.executable, "-c", LIMITED, model, str(max_clients)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "may open only 64 files" in warnings(100)
    assert warnings(30) == ""
