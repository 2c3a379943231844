"""The chatlab line protocol: bytes in, typed events out, and every line the server says.

This module does no I/O. It never touches a socket, a thread or a clock, so it can be tested
with plain bytes and reused by every server and client in the kit (the threaded server is
"this module + sockets + threads").

The wire format is newline-delimited UTF-8 text, so a person can talk to a server with `nc`::

    server: * chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter
    client: alice
    server: * welcome alice
    server: * online: alice, bob
    client: %bob%hi bob          <- a direct message
    client: %*%hi everyone       <- a broadcast
    client: %server%who          <- a command
    server: %bob%hello alice     <- a message from bob
    server: ! unknown client 'zed'

Lines the server sends start with a sigil: ``%from%`` for a message, ``* `` for a notice and
``! `` for an error about the client's last line. ``\\r\\n`` is accepted as a line end.

A server started with a class code asks for it first (:data:`CODE_PROMPT`); the first line a
client sends is then the code, and the greeting above follows the right one.

What a screen could mislead a reader with is refused here: names that look alike are one name
(:func:`name_key`), names that look like ``server...`` or ``all`` are reserved, and a line may
not hold control characters (:func:`unsafe_character`) or more than :data:`MAX_BLANKS` blanks in
a row (:func:`has_blank_run`), which could pad it until its end wraps onto a row of its own.
"""

from __future__ import annotations

import functools
import hmac
import re
import unicodedata
from dataclasses import dataclass

ENCODING = "utf-8"
DEFAULT_PORT = 5050
"""The TCP port a chatlab server listens on, and a client connects to, unless told otherwise."""
DEFAULT_MAX_LINE = 4096
"""Longest line (in bytes, without its line end) a server accepts by default."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
RESERVED_NAMES = frozenset({"server", "all", "*"})
BROADCAST_NAMES = frozenset({"*", "all"})
SERVER_NAME = "server"
COMMANDS = ("who", "help")
MAX_BLANKS = 8
"""The most blanks (spaces, tabs, invisible characters) a line may hold in a row."""

# Names that look alike on a screen are one name. A name's skeleton (name_key) is what it looks
# like: lower case, I L 1 one letter (written l), 0 and O one letter (written o), and the dots,
# dashes and underscores at its end left off. Names hold only ASCII letters, digits and _ . -, so
# no Cyrillic "а" or Greek "ο" can pass for a Latin letter: the confusables are these few.
_LOOK_ALIKES = str.maketrans("i10", "llo")
_TRAILING = "._-"

MESSAGE_SIGIL = "%"
NOTICE_SIGIL = "* "
ERROR_SIGIL = "! "

# Characters that could make a terminal or a log show something the server did not frame:
# a carriage return rewinds the line, ESC starts colour and cursor codes, U+2028 is a line
# break to some viewers, and the bidi embeddings, overrides and isolates (U+202A..U+202E,
# U+2066..U+2069) reorder everything after them, the sender's name on the receiver's screen
# included. The plain direction marks (U+200E LRM, U+200F RLM, U+061C ALM) are allowed: they
# are invisible, reorder nothing beyond their neighbours, and are part of ordinary Hebrew,
# Arabic and Persian text.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
_ASCII_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # the unsafe ones among ASCII

# Blanks: what shows as nothing, or as empty space. A long run of them pads a line so that its
# end wraps onto a row of its own, and on a terminal that row can read like a line from
# someone else ("%teacher%..."). Blanks are the whitespace characters (space, tab, no-break
# space, the Unicode spaces), the format characters (Unicode category Cf: zero-width space and
# joiners, word joiner, soft hyphen, byte order mark, tags), the variation selectors, and the
# characters that are drawn empty: Hangul fillers (U+115F, U+1160, U+3164, U+FFA0), the
# braille blank (U+2800), the combining grapheme joiner (U+034F), Khmer's invisible vowels
# (U+17B4, U+17B5) and Mongolian's variation selectors. (tests/test_names.py checks that every
# whitespace and format character of this Python's Unicode is among them.)
_BLANK = (
    "[\\s\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0"
    "\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001345f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
_BLANK_RUN = re.compile(f"{_BLANK}{{{MAX_BLANKS + 1}}}")
# The blanks that str.isprintable() lets through, besides the space: the fillers and invisible marks.
_PRINTABLE_BLANK = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)
_ASCII_BLANK_RUN = re.compile(f"[ \t]{{{MAX_BLANKS + 1}}}")
_SPACES = " " * (MAX_BLANKS + 1)
TOO_MANY_BLANKS = f"too many blanks in a row (at most {MAX_BLANKS})"


# --- framing: bytes -> lines --------------------------------------------------------------


@dataclass(frozen=True)
class LineTooLong:
    """Marks a line that exceeded the limit; its bytes were dropped up to the next newline."""


class LineFramer:
    """Cut a TCP byte stream into lines.

    TCP delivers bytes, not messages: one ``recv()`` may hold half a line or three lines.
    ``feed()`` takes whatever arrived and returns the complete lines (without ``\\n`` or a
    trailing ``\\r``). A line longer than ``max_line`` bytes is reported once as
    :class:`LineTooLong` and its bytes are thrown away up to the next newline, so the framer
    never keeps more than ``max_line + 1`` bytes (a line and the ``\\r`` of its ``\\r\\n``)
    between calls, whatever a client sends.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._buffer = bytearray()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held for a line that has not ended yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        out: list[bytes | LineTooLong] = []
        *ended, rest = data.split(b"\n")  # every piece but the last ends with a newline
        for line in ended:
            if self._discarding:  # the end of a line already reported as too long
                self._discarding = False
                continue
            if self._buffer:  # the line began in an earlier read
                self._buffer += line
                line = bytes(self._buffer)
                self._buffer.clear()
            if line.endswith(b"\r"):
                line = line[:-1]
            out.append(line if len(line) <= self.max_line else LineTooLong())
        if rest and not self._discarding:  # the start of a line that has not ended yet
            self._buffer += rest
            # One byte of grace for the '\r' of a '\r\n' line end.
            if len(self._buffer) > self.max_line + self._buffer.endswith(b"\r"):
                self._buffer.clear()
                self._discarding = True
                out.append(LineTooLong())
        return out


