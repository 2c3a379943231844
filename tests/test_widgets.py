"""The notebook widgets, driven the way a person drives them: set the text, pick a recipient,
click Send (or deliver the browser's Enter message). Real server on 127.0.0.1 port 0, real
clients, real ipywidgets; every wait is bounded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
from transcript import wait_until

from chatlab import ChatClient, ChatServer, NameRefused, kit_threads
from chatlab.servers import MODELS, server_class
from chatlab.widgets import ENTER_GRACE, ChatWidget, ServerDashboard, chat_row, close_all

# --- helpers and fixtures (local to this file) ----------------------------------------------


def type_and_send(widget: ChatWidget, text: str, to: str | None = None) -> None:
    """What a person does: pick a recipient (maybe), type, click Send."""
    if to is not None:
        widget.to.value = to
    widget.text.value = text
    widget.send_button.click()


def browser_message(widget, data: dict) -> None:
    """Deliver a comm message to a widget exactly as the kernel does for the browser's."""
    widget._handle_msg({"content": {"data": data}, "buffers": []})


def press_enter(widget: ChatWidget) -> None:
    browser_message(widget.text, {"method": "custom", "content": {"event": "submit"}})


def commit(widget: ChatWidget, text: str) -> None:
    """The browser commits the text box (on Enter, or when it loses focus)."""
    browser_message(widget.text, {"method": "update", "state": {"value": text}, "buffer_paths": []})


@pytest.fixture
def widgets_closed() -> Iterator[None]:
    """After the test, every widget and server is closed (conftest then checks no thread is left)."""
    yield
    close_all()
    ChatServer.stop_all()


@pytest.fixture
def server(widgets_closed: None) -> Iterator[ChatServer]:
    server = ChatServer("127.0.0.1", 0).start()
    yield server
    server.stop()


@pytest.fixture
def chat(server: ChatServer) -> Callable[[str], ChatWidget]:
    """``chat("alice")`` opens a ChatWidget on the test's server (closed after the test)."""
    return lambda name: ChatWidget(server.host, server.port, name)


@pytest.fixture
def trio(chat: Callable[[str], ChatWidget]) -> tuple[ChatWidget, ChatWidget, ChatWidget]:
    """alice, bob and carol, each knowing that the other two are online."""
    alice, bob, carol = chat("alice"), chat("bob"), chat("carol")
    alice.wait_for("* carol joined")
    bob.wait_for("* carol joined")
    return alice, bob, carol


# --- chatting -----------------------------------------------------------------------------------


def test_a_message_typed_and_sent_reaches_the_other_widgets_log(trio):
    alice, bob, carol = trio
    type_and_send(alice, "hi bob", to="bob")
    assert bob.wait_for("hi bob") == "← alice: hi bob"
    assert alice.transcript()[-1] == "→ bob: hi bob"
    assert alice.text.value == "", "the box is cleared once sent"


def test_the_log_starts_with_the_registration_lines(trio):
    alice, bob, carol = trio
    assert carol.transcript() == ["* welcome carol", "* online: alice, bob, carol"]
    assert alice.transcript() == ["* welcome alice", "* online: alice", "* bob joined", "* carol joined"]


def test_a_line_starting_with_percent_is_sent_as_written(trio):
    alice, bob, carol = trio
    type_and_send(alice, "%bob%hi from the line", to="carol")  # the picker is ignored
    bob.wait_for("hi from the line")
    type_and_send(alice, "%server%who")
    alice.wait_for("→ %server%who")
    alice.wait_for("* online: alice, bob, carol")
    type_and_send(alice, "%*%barrier")
    carol.wait_for("barrier")
    assert alice.transcript()[-4:] == [
        "→ %bob%hi from the line",
        "→ %server%who",
        "* online: alice, bob, carol",
        "→ %*%barrier",
    ]
    assert not any("hi from the line" in line for line in carol.transcript())


