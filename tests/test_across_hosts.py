"""Client and server on two different "computers": two Linux network namespaces joined by a cable.

A network namespace is a separate network stack (its own interfaces, addresses, loopback and
routing) inside the same kernel, so a process in one cannot reach the other's 127.0.0.1: for
the network they are two hosts. The fixture makes two of them and a veth pair (a virtual
cable), with addresses from a private /30 that only these namespaces use, runs the server
program in one (``ip netns exec``) and clients in the other, and deletes it all afterwards.

That needs root and iproute2. Elsewhere these tests are skipped, saying so; where
CHATLAB_REQUIRE_NETNS is set (CI sets it) they fail instead, so CI cannot pass them by skipping.
The address-listing functions themselves are tested first, without namespaces.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from transcript import GREETING, Program

from chatlab.addresses import classroom_lines, interface_addresses, on_loopback, reachable_addresses

NETNS_REASON = "network namespaces need root and iproute2 (ip netns)"


# --- the address listing, on this machine ---------------------------------------------------------


def test_loopback_servers_list_no_addresses():
    for host in ("127.0.0.1", "localhost", "127.0.0.2"):
        assert on_loopback(host)
        assert reachable_addresses(host) == []
        assert classroom_lines(host, 5050) == []


def test_the_interface_addresses_are_ipv4_and_never_loopback():
    for _, address in interface_addresses():
        parsed = ipaddress.ip_address(address)
        assert parsed.version == 4 and not parsed.is_loopback
    assert reachable_addresses("0.0.0.0") == interface_addresses()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("ip"), reason="needs Linux's ip")
def test_the_interface_addresses_agree_with_ip_addr():
    """Checked against an independent reading: what ``ip -4 -o addr`` prints."""
    listed = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    by_ip = set(re.findall(r"^\d+: (\S+)\s+inet (\d+\.\d+\.\d+\.\d+)/", listed, re.MULTILINE))
    ours = set(interface_addresses())
    assert ours <= by_ip
    interfaces = {name for name, address in by_ip if not address.startswith("127.")}
    assert {name for name, _ in ours} == interfaces  # every interface with an address is there


def test_the_log_lines_give_the_exact_commands_for_every_address():
    lines = classroom_lines("0.0.0.0", 5050, [("eth0", "192.168.1.20"), ("wlan0", "10.0.0.7")])
    assert lines == [
        "students can connect to 192.168.1.20 port 5050 (eth0):",
        "  python -m chatlab.client --host 192.168.1.20 --port 5050 --name NAME",
        "  nc 192.168.1.20 5050",
        "students can connect to 10.0.0.7 port 5050 (wlan0):",
        "  python -m chatlab.client --host 10.0.0.7 --port 5050 --name NAME",
        "  nc 10.0.0.7 5050",
    ]


def test_with_tls_and_a_code_the_commands_say_so():
    lines = classroom_lines("0.0.0.0", 5050, [("eth0", "192.168.1.20")], cafile="class.crt", code=True)
    assert lines[1:] == [
        "  python -m chatlab.client --host 192.168.1.20 --port 5050 --tls --cafile class.crt"
        " --code CODE --name NAME",
        "  openssl s_client -connect 192.168.1.20:5050 -CAfile class.crt -quiet",
    ]


def test_the_log_says_so_when_no_address_is_found():
    (line,) = classroom_lines("0.0.0.0", 5050, [])
    assert "no network address of this computer was found" in line


def test_a_given_address_is_listed_as_it_is():
    assert reachable_addresses("192.0.2.77")[0][1] == "192.0.2.77"


# --- two hosts ---------------------------------------------------------------------------------


def missing(reason: str) -> None:
    """Skip on a student's laptop; fail in CI, where these tests must run."""
    if os.environ.get("CHATLAB_REQUIRE_NETNS"):
        pytest.fail(f"{reason} (and CHATLAB_REQUIRE_NETNS is set)")
    pytest.skip(reason)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class Hosts:
    """Two namespaces joined by a veth pair: the server's end and the clients' end."""

    server_ns: str
    client_ns: str
    server_if: str
    server_address: str
    client_address: str

    def on_server(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.server_ns)

    def on_client(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.client_ns)

    def python(self, code: str, *, on_server: bool = False, timeout: float = 20.0) -> str:
        """Run Python code in a namespace; its standard output (it must succeed)."""
        prefix = self.on_server() if on_server else self.on_client()
        done = subprocess.run(
            [*prefix, sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"failed: {done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing(f"{NETNS_REASON}: not root or no ip command")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        missing(f"{NETNS_REASON}: {probe.stderr.strip()}")
    pid = os.getpid()
    # Each namespace has its own routing, so addresses never clash with another test run's;
    # the /30 (two usable addresses) still differs by pid, for whoever reads `ip` output.
    subnet = f"10.200.{pid % 256}"
    made: list[str] = []
    try:
        hosts = Hosts(
            f"chatlab-{pid}-server", f"chatlab-{pid}-client", f"clab{pid}s", f"{subnet}.1", f"{subnet}.2"
        )
        for ns in (hosts.server_ns, hosts.client_ns):
            ip("netns", "add", ns)
            made.append(ns)
        client_if = f"clab{pid}c"
        ip("link", "add", hosts.server_if, "type", "veth", "peer", "name", client_if)
        for ns, interface, address in [
            (hosts.server_ns, hosts.server_if, hosts.server_address),
            (hosts.client_ns, client_if, hosts.client_address),
        ]:
            ip("link", "set", interface, "netns", ns)  # the cable's ends go into the namespaces
            ip("-n", ns, "addr", "add", f"{address}/30", "dev", interface)
            ip("-n", ns, "link", "set", interface, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield hosts
    except subprocess.CalledProcessError as exc:
        missing(f"{NETNS_REASON}: {shlex.join(exc.cmd)} failed: {exc.stderr.strip()}")
    finally:
        for ns in made:  # deleting a namespace deletes its end of the cable, and so the pair
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)


@pytest.fixture
def server_on(hosts: Hosts) -> Iterator:
    """``server_on(*options)`` runs the server program in the server's namespace; returns it
    and its port. Every one is stopped (by its pid) after the test."""
    programs: list[Program] = []

    def start(*options: str) -> tuple[Program, int]:
        program = Program("chatlab.server", "--port", "0", *options, prefix=hosts.on_server())
        programs.append(program)
        port = int(program.wait_for(r"^listening on \S+:(\d+)$", "stdout")[1])
        program.wait_for("press Ctrl-C to stop")  # its address lines come before this one
        return program, port

    yield start
    for program in programs:
        program.proc.terminate()  # SIGTERM: the server stops cleanly
        program.finish()


@pytest.fixture
def on_client(hosts: Hosts) -> Iterator:
    """``on_client(command)`` runs a command in the clients' namespace, with a stdin pipe."""
    programs: list[Program] = []

    def start(command: list[str]) -> Program:
        programs.append(Program(command=command, stdin=True, prefix=hosts.on_client()))
        return programs[-1]

    yield start
    for program in programs:
        program.kill()


def address_lines(server: Program) -> list[str]:
    """The server's log lines after its "listening on" line, up to "press Ctrl-C"."""
    lines = [line[len("12:00:00 INFO    ") :] for line in server.lines["stderr"]]  # the message
    start = next(i for i, line in enumerate(lines) if line.startswith("listening on"))
    end = lines.index("press Ctrl-C to stop")
    return lines[start + 1 : end]


def test_the_veth_address_is_the_only_interface_address_in_the_namespace(hosts):
    out = hosts.python(
        "from chatlab.addresses import interface_addresses; print(interface_addresses())", on_server=True
    )
    assert out.strip() == repr([(hosts.server_if, hosts.server_address)])


CHAT_CLIENT = """
    import sys
    from chatlab.client import ChatClient
    with ChatClient(sys.argv[1], int(sys.argv[2]), "bob", timeout=10) as bob:
        print("online:", ", ".join(bob.online), flush=True)
        for _ in range(10):
            line = bob.recv(timeout=10)
            print(line, flush=True)
            if line.startswith("%alice%hi"):
                bob.send("alice", "hello from the other computer")
            if line == "%alice%bye":
                break
"""


@pytest.mark.parametrize("model", ["threads", "selectors", "asyncio"])
def test_bound_to_every_interface_it_is_reachable_from_the_other_host(hosts, server_on, on_client, model):
    server, port = server_on("--host", "0.0.0.0", "--model", model)
    address, name = hosts.server_address, hosts.server_if
    assert address_lines(server) == [
        f"students can connect to {address} port {port} ({name}):",
        f"  python -m chatlab.client --host {address} --port {port} --name NAME",
        f"  nc {address} {port}",
    ]
    bob = on_client([sys.executable, "-c", textwrap.dedent(CHAT_CLIENT), address, str(port)])
    bob.wait_for(r"^online: bob$", "stdout")
    # alice types the terminal client's command exactly as the server's log shows it
    command = address_lines(server)[1].strip().replace("python", sys.executable, 1)
    alice = on_client(shlex.split(command.replace("NAME", "alice")))
    alice.wait_for(r"^\* you are alice; online: alice, bob$", "stdout")
    alice.write("%bob%hi from across the room\n")
    bob.wait_for(r"^%alice%hi from across the room$", "stdout")
    alice.wait_for(r"^%bob%hello from the other computer$", "stdout")
    alice.write("%bob%bye\n")
    bob.wait_for(r"^%alice%bye$", "stdout")
    assert bob.finish(timeout=10) == 0
    server.wait_for(rf"INFO +{re.escape(hosts.client_address)}:\d+ is alice$")  # the client's own address


@pytest.mark.skipif(
    shutil.which("nc") is None and not os.environ.get("CHATLAB_REQUIRE_NETNS"),
    reason="nc (netcat-openbsd) is not installed",
)
def test_plain_nc_from_the_other_host_chats_with_a_raw_socket_client(hosts, server_on, on_client):
    server, port = server_on("--host", "0.0.0.0")
    nc_command = address_lines(server)[2].strip()
    carol = on_client(shlex.split(nc_command))  # exactly as the log says: nc ADDRESS PORT
    carol.wait_for(rf"^{re.escape(GREETING)}$", "stdout")
    carol.write("carol\n")
    carol.wait_for(r"^\* welcome carol$", "stdout")
    dave = on_client(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import socket
        with socket.create_connection(("{hosts.server_address}", {port}), timeout=10) as sock:
            reader = sock.makefile("rb")
            print(reader.readline().decode().strip(), flush=True)
            sock.sendall(b"dave\\n%carol%raw bytes from another host\\n")
            for _ in range(5):
                line = reader.readline().decode().strip()
                print(line, flush=True)
                if line.startswith("%carol%"):
                    break
    """),
        ]
    )
    dave.wait_for(r"^\* welcome dave$", "stdout")
    carol.wait_for(r"^%dave%raw bytes from another host$", "stdout")
    carol.write("%dave%got it\n")
    dave.wait_for(r"^%carol%got it$", "stdout")
    assert dave.finish(timeout=10) == 0


def test_on_its_default_host_it_is_not_reachable_from_the_other_host(hosts, server_on):
    server, port = server_on()  # --host 127.0.0.1, the default
    assert address_lines(server) == []  # nothing to tell students: they cannot reach it
    out = hosts.python(f"""
        import socket
        try:
            socket.create_connection(("{hosts.server_address}", {port}), timeout=5)
        except ConnectionRefusedError:
            print("refused")
    """)
    assert out.strip() == "refused"
    # while on its own host, loopback reaches it
    greeting = hosts.python(
        f"""
        import socket
        with socket.create_connection(("127.0.0.1", {port}), timeout=5) as sock:
            print(sock.makefile().readline().strip())
    """,
        on_server=True,
    )
    assert greeting.strip() == GREETING


def test_bound_to_one_address_only_that_address_is_listed_and_reachable(hosts, server_on):
    server, port = server_on("--host", hosts.server_address)
    assert (
        address_lines(server)[0]
        == f"students can connect to {hosts.server_address} port {port} ({hosts.server_if}):"
    )
    out = hosts.python(f"""
        import socket
        with socket.create_connection(("{hosts.server_address}", {port}), timeout=5) as sock:
            print(sock.makefile().readline().strip())
    """)
    assert out.strip() == GREETING
    refused = hosts.python(
        f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=5)
        except ConnectionRefusedError:
            print("refused")
    """,
        on_server=True,
    )
    assert refused.strip() == "refused"  # not even loopback on its own host: it listens there only


WIDGET_CLIENT = """
    import sys, time
    from chatlab.widgets import ChatWidget
    erin = ChatWidget(sys.argv[1], int(sys.argv[2]), "erin")
    erin.text.value = "%erin%a note to myself, across the cable"
    erin.send_button.click()
    for _ in range(200):  # at most 10 s
        if "← erin: a note to myself, across the cable" in erin.transcript():
            break
        time.sleep(0.05)
    print("\\n".join(erin.transcript()), flush=True)
    erin.close()
"""


def test_the_chat_widget_connects_to_the_other_host(hosts, server_on, on_client):
    server, port = server_on("--host", "0.0.0.0")
    erin = on_client([sys.executable, "-c", textwrap.dedent(WIDGET_CLIENT), hosts.server_address, str(port)])
    assert erin.finish(timeout=20) == 0, erin.lines["stderr"]
    assert "← erin: a note to myself, across the cable" in erin.lines["stdout"]
    server.wait_for(rf"INFO +{re.escape(hosts.client_address)}:\d+ is erin$")


@pytest.mark.skipif(
    shutil.which("openssl") is None and not os.environ.get("CHATLAB_REQUIRE_NETNS"),
    reason="openssl is not installed",
)
def test_a_classroom_server_with_tls_and_a_code_as_the_readme_makes_it(hosts, server_on, on_client, tmp_path):
    """The instructor's certificate made as the README shows, for the address students type;
    the student types the command from the server's log, with the file it names."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=chatlab class",
            "-addext",
            f"subjectAltName=IP:{hosts.server_address}",
            "-keyout",
            str(tmp_path / "class.key"),
            "-out",
            str(tmp_path / "class.crt"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server, port = server_on(
        "--host",
        "0.0.0.0",
        "--tls-cert",
        str(tmp_path / "class.crt"),
        "--tls-key",
        str(tmp_path / "class.key"),
        "--code",
        "owl-42",
    )
    address = hosts.server_address
    assert address_lines(server)[:3] == [
        f"students can connect to {address} port {port} ({hosts.server_if}):",
        f"  python -m chatlab.client --host {address} --port {port} --tls --cafile class.crt"
        " --code CODE --name NAME",
        f"  openssl s_client -connect {address}:{port} -CAfile class.crt -quiet",
    ]
    command = address_lines(server)[1].strip().replace("python", sys.executable, 1)
    command = command.replace("class.crt", str(tmp_path / "class.crt")).replace("CODE", "owl-42")
    alice = on_client(shlex.split(command.replace("NAME", "alice")))
    alice.wait_for(r"^\* you are alice; online: alice$", "stdout")
    wrong = on_client(shlex.split(command.replace("NAME", "mallory").replace("owl-42", "owl-41")))
    assert wrong.finish(timeout=10) == 1
    assert any("wrong class code" in line for line in wrong.lines["stderr"])
    plain = on_client(shlex.split(f"nc {address} {port}"))  # no TLS: turned away, in plain words
    plain.write("alice\n")  # the server knows it is not TLS by the first bytes
    plain.wait_for(r"^! this server speaks TLS", "stdout")
    server.wait_for(rf"{re.escape(hosts.client_address)}:\d+ is alice$")