# --- parsing: a line -> an event ---------------------------------------------------------
# The events are small records. They are not frozen: every line a server reads makes one, and a
# frozen dataclass takes twice as long to make (its __init__ must go around its own __setattr__).


@dataclass(slots=True)
class Register:
    """The first line of a session: the name the client wants."""

    name: str


@dataclass(slots=True)
class DirectMessage:
    """``%to%text``: deliver ``text`` to the client called ``to``."""

    to: str
    text: str


@dataclass(slots=True)
class Broadcast:
    """``%*%text``: deliver ``text`` to every other client."""

    text: str


@dataclass(slots=True)
class Command:
    """``%server%name``: ask the server something (``who``, ``help``)."""

    name: str


@dataclass(slots=True)
class Malformed:
    """A line the server refuses; ``reason`` is what the sender is told."""

    reason: str


Event = Register | DirectMessage | Broadcast | Command | Malformed


@functools.lru_cache(maxsize=4096)  # asked once per message, mostly for the same few names
def name_key(name: str) -> str:
    """A name's skeleton: what it looks like. Two names with one skeleton are one name.

    ``name_key("aIice") == name_key("alice") == name_key("ALICE_") == "allce"``: the server
    keeps one client per skeleton, and a message to any of them reaches that client.
    """
    return name.lower().translate(_LOOK_ALIKES).rstrip(_TRAILING)


def is_reserved(name: str) -> bool:
    """Whether nobody may have ``name``: it looks like ``server``, ``server...``, ``all`` or ``*``."""
    key = name_key(name)
    return key.startswith(SERVER_NAME) or key in RESERVED_NAMES


def name_error(name: str) -> str | None:
    """Why ``name`` cannot be used as a client name, or None if it can."""
    if not NAME_PATTERN.fullmatch(name):
        return f"invalid name {name!r}: use 1-32 characters from A-Z a-z 0-9 _ . -"
    if is_reserved(name):
        return f"invalid name {name!r}: reserved"
    return None


def unsafe_character(text: str) -> str | None:
    """The first character of ``text`` that could forge or garble a displayed line, if any.

    A tab is allowed, and so are the direction marks LRM, RLM and ALM; other control
    characters, line and paragraph separators and the bidi embeddings, overrides and isolates
    are not.
    """
    if text.isprintable():  # most lines: no control, format or separator character at all
        return None
    if text.isascii():  # a tab, maybe: one look for the others instead of one per character
        found = _ASCII_CONTROL.search(text)
        return found.group() if found else None
    for char in text:
        if char == "\t":
            continue
        if unicodedata.category(char) in _UNSAFE_CATEGORIES or char in _BIDI_CONTROLS:
            return char
    return None


def has_blank_run(text: str) -> bool:
    """Whether ``text`` holds more than :data:`MAX_BLANKS` blanks in a row (see ``_BLANK``)."""
    if _SPACES in text:  # the quick looks first: a substring test, then two that str makes in C
        return True
    if text.isascii():  # the blanks are spaces and tabs
        return "\t" in text and _ASCII_BLANK_RUN.search(text) is not None
    if text.isprintable() and _PRINTABLE_BLANK.search(text) is None:
        return False  # no blank but the space (every other whitespace or Cf is not printable)
    return _BLANK_RUN.search(text) is not None