def test_plain_text_goes_to_the_picked_recipient_only(trio):
    alice, bob, carol = trio
    type_and_send(alice, "for carol only", to="carol")
    assert carol.wait_for("for carol only") == "← alice: for carol only"
    # alice's lines reach the server, and bob, in order: once the broadcast after it arrived,
    # the private message would have arrived too if it had been sent to bob.
    type_and_send(alice, "barrier", to="everyone")
    bob.wait_for("barrier")
    assert not any("for carol only" in line for line in bob.transcript())
    assert alice.transcript()[-2:] == ["→ carol: for carol only", "→ everyone: barrier"]


def test_everyone_broadcasts_to_the_others_but_not_to_the_sender(trio):
    alice, bob, carol = trio
    type_and_send(bob, "hello all", to="everyone")
    assert alice.wait_for("hello all") == "← bob: hello all"
    assert carol.wait_for("hello all") == "← bob: hello all"
    type_and_send(bob, "%alice%barrier")
    alice.wait_for("barrier")
    assert bob.transcript()[-2:] == ["→ everyone: hello all", "→ %alice%barrier"]


def test_an_unknown_recipient_is_an_error_entry_in_the_senders_log_only(trio):
    alice, bob, carol = trio
    type_and_send(alice, "%zed%anyone there?")
    assert alice.wait_for("unknown client") == "! unknown client 'zed'"
    assert alice.transcript()[-2:] == ["→ %zed%anyone there?", "! unknown client 'zed'"]
    assert "color:var(--jp-error-color1" in alice.chat_log.value, "errors have their own colour"
    type_and_send(alice, "barrier", to="everyone")
    bob.wait_for("barrier")
    carol.wait_for("barrier")
    assert not any("zed" in line for line in bob.transcript() + carol.transcript())


def test_empty_text_sends_nothing(trio):
    alice, bob, carol = trio
    before = alice.transcript()
    type_and_send(alice, "   ")
    assert alice.transcript() == before


def test_text_is_escaped_in_the_html_log(trio):
    alice, bob, carol = trio
    type_and_send(alice, "<b>not bold</b> & more", to="bob")
    bob.wait_for("not bold")
    assert "&lt;b&gt;not bold&lt;/b&gt; &amp; more" in bob.chat_log.value
    assert "<b>not bold</b>" not in bob.chat_log.value


def test_every_entry_has_a_hanging_indent_so_a_wrapped_row_never_starts_where_entries_do(trio):
    alice, bob, carol = trio
    type_and_send(alice, "x" * 300 + "← teacher: the quiz is moved to Friday", to="bob")
    bob.wait_for("the quiz")
    entries = bob.chat_log.value.count('<div style="padding-left:2em;text-indent:-2em;')
    assert entries == len(bob.transcript()) > 0


def test_message_text_is_shown_isolated_so_it_cannot_reorder_the_sender_name(trio):
    alice, bob, carol = trio
    hebrew = "\u05e9\u05dc\u05d5\u05dd\u200f"  # "hello" and a right-to-left mark
    type_and_send(alice, hebrew, to="bob")
    assert bob.wait_for(hebrew) == f"← alice: {hebrew}"
    assert f"← alice: <bdi>{hebrew}</bdi>" in bob.chat_log.value
    assert f"→ bob: <bdi>{hebrew}</bdi>" in alice.chat_log.value


# --- Enter, as the browser reports it ------------------------------------------------------------


def test_enter_then_commit_sends_once(trio):
    """The browser sends "submit" first, then commits the box; the kernel's loop is running."""
    alice, bob, carol = trio
    alice.to.value = "bob"

    async def browser() -> None:
        press_enter(alice)
        commit(alice, "sent with Enter")
        await asyncio.sleep(ENTER_GRACE + 0.2)  # the grace timer fires and finds nothing to do

    asyncio.run(browser())
    assert bob.wait_for("sent with Enter") == "← alice: sent with Enter"
    type_and_send(alice, "%bob%barrier")
    bob.wait_for("barrier")
    assert [line for line in bob.transcript() if "Enter" in line] == ["← alice: sent with Enter"]
    assert alice.text.value == ""


