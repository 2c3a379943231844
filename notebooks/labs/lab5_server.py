"""Lab 5: the whole chat server, your way. This is the file you write, nearly all of it.

Write a server for the protocol in the README's section "The protocol", in the model you choose:
threads (as in labs 1-4, maybe rewritten from what you learned), one loop with ``selectors``
(lesson 9), or ``asyncio`` (lesson 9). It is graded on every stage at once:

    python -m chatlab.grade -- python lab5_server.py --port {port}

What must be true when you are done (every check of the stages ``threads``, ``routing``,
``framing`` and ``slow``; the notebook lab5_your_server.ipynb lists them):

1. ``python lab5_server.py --port P`` (and ``--host H``, default 127.0.0.1) serves on that port,
   prints ``listening on HOST:PORT`` once it accepts connections, and ends with status 0 on
   SIGTERM or Ctrl-C. Standard library only; it runs on Windows, macOS and Linux (no ``fcntl``,
   no ``resource``, no ``socket.MSG_DONTWAIT``).
2. Every rule of the README's protocol: a greeting; names (1-32 of ``A-Z a-z 0-9 _ . -``,
   unique in any case, ``server``, ``all``, ``*`` reserved in any case, another try after a
   refusal); ``* welcome NAME`` and ``* online: ...``; ``%name%text``, ``%*%text`` and
   ``%all%text``, ``%server%who`` and ``%server%help``; the errors (``! unknown client 'zed'``,
   ``! expected %name%message``, ``! line too long``, ``! invalid utf-8``, ``! control
   characters are not allowed``); ``* NAME joined`` and ``* NAME left``; ``! server full`` and
   ``! no name in time``.
3. Everything labs 1-4 taught: no client waits for another (threads, or a loop that never
   blocks); shared state is safe (locks, or one loop); lines are framed from a byte stream,
   with a limit; a client that stops reading stalls nobody and is disconnected when too far
   behind; a client that vanishes (FIN or RST) ends only its own connection.

Then fill in ``lab5_writeup.md`` (your design, and one trade-off you measured) and, if you like,
one extension from the notebook. Given below: the command line and the log's set-up.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("lab")


def main() -> None:
    parser = argparse.ArgumentParser(description="Lab 5: a chat server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5050)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # TODO (lab 5): serve on args.host, args.port until stopped (the rules above)
    raise SystemExit(f"lab 5: no server yet in {__file__}; write it (nothing listens on port {args.port})")


if __name__ == "__main__":
    main()