def parse_line(raw: bytes | LineTooLong, *, registered: bool) -> Event:
    """Turn one framed line into an event.

    Before registration the line is the wanted name; afterwards it must have the form
    ``%name%text``. ``text`` may contain ``%`` and may be empty. A line that is too long, is
    not UTF-8 or holds an unsafe character is :class:`Malformed`, whatever it says, and so is
    a line after registration with more than :data:`MAX_BLANKS` blanks in a row.
    """
    if isinstance(raw, LineTooLong):
        return Malformed("line too long")
    try:
        text = raw.decode(ENCODING)
    except UnicodeDecodeError:
        return Malformed("invalid utf-8")
    if not text.isprintable() and unsafe_character(text) is not None:  # isprintable: the quick look
        return Malformed("control characters are not allowed")
    if not registered:
        name = text.strip()
        error = name_error(name)
        return Malformed(error) if error else Register(name)
    if has_blank_run(text):
        return Malformed(TOO_MANY_BLANKS)
    end_of_name = text.find(MESSAGE_SIGIL, 1)
    if not text.startswith(MESSAGE_SIGIL) or end_of_name < 2:
        return Malformed("expected %name%message")
    to, body = text[1:end_of_name], text[end_of_name + 1 :]
    key = to.lower()
    if key == SERVER_NAME:
        return Command(body.strip().lower())
    if key in BROADCAST_NAMES:
        return Broadcast(body)
    return DirectMessage(to, body)


# --- what the server says -------------------------------------------------------------------


def _line(text: str) -> bytes:
    return (text + "\n").encode(ENCODING)


def format_message(sender: str, text: str) -> bytes:
    """The line a receiver gets: ``%sender%text``."""
    return _line(f"{MESSAGE_SIGIL}{sender}{MESSAGE_SIGIL}{text}")


def format_notice(text: str) -> bytes:
    return _line(NOTICE_SIGIL + text)


def format_error(text: str) -> bytes:
    return _line(ERROR_SIGIL + text)


def format_online(names: list[str]) -> bytes:
    return format_notice("online: " + ", ".join(names))


GREETING = format_notice("chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter")
HELP = b"".join(
    format_notice(text)
    for text in (
        "%name%text sends text to name",
        "%*%text sends text to everyone else",
        "%server%who lists who is online",
        "%server%help shows this help",
    )
)
SERVER_FULL = format_error("server full")
NAME_TAKEN = format_error("name taken")


# A server started with a class code asks for it before the name (``--code``); the first line a
# client sends is then the code, and only the right one is greeted as above.
CODE_PROMPT_TEXT = "chatlab: this chat needs the class code; type it and press Enter"
CODE_PROMPT = format_notice(CODE_PROMPT_TEXT)
WRONG_CODE = format_error("wrong class code")
# What a TLS server tells a client that spoke plain text to it (in plain text, so nc shows it).
TLS_REQUIRED = format_error("this server speaks TLS: use openssl s_client, or the kit's client with --tls")


def code_matches(line: bytes | LineTooLong, code: str) -> bool:
    """Whether the line a client sent is the class code (spaces around it do not count).

    ``hmac.compare_digest`` takes as long however many leading bytes are right, so the time of
    the answer tells a guesser nothing about how close the guess was.
    """
    if isinstance(line, LineTooLong):
        return False
    return hmac.compare_digest(line.strip(), code.strip().encode(ENCODING))


def format_welcome(name: str, online: list[str]) -> bytes:
    """The two lines that end a registration: welcome, then who is online."""
    return format_notice(f"welcome {name}") + format_online(online)


def format_unknown_client(to: str) -> bytes:
    return format_error(f"unknown client {to!r}")


def format_unknown_command(command: str) -> bytes:
    return format_error(f"unknown command {command!r}; try %server%help")


# --- what a client sends and reads ------------------------------------------------------------


def format_outgoing(to: str, text: str) -> bytes:
    """The line a client sends to deliver ``text`` to ``to`` (``*`` for everyone)."""
    if "\n" in text or "\r" in text or "\n" in to or MESSAGE_SIGIL in to:
        raise ValueError("a message is one line, and a name holds no '%'")
    return _line(f"{MESSAGE_SIGIL}{to}{MESSAGE_SIGIL}{text}")


@dataclass(frozen=True)
class ServerLine:
    """One line from the server, sorted by its sigil.

    ``kind`` is ``"message"`` (with ``sender``), ``"notice"``, ``"error"`` or ``"other"``.
    """

    kind: str
    text: str
    sender: str | None = None


def parse_server_line(line: str) -> ServerLine:
    if line.startswith(MESSAGE_SIGIL):
        sender, separator, text = line[1:].partition(MESSAGE_SIGIL)
        if separator:
            return ServerLine("message", text, sender)
    if line.startswith(NOTICE_SIGIL):
        return ServerLine("notice", line[len(NOTICE_SIGIL) :])
    if line.startswith(ERROR_SIGIL):
        return ServerLine("error", line[len(ERROR_SIGIL) :])
    return ServerLine("other", line)


def parse_online(notice: str) -> list[str] | None:
    """The names in an ``online: a, b`` notice, or None for any other notice."""
    prefix = "online: "
    if not notice.startswith(prefix):
        return None
    rest = notice[len(prefix) :]
    return rest.split(", ") if rest else []