def test_enter_without_a_new_commit_sends_the_draft_after_the_grace(trio):
    """Typed, then the box lost focus (commit, no Enter: a draft, not sent), then Enter."""
    alice, bob, carol = trio
    commit(alice, "draft")
    alice.to.value = "carol"
    type_and_send(alice, "%carol%barrier")  # clears the box... so commit the draft again
    carol.wait_for("barrier")
    commit(alice, "draft")
    assert "→ carol: draft" not in alice.transcript(), "a commit without Enter does not send"

    async def browser() -> None:
        press_enter(alice)
        await asyncio.sleep(ENTER_GRACE + 0.3)

    asyncio.run(browser())
    assert carol.wait_for("draft") == "← alice: draft"


def test_enter_from_code_sends_what_is_in_the_box(trio):
    alice, bob, carol = trio
    alice.text.value = "%carol%enter from code"
    press_enter(alice)  # no event loop running: sent at once
    assert carol.wait_for("enter from code") == "← alice: enter from code"


# --- the recipient picker ---------------------------------------------------------------------------


def test_the_recipient_picker_follows_joins_and_leaves(chat):
    alice = chat("alice")
    assert alice.recipients == ["everyone"]
    bob = chat("bob")
    alice.wait_for("* bob joined")
    assert alice.recipients == ["everyone", "bob"]
    assert bob.recipients == ["everyone", "alice"]
    alice.to.value = "bob"
    carol = chat("carol")
    alice.wait_for("* carol joined")
    assert alice.recipients == ["everyone", "bob", "carol"]
    assert alice.to.value == "bob", "a join keeps the picked recipient"
    bob.close()
    alice.wait_for("* bob left")
    assert alice.recipients == ["everyone", "carol"]
    assert alice.to.value == "everyone", "a picked recipient who left falls back to everyone"
    carol.wait_for("* bob left")
    assert carol.recipients == ["everyone", "alice"]


# --- names, closing, re-creating ----------------------------------------------------------------------


def test_a_refused_name_raises_the_clients_exception_and_leaves_nothing(server, chat):
    with ChatClient(server.host, server.port, "alice"):
        before = kit_threads()
        with pytest.raises(NameRefused, match="name taken"):
            chat("alice")
        with pytest.raises(NameRefused, match="invalid name"):
            chat("not a name")
        assert not [
            name
            for name in kit_threads()
            if name not in before and "client-" not in name and "writer-" not in name
        ], "no widget or reader thread was started"
        wait_until(lambda: kit_threads() == before, message="the server let the refused ones go")


def test_the_server_stopping_shows_in_the_log_and_disables_sending(server, trio):
    alice, bob, carol = trio
    server.stop()
    for widget in trio:
        assert widget.wait_for("(connection closed)") == "(connection closed)"
        assert widget.closed
        assert widget.send_button.disabled and widget.text.disabled and widget.to.disabled
    alice.text.value = "anyone?"
    alice.submit()
    assert alice.transcript()[-2:] == ["(connection closed)", "! not connected"]
    assert repr(alice) == "ChatWidget(name='alice', closed)"


def test_re_creating_a_widget_replaces_the_open_one(server, chat):
    old = chat("alice")
    bob = chat("bob")
    new = chat("alice")  # a re-run cell: the old alice is closed, the name is free again
    assert old.closed and not new.closed
    bob.wait_for("* alice left")
    type_and_send(new, "I am back", to="bob")
    assert bob.wait_for("I am back") == "← alice: I am back"
    assert server.online() == ["alice", "bob"]
    assert kit_threads().count("chatlab-widget-alice") == 1


