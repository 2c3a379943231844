"""The server program: ``python -m chatlab.server`` runs a chat server in the foreground.

It picks a model from :mod:`chatlab.servers` (``--model threads``, the default, gives every
client a thread of its own), shows a live log of connections, messages and errors, and stops
cleanly on Ctrl-C or ``kill``. Once it listens it prints one line on standard output,
``listening on HOST:PORT``, also with ``--quiet``, so a script can wait for that line. With
``--tls-cert FILE --tls-key FILE`` it speaks TLS only, and with ``--code CODE`` every client must
give the class code before its name (README: "A classroom server with TLS and a class code"). The
servers themselves live in :mod:`chatlab.servers`; their names are also importable from here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from . import protocol
from .addresses import classroom_lines
from .room import ClientRecord, ServerEvent
from .servers import MODELS, ChatServer, ServerBase, server_class
from .servers.base import DEFAULT_PORT, ServerOptions
from .servers.threads import DELIVERY_MODES
from .tls import server_context

__all__ = ["ChatServer", "ClientRecord", "MODELS", "ServerBase", "ServerEvent", "main", "server_class"]

# Only one thread runs Python at a time (the GIL), so with thousands of clients most threads wait
# for it, and each waiting thread wakes up every "switch interval" (5 ms by default) to ask for
# it: with thousands of threads those wake-ups alone fill the processor. So this program, which
# runs only the server, sets a longer interval for the threaded model. The cost: a thread that
# keeps computing may hold the GIL for up to 100 ms before it must let another run. The server's
# threads hand the GIL over at every read and write anyway, so they never get near that.
SERVER_SWITCH_INTERVAL = 0.1

log = logging.getLogger("chatlab.server")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m chatlab.server``: run a server in the foreground with a live log."""
    parser = argparse.ArgumentParser(prog="chatlab-server", description=main.__doc__)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to your network)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free port"
    )
    parser.add_argument(
        "--max-clients",
        type=int,
        default=100,
        help="most clients at once (default 100); with the door's fairness, named clients only",
    )
    parser.add_argument(
        "--max-line", type=int, default=protocol.DEFAULT_MAX_LINE, help="longest line in bytes"
    )
    parser.add_argument(
        "--name-timeout",
        type=float,
        default=60.0,
        help="seconds a new connection has to send its name (default 60)",
    )
    parser.add_argument("--delivery", choices=DELIVERY_MODES, default="queue")
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        default="threads",
        help="threads: one thread per client (default); selectors or asyncio: one event loop for all clients",
    )
    parser.add_argument(
        "--rate",
        type=float,
        metavar="LINES_PER_SECOND",
        help="flood control: read at most this many lines per second from each client (bursts of "
        "two seconds' worth); a faster client waits, nothing is lost (default: no limit)",
    )
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument("--code", help="a class code every client must send before its name")
    door = parser.add_argument_group(
        "the door (README: a classroom server)",
        "fairness by address, on by default unless --host is loopback; sized for a class of 30 "
        "with a laptop per address. A room behind NAT (one address for all) needs "
        "--per-address 100 --arrivals 20 --joining-per-address 64, or --no-fair.",
    )
    door.add_argument(
        "--fair",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count by address: connections, new connections a second, the door's pool, the "
        "flood rate; --max-clients then counts named clients (default: on beyond loopback)",
    )
    defaults = ServerOptions()
    door.add_argument(
        "--per-address",
        type=int,
        default=defaults.per_address,
        metavar="N",
        help=f"connections open at once from one address (default {defaults.per_address})",
    )
    door.add_argument(
        "--arrivals",
        type=float,
        default=defaults.arrivals,
        metavar="PER_SECOND",
        help=f"new connections a second from one address (default {defaults.arrivals:g})",
    )
    door.add_argument(
        "--joining",
        type=int,
        default=defaults.joining,
        metavar="N",
        help=f"connections not named yet, server-wide (default {defaults.joining})",
    )
    door.add_argument(
        "--joining-per-address",
        type=int,
        default=defaults.joining_per_address,
        metavar="N",
        help=f"of which from one address (default {defaults.joining_per_address})",
    )
    door.add_argument(
        "--guesses",
        type=int,
        default=defaults.guesses,
        metavar="N",
        help=f"wrong class codes one address may have waiting for their answer (default {defaults.guesses})",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share one chat with every server given the same redis://HOST:PORT/DB (threads model)",
    )
    parser.add_argument("--server-id", help="this server's name among them (default HOSTNAME:PORT)")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=1.0,
        help="with --redis: seconds between heartbeats; a silent server counts as gone after 5 (default 1)",
    )
    parser.add_argument(
        "--reserve",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="names (and their look-alikes) that only a client on this computer may take, e.g. teacher",
    )
    args = parser.parse_args(argv)
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    if args.model != "threads" and args.delivery != "queue":
        parser.error("--delivery is a choice of --model threads")
    if args.redis and (args.model != "threads" or args.delivery != "queue"):
        parser.error("--redis needs --model threads with --delivery queue")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
    )
    tls = None
    if args.tls_cert:
        try:
            tls = server_context(args.tls_cert, args.tls_key)
        except (OSError, ValueError) as exc:  # a missing file, or a key that does not fit
            parser.error(f"cannot use the certificate: {exc}")
    try:  # the options are checked once, there: what they refuse is a usage error here
        options = ServerOptions(
            max_clients=args.max_clients,
            max_line=args.max_line,
            name_timeout=args.name_timeout,
            tls=tls,
            code=args.code,
            rate=args.rate,
            delivery=args.delivery,
            redis=args.redis,
            server_id=args.server_id,
            heartbeat=args.heartbeat,
            reserve=tuple(args.reserve),
            fair=args.fair,
            per_address=args.per_address,
            arrivals=args.arrivals,
            joining=args.joining,
            joining_per_address=args.joining_per_address,
            guesses=args.guesses,
        )
    except ValueError as exc:
        parser.error(str(exc))
    server = server_class(args.model)(args.host, args.port, options)
    if args.model == "threads":
        sys.setswitchinterval(SERVER_SWITCH_INTERVAL)  # this process runs only the server
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    if server.fair:  # before "listening on": the lines after it are for the students
        log.info(
            "the door: %d connections and %g new a second per address; %d joining at once",
            args.per_address,
            args.arrivals,
            args.joining,
        )
    try:
        try:
            server.start()
        except (ConnectionError, ValueError) as exc:  # --redis: Redis unreachable, or the id in use
            log.error("%s", exc)
            return 1
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
            return 1
        print(f"listening on {server.host}:{server.port}", flush=True)  # for scripts that wait
        cafile = os.path.basename(args.tls_cert) if args.tls_cert else None
        for line in classroom_lines(server.host, server.port, cafile=cafile, code=args.code is not None):
            log.info("%s", line)  # none on loopback
        if args.tls_cert:
            log.info("TLS: clients connect with --tls --cafile (the CA of %s)", args.tls_cert)
        if args.code is not None:
            log.info("clients must give the class code before their name")
        if args.reserve:
            log.info("reserved for a client on this computer: %s", ", ".join(args.reserve))
        log.info("press Ctrl-C to stop")
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()  # in case it came before serve_forever() was there to stop the server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
