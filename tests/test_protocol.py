"""The line protocol on its own: bytes in, events out, no sockets and no threads."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatlab import protocol
from chatlab.protocol import (
    Broadcast,
    Command,
    DirectMessage,
    LineFramer,
    LineTooLong,
    Malformed,
    Register,
    ServerLine,
    parse_line,
    parse_server_line,
)

TOO_LONG = LineTooLong()
NAME_RULE = "use 1-32 characters from A-Z a-z 0-9 _ . -"
CONTROL = Malformed("control characters are not allowed")
NO_RECIPIENT = Malformed("expected %name%message")

# --- framing: bytes -> lines ------------------------------------------------------------------


def test_complete_lines_come_out_without_their_line_end():
    framer = LineFramer()
    assert framer.feed(b"alice\n%bob%hi\n") == [b"alice", b"%bob%hi"]
    assert framer.pending == 0


def test_a_crlf_line_end_is_accepted_and_only_one_cr_is_removed():
    framer = LineFramer()
    assert framer.feed(b"alice\r\n%bob%hi\r\n") == [b"alice", b"%bob%hi"]
    assert framer.feed(b"x\r\r\n") == [b"x\r"]  # the extra \r is content: parse_line refuses it
    assert framer.feed(b"a\rb\n") == [b"a\rb"]


def test_an_empty_line_is_a_line():
    assert LineFramer().feed(b"\n\r\n") == [b"", b""]


def test_a_line_split_over_chunks_comes_out_once_it_is_complete():
    framer = LineFramer()
    assert framer.feed(b"%bo") == []
    assert framer.pending == 3
    assert framer.feed(b"b%h") == []
    assert framer.feed(b"i\r") == []
    assert framer.feed(b"\n%car") == [b"%bob%hi"]
    assert framer.pending == 4
    assert framer.feed(b"ol%yo\n") == [b"%carol%yo"]
    assert framer.pending == 0


def test_lines_merged_in_one_chunk_all_come_out_in_order():
    framer = LineFramer()
    assert framer.feed(b"one\ntwo\r\nthree\nfou") == [b"one", b"two", b"three"]
    assert framer.feed(b"r\n") == [b"four"]


def test_a_line_of_exactly_max_line_bytes_is_accepted():
    framer = LineFramer(max_line=8)
    assert framer.feed(b"x" * 8 + b"\n") == [b"x" * 8]
    assert framer.feed(b"y" * 8 + b"\r\n") == [b"y" * 8]  # the \r of \r\n does not count
    assert framer.feed(b"z" * 7 + b"\r\r\n") == [b"z" * 7 + b"\r"]


def test_one_byte_over_max_line_is_reported_once_and_the_rest_of_the_line_dropped():
    framer = LineFramer(max_line=8)
    assert framer.feed(b"x" * 9) == [TOO_LONG]
    assert framer.pending == 0
    assert framer.feed(b"still the same long line") == []  # dropped, not reported again
    assert framer.feed(b" ends here\nok\n") == [b"ok"]
    assert framer.feed(b"y" * 8 + b"\r!\n") == [TOO_LONG]  # a \r inside the line counts
    assert framer.feed(b"y" * 9 + b"\r\nafter\n") == [TOO_LONG, b"after"]


def test_a_long_line_over_several_chunks_is_reported_once():
    framer = LineFramer(max_line=8)
    assert framer.feed(b"x" * 5) == []
    assert framer.feed(b"x" * 5) == [TOO_LONG]
    for _ in range(10):
        assert framer.feed(b"x" * 100) == []
    assert framer.feed(b"x\nnext\n") == [b"next"]


def test_the_framer_never_holds_more_than_max_line_bytes():
    framer = LineFramer(max_line=16)
    assert framer.feed(b"x" * (1 << 20)) == [TOO_LONG]  # 1 MiB and no newline
    assert framer.pending <= 16 + 1
    assert framer.feed(b"x" * (1 << 20)) == []
    assert framer.pending <= 16 + 1
    assert framer.feed(b"\n" + b"x" * 16 + b"\r") == []  # the newline ends the dropped line
    assert framer.pending == 17  # a full line plus the \r that may start its \r\n
    assert framer.feed(b"\n") == [b"x" * 16]


def test_max_line_must_be_positive():
    with pytest.raises(ValueError):
        LineFramer(max_line=0)


def expected_events(lines: list[bytes], tail: bytes, max_line: int) -> list[bytes | LineTooLong]:
    """What the framer should make of ``lines`` (each without its \\n; a final \\r is part of
    a \\r\\n line end) followed by an unfinished ``tail``, worked out without the framer."""
    events: list[bytes | LineTooLong] = []
    for line in lines:
        content = line[:-1] if line.endswith(b"\r") else line
        events.append(TOO_LONG if len(content) > max_line else content)
    # An unfinished line is reported as soon as it is too long, even without its \r\n yet.
    unfinished = tail[:-1] if tail.endswith(b"\r") else tail
    if len(unfinished) > max_line:
        events.append(TOO_LONG)
    return events


def feed_all(framer: LineFramer, chunks: list[bytes]) -> list[bytes | LineTooLong]:
    events: list[bytes | LineTooLong] = []
    for chunk in chunks:
        events += framer.feed(chunk)
        assert framer.pending <= framer.max_line + 1
    return events


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


line_content = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"."))


@settings(max_examples=300, deadline=None)
@given(
    contents=st.lists(line_content, max_size=12),
    crlf=st.lists(st.booleans(), min_size=12, max_size=12),
    tail=line_content,
    max_line=st.integers(min_value=1, max_value=24),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_any_chunking_gives_the_same_events_as_feeding_it_whole(contents, crlf, tail, max_line, cuts):
    # crlf has 12 flags, one for each line there can be
    lines = [c + b"\r" if use_crlf else c for c, use_crlf in zip(contents, crlf, strict=False)]
    stream = b"".join(line + b"\n" for line in lines) + tail

    whole = LineFramer(max_line)
    events = feed_all(whole, [stream])
    assert events == expected_events(lines, tail, max_line)

    chunked = LineFramer(max_line)
    assert feed_all(chunked, cut(stream, cuts)) == events
    assert chunked.pending == whole.pending


SAMPLE_STREAM = (
    b"alice\r\n%bob%hi\n"
    + b"x" * 40
    + b"\n%*%after the long one\r\n\n"
    + b"y" * 31
    + b"\r\n"
    + b"z" * 32
    + b"\r\n%server%who\n"
    + b"w" * 100
)


def test_a_stream_trickled_one_byte_at_a_time_gives_the_same_events():
    whole = LineFramer(max_line=31).feed(SAMPLE_STREAM)
    assert whole == [
        b"alice",
        b"%bob%hi",
        TOO_LONG,
        b"%*%after the long one",
        b"",
        b"y" * 31,
        TOO_LONG,
        b"%server%who",
        TOO_LONG,
    ]
    trickle = LineFramer(max_line=31)
    assert feed_all(trickle, [SAMPLE_STREAM[i : i + 1] for i in range(len(SAMPLE_STREAM))]) == whole


# --- parsing: a line -> an event ----------------------------------------------------------------


def test_before_registration_a_line_is_the_wanted_name():
    assert parse_line(b"alice", registered=False) == Register("alice")
    assert parse_line(b"  alice\t", registered=False) == Register("alice")
    assert parse_line(b"A.b-c_9", registered=False) == Register("A.b-c_9")


@pytest.mark.parametrize(
    "line, event",
    [
        (b"%bob%hi bob", DirectMessage("bob", "hi bob")),
        (b"%bob%", DirectMessage("bob", "")),
        (b"%bob%50% done? %carol%", DirectMessage("bob", "50% done? %carol%")),
        (b"%bob%%carol%fake", DirectMessage("bob", "%carol%fake")),
        (b"%bob%\ttabbed", DirectMessage("bob", "\ttabbed")),
        ("%bob%caf\u00e9 \U0001f600".encode(), DirectMessage("bob", "caf\u00e9 \U0001f600")),
        (b"%zed%anyone?", DirectMessage("zed", "anyone?")),
        (b"%*%hello all", Broadcast("hello all")),
        (b"%all%hello all", Broadcast("hello all")),
        (b"%ALL%", Broadcast("")),
        (b"%server%who", Command("who")),
        (b"%Server% WHO ", Command("who")),
        (b"%server%help", Command("help")),
        (b"%server%dance", Command("dance")),
        (b"%server%", Command("")),
        (b"hello?", NO_RECIPIENT),
        (b"", NO_RECIPIENT),
        (b"%bob", NO_RECIPIENT),
        (b"%%no name", NO_RECIPIENT),
        (b"bob%hi", NO_RECIPIENT),
    ],
)
def test_after_registration_every_kind_of_line(line, event):
    assert parse_line(line, registered=True) == event


def test_a_line_too_long_is_malformed_either_way():
    assert parse_line(TOO_LONG, registered=False) == Malformed("line too long")
    assert parse_line(TOO_LONG, registered=True) == Malformed("line too long")


@pytest.mark.parametrize("line", [b"\xff", b"%bob%caf\xe9", b"%bob%\xc3", b"%bob%\xed\xa0\x80", b"\xc0\xaf"])
@pytest.mark.parametrize("registered", [False, True])
def test_invalid_utf8_is_malformed(line, registered):
    assert parse_line(line, registered=registered) == Malformed("invalid utf-8")


UNSAFE = [
    "\r",
    "\x1b",
    "\x00",
    "\x07",
    "\x08",
    "\x0b",
    "\x0c",
    "\x7f",
    "\x85",
    "\x9b",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",  # bidi embeddings and overrides
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
]  # bidi isolates


@pytest.mark.parametrize("char", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
def test_unsafe_characters_are_refused_anywhere(char):
    assert protocol.unsafe_character(f"ok{char}ok") == char
    assert parse_line(f"%bob%hi{char}%server%x".encode(), registered=True) == CONTROL
    assert parse_line(f"%bob%{char}".encode(), registered=True) == CONTROL
    assert parse_line(f"bob{char}".encode(), registered=False) == CONTROL


@pytest.mark.parametrize(
    "text", ["tab\there", "emoji \U0001f600", "caf\u00e9", "\u4e2d\u6587", "50% %x%", ""]
)
def test_tabs_emoji_and_percent_signs_are_fine(text):
    assert protocol.unsafe_character(text) is None
    assert parse_line(f"%bob%{text}".encode(), registered=True) == DirectMessage("bob", text)


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "Z", "0", "x" * 32, "al.ice_-9", "...", "Serve2", "allan"])
def test_valid_names(name):
    assert protocol.name_error(name) is None
    assert parse_line(name.encode(), registered=False) == Register(name)


@pytest.mark.parametrize("name", ["", "x" * 33, "two words", "al%ice", "b\u00f6b", "bob!", "*", "a/b"])
def test_names_outside_the_rules(name):
    assert protocol.name_error(name) == f"invalid name {name!r}: {NAME_RULE}"


@pytest.mark.parametrize("name", ["server", "SERVER", "Server", "all", "ALL", "aLL", "Server2"])
def test_reserved_names_in_any_case(name):
    assert protocol.name_error(name) == f"invalid name {name!r}: reserved"
    assert parse_line(name.encode(), registered=False) == Malformed(f"invalid name {name!r}: reserved")


def test_a_refused_name_line_says_why():
    assert parse_line(b"", registered=False) == Malformed(f"invalid name '': {NAME_RULE}")
    assert parse_line(b"%bob%hi", registered=False) == Malformed(f"invalid name '%bob%hi': {NAME_RULE}")


# --- what the server says ----------------------------------------------------------------------


def test_the_servers_lines():
    assert protocol.format_message("alice", "hi 50%") == b"%alice%hi 50%\n"
    assert protocol.format_message("alice", "") == b"%alice%\n"
    assert protocol.format_notice("bob joined") == b"* bob joined\n"
    assert protocol.format_error("line too long") == b"! line too long\n"
    assert protocol.format_online(["alice", "bob"]) == b"* online: alice, bob\n"
    assert protocol.format_online([]) == b"* online: \n"
    assert protocol.format_welcome("bob", ["alice", "bob"]) == b"* welcome bob\n* online: alice, bob\n"
    assert protocol.format_unknown_client("zed") == b"! unknown client 'zed'\n"
    assert protocol.format_unknown_command("dance") == b"! unknown command 'dance'; try %server%help\n"
    assert protocol.SERVER_FULL == b"! server full\n"
    assert protocol.NAME_TAKEN == b"! name taken\n"
    assert protocol.GREETING == b"* chatlab: type your name (1-32 of A-Z a-z 0-9 _ . -) and press Enter\n"
    assert protocol.HELP.decode().splitlines() == [
        "* %name%text sends text to name",
        "* %*%text sends text to everyone else",
        "* %server%who lists who is online",
        "* %server%help shows this help",
    ]


def test_what_a_client_sends():
    assert protocol.format_outgoing("bob", "hi") == b"%bob%hi\n"
    assert protocol.format_outgoing("*", "all of you") == b"%*%all of you\n"
    assert protocol.format_outgoing("bob", "50% %x%") == b"%bob%50% %x%\n"
    for to, text in [("bob", "two\nlines"), ("bob", "a\rb"), ("b%ob", "hi"), ("bo\nb", "hi")]:
        with pytest.raises(ValueError):
            protocol.format_outgoing(to, text)


@pytest.mark.parametrize(
    "line, parsed",
    [
        ("%alice%hi", ServerLine("message", "hi", "alice")),
        ("%alice%", ServerLine("message", "", "alice")),
        ("%alice%%carol%fake", ServerLine("message", "%carol%fake", "alice")),
        ("* bob joined", ServerLine("notice", "bob joined")),
        ("* online: alice, bob", ServerLine("notice", "online: alice, bob")),
        ("! name taken", ServerLine("error", "name taken")),
        ("%broken", ServerLine("other", "%broken")),
        ("*no space", ServerLine("other", "*no space")),
        ("hello", ServerLine("other", "hello")),
        ("", ServerLine("other", "")),
    ],
)
def test_parse_server_line(line, parsed):
    assert parse_server_line(line) == parsed


def test_parse_online():
    assert protocol.parse_online("online: alice, bob") == ["alice", "bob"]
    assert protocol.parse_online("online: alice") == ["alice"]
    assert protocol.parse_online("online: ") == []
    assert protocol.parse_online("welcome alice") is None


names = st.from_regex(r"[A-Za-z0-9_.-]{1,32}", fullmatch=True).filter(
    lambda n: protocol.name_error(n) is None
)
safe_text = st.text(max_size=60).filter(
    lambda t: protocol.unsafe_character(t) is None and not protocol.has_blank_run(t)
)


@settings(max_examples=100, deadline=None)
@given(to=names, sender=names, text=safe_text)
def test_a_message_survives_the_round_trip(to, sender, text):
    sent = protocol.format_outgoing(to, text)
    (line,) = LineFramer().feed(sent)
    assert parse_line(line, registered=True) == DirectMessage(to, text)
    received = protocol.format_message(sender, text).decode()
    assert received.endswith("\n") and received.count("\n") == 1
    assert parse_server_line(received[:-1]) == ServerLine("message", text, sender)


@pytest.mark.parametrize(
    "text",
    ["\u05e9\u05dc\u05d5\u05dd\u200f!", "abc\u200edef", "\u0633\u0644\u0627\u0645\u061c 1"],
    ids=["hebrew-RLM", "LRM", "arabic-ALM"],
)
def test_direction_marks_are_ordinary_text(text):
    """LRM, RLM and ALM are part of normal Hebrew, Arabic and Persian writing: not refused."""
    assert protocol.unsafe_character(text) is None
    assert parse_line(f"%bob%{text}".encode(), registered=True) == DirectMessage("bob", text)