def test_closing_widgets_leaves_no_threads(server, trio):
    assert [name for name in kit_threads() if "-widget-" in name] == [
        "chatlab-widget-alice",
        "chatlab-widget-bob",
        "chatlab-widget-carol",
    ]
    alice, bob, carol = trio
    alice.close()
    assert "chatlab-widget-alice" not in kit_threads()
    assert "chatlab-reader-alice" not in kit_threads()
    assert close_all() == 2
    wait_until(lambda: kit_threads() == ["chatlab-accept"], message="the server saw everyone leave")
    assert server.online() == []


def test_from_client_shows_a_client_that_already_exists(server, chat):
    client = ChatClient(server.host, server.port, "dave")
    dave = ChatWidget.from_client(client)
    bob = chat("bob")
    type_and_send(bob, "hi dave", to="everyone")
    assert dave.wait_for("hi dave") == "← bob: hi dave"
    dave.close()
    assert client.closed


def test_widgets_show_a_stable_text_repr_and_sit_side_by_side(trio):
    alice, bob, carol = trio
    row = chat_row(alice, bob, carol)
    assert row.children == (alice, bob, carol)
    assert repr(alice) == "ChatWidget(name='alice', connected)"
    assert repr(row).startswith("HBox(children=(ChatWidget(name='alice', connected), ")
    assert "chatlab-chat" in alice._dom_classes
    assert "chatlab-alice-text" in alice.text._dom_classes
    assert "chatlab-alice-log" in alice.chat_log._dom_classes


# --- the dashboard --------------------------------------------------------------------------------------


def test_dashboard_tables_and_summary_match_the_server(server, trio):
    alice, bob, carol = trio
    dashboard = ServerDashboard(server)
    type_and_send(alice, "one", to="bob")
    type_and_send(alice, "two", to="everyone")
    type_and_send(bob, "%zed%three")
    bob.wait_for("two")
    carol.wait_for("two")
    bob.wait_for("unknown client")
    dashboard.refresh()
    records = server.clients()
    assert [r.name for r in records] == ["alice", "bob", "carol"]
    assert dashboard.summary() == "\n".join(
        [
            "server: running, 3 online: alice, bob, carol",
            "  alice: sent 2, received 0",
            "  bob: sent 0, received 2",
            "  carol: sent 0, received 1",
            "events: connections 3, joined 3, left 0, messages 2 (1 broadcast), errors 1",
        ]
    )
    clients = dashboard.clients_table.value
    for r in records:
        assert f">{r.name}<" in clients and f">{r.port}<" in clients and f">{r.fd}<" in clients
        assert f">chatlab-client-{r.name}<" in clients
    sockets = dashboard.sockets_table.value
    assert f"127.0.0.1:{server.port}" in sockets
    for r in records:
        assert f"127.0.0.1:{r.port}" in sockets
    threads = dashboard.threads_table.value
    for name in kit_threads():
        assert f">{name}<" in threads
    assert "chatlab-dashboard" in threads
    assert "running" in dashboard.status.value and f"127.0.0.1:{server.port}" in dashboard.status.value
    assert "alice → bob: one" in dashboard.feed.value
    assert "! bob: unknown client 'zed'" in dashboard.feed.value
    assert repr(dashboard) == "ServerDashboard(running)"


def test_dashboard_redraws_by_itself_and_coalesces_bursts(server, trio):
    alice, bob, carol = trio
    dashboard = ServerDashboard(server)
    start = dashboard.redraws
    for i in range(100):
        alice.client.send("bob", f"burst {i}")
    bob.wait_for("burst 99")
    wait_until(lambda: "messages 100 " in dashboard.status.value, message="the live redraw")
    redraws = dashboard.redraws - start
    assert 1 <= redraws < 50, f"{redraws} redraws for 100 messages"
    assert dashboard.clients_table.value.count(">100<") == 2  # alice sent 100, bob received 100


