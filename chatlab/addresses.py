"""Which addresses other computers can use to reach a server on this one.

A server bound to ``127.0.0.1`` (loopback, the default) is reachable only from this computer.
Bound to ``0.0.0.0`` it listens on every network this computer is on, and each network gave the
computer an address of its own (the classroom Wi-Fi one, a cable another): those are what
students type. :func:`interface_addresses` lists them; :func:`classroom_lines` turns them into
the lines the server program logs when it starts, with the exact commands to type.

How the addresses are found, with the standard library only: on Linux, the kernel is asked for
the IPv4 address of each network interface (``socket.if_nameindex()``, then the ``SIOCGIFADDR``
ioctl, as ``ifconfig`` does; only the first address of an interface that has several). On macOS
and Windows, where that ioctl differs or does not exist, the computer's own name is looked up
instead (``getaddrinfo(gethostname())``), which usually gives the main address of each network,
without the interface's name; if that finds nothing, the lines say to look the address up in
the system's network settings.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

__all__ = ["classroom_lines", "interface_addresses", "on_loopback", "reachable_addresses"]

SIOCGIFADDR = 0x8915  # Linux: "get the IPv4 address of the interface named in this request"
ANY_ADDRESS = ("0.0.0.0", "")


def _linux_addresses() -> list[tuple[str, str]]:
    try:
        import fcntl  # not on Windows
    except ImportError:
        return _addresses_of_this_name()
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # any socket will do
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])  # struct ifreq: the name first
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
            except OSError:
                continue  # the interface has no IPv4 address (or is down)
            found.append((name, socket.inet_ntoa(answer[20:24])))  # ifreq's sockaddr_in.sin_addr
    return found


def _addresses_of_this_name() -> list[tuple[str, str]]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return []
    return [("", address) for address in dict.fromkeys(str(info[4][0]) for info in infos)]


def interface_addresses() -> list[tuple[str, str]]:
    """This computer's IPv4 addresses besides loopback, as ``(interface, address)`` pairs
    (the interface name is "" where the system does not say)."""
    found = _linux_addresses() if sys.platform.startswith("linux") else _addresses_of_this_name()
    return [(name, address) for name, address in found if not ipaddress.ip_address(address).is_loopback]


def on_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this computer only."""
    if host in ANY_ADDRESS:
        return False
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except OSError:
        return False  # not a name we can look up: then not one of ours for loopback either


def reachable_addresses(host: str) -> list[tuple[str, str]]:
    """The addresses other computers can use for a server bound to ``host``: none for
    loopback, every interface's for ``0.0.0.0``, else ``host`` itself (resolved if a name)."""
    if host in ANY_ADDRESS:
        return interface_addresses()
    if on_loopback(host):
        return []
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return []
    names = {a: n for n, a in interface_addresses()}
    return [(names.get(address, ""), address)]


def classroom_lines(
    host: str,
    port: int,
    addresses: list[tuple[str, str]] | None = None,
    *,
    cafile: str | None = None,
    code: bool = False,
) -> list[str]:
    """What the server program logs when it listens beyond loopback: for every address, the
    commands a student types (with TLS, ``cafile`` names the certificate file students check
    the server against, and ``openssl s_client`` replaces ``nc``; with a class ``code`` the
    client's command has ``--code CODE``). Empty for a server on loopback."""
    if on_loopback(host):
        return []
    if addresses is None:
        addresses = reachable_addresses(host)
    if not addresses:
        return [
            f"listening beyond loopback on port {port}, but no network address of this computer "
            "was found: look it up in the system's network settings"
        ]
    options = (f" --tls --cafile {cafile}" if cafile else "") + (" --code CODE" if code else "")
    lines = []
    for name, address in addresses:
        where = f" ({name})" if name else ""
        raw = (
            f"openssl s_client -connect {address}:{port} -CAfile {cafile} -quiet"
            if cafile
            else f"nc {address} {port}"
        )
        lines += [
            f"students can connect to {address} port {port}{where}:",
            f"  python -m chatlab.client --host {address} --port {port}{options} --name NAME",
            f"  {raw}",
        ]
    return lines