def test_dashboard_stop_and_start_buttons(server, trio):
    alice, bob, carol = trio
    dashboard = ServerDashboard(server)
    assert dashboard.start_button.disabled and not dashboard.stop_button.disabled
    dashboard.stop_button.click()
    assert not server.running and server.threads() == []
    assert "stopped" in dashboard.status.value and "no clients" in dashboard.clients_table.value
    assert dashboard.stop_button.disabled and not dashboard.start_button.disabled
    for widget in trio:
        widget.wait_for("(connection closed)")
    wait_until(lambda: kit_threads() == ["chatlab-dashboard"], message="only the dashboard's thread")
    assert dashboard.summary().splitlines()[0] == "server: stopped, 0 online: nobody"

    dashboard.start_button.click()
    assert server.running and "running" in dashboard.status.value
    assert dashboard.start_button.disabled and not dashboard.stop_button.disabled
    dave = ChatWidget(server.host, server.port, "dave")  # port 0: a fresh port
    wait_until(lambda: ">dave<" in dashboard.clients_table.value, message="dave in the table")
    dave.close()
    dashboard.close()
    server.stop()
    assert kit_threads() == []


def test_closing_the_dashboard_stops_its_thread_and_its_updates(server, chat):
    dashboard = ServerDashboard(server)
    assert "chatlab-dashboard" in kit_threads()
    dashboard.close()
    assert "chatlab-dashboard" not in kit_threads()
    assert server.room._subscribers == ()  # it no longer listens to the server's events
    redraws = dashboard.redraws
    alice = chat("alice")
    chat("bob")
    alice.wait_for("* bob joined")
    time.sleep(0.3)  # longer than a throttled redraw takes: none may come
    assert dashboard.redraws == redraws


def test_a_new_dashboard_of_the_same_server_replaces_the_old(server):
    first = ServerDashboard(server)
    second = ServerDashboard(server)
    assert kit_threads().count("chatlab-dashboard") == 1
    assert first.comm is None and second.comm is not None


@pytest.mark.parametrize("model", list(MODELS))
def test_the_dashboard_shows_a_server_of_every_model(widgets_closed, model):
    server = server_class(model)("127.0.0.1", 0).start()
    alice = ChatClient(server.host, server.port, "alice")
    bob = ChatClient(server.host, server.port, "bob")
    try:
        dashboard = ServerDashboard(server)
        alice.send("bob", "hi")
        assert bob.recv(timeout=2) == "%alice%hi"
        dashboard.refresh()
        assert dashboard.summary() == "\n".join(
            [
                "server: running, 2 online: alice, bob",
                "  alice: sent 1, received 0",
                "  bob: sent 0, received 1",
                "events: connections 2, joined 2, left 0, messages 1 (0 broadcast), errors 0",
            ]
        )
        status = dashboard.status.value
        assert f"127.0.0.1:{server.port}" in status and server.describe() in status
        if model == "threads":
            assert "queue delivery" in status
        threads = dashboard.threads_table.value
        for thread in server.threads():  # chatlab-accept and one per client, or the loop's one
            assert f">{thread.name}<" in threads
        for record in server.clients():
            assert f">{record.thread.name}<" in dashboard.clients_table.value
        for record in server.clients():
            assert f"127.0.0.1:{record.port}" in dashboard.sockets_table.value
        dashboard.stop_button.click()
        assert not server.running and "stopped" in dashboard.status.value
    finally:
        alice.close()
        bob.close()
        server.stop()


def test_a_closed_widget_collected_while_the_widget_list_is_in_use_deadlocks_nothing():
    """The garbage collector may finalize a closed widget at any moment (ipywidgets' __del__
    closes it again), also while this thread holds the module's list lock: that once hung the
    whole test suite. Run in a child process, so that a hang fails this test and only it."""
    program = textwrap.dedent("""
        import gc
        from chatlab import ChatServer, widgets
        with ChatServer("127.0.0.1", 0) as server:
            holder = [widgets.ChatWidget(server.host, server.port, "ghost")]
            holder[0].close()
            with widgets._open_lock:
                holder.clear()  # the last reference: its __del__ runs here, with the lock held
                gc.collect()
        print("no deadlock")
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "no deadlock\n", done.stderr
