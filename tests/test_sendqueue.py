"""The broker's send queue on its own: order, and which thread sends (no Redis: it is given
the function that sends a batch)."""

from __future__ import annotations

import threading

import pytest
from transcript import wait_until

from chatlab.sendqueue import SendQueue


class Sent:
    """A send function that keeps every batch and the name of the thread that sent it; with
    ``hold`` set, it waits (bounded) for ``release`` before returning from its first batch."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.sending = threading.Event()
        self.release = threading.Event()
        self.hold = hold

    def __call__(self, batch: list[int]) -> None:
        self.batches.append((threading.current_thread().name, batch))
        self.sending.set()
        if self.hold and len(self.batches) == 1:
            assert self.release.wait(10), "the test never released the first send"

    def items(self) -> list[int]:
        return [item for _thread, batch in self.batches for item in batch]


def start_sender(queue: SendQueue[int]) -> threading.Thread:
    thread = threading.Thread(target=queue.run, name="chatlab-test-sender", daemon=True)
    thread.start()
    return thread


def test_flush_sends_in_the_calling_thread_when_nobody_else_is_sending():
    sent = Sent()
    queue: SendQueue[int] = SendQueue(sent, batch=500)
    for item in range(3):
        queue.put(item, wake=False)
    assert len(queue) == 3
    queue.flush()
    assert sent.batches == [(threading.current_thread().name, [0, 1, 2])] and len(queue) == 0
    queue.flush()  # nothing queued: nothing sent
    assert len(sent.batches) == 1


def test_a_batch_holds_at_most_batch_items_in_order():
    sent = Sent()
    queue: SendQueue[int] = SendQueue(sent, batch=2)
    for item in range(5):
        queue.put(item, wake=False)
    sender = start_sender(queue)
    queue.close()
    sender.join(10)
    assert not sender.is_alive()
    assert [batch for _thread, batch in sent.batches] == [[0, 1], [2, 3], [4]]


def test_while_a_send_is_under_way_flush_leaves_the_items_to_the_sender_thread():
    sent = Sent(hold=True)
    queue: SendQueue[int] = SendQueue(sent, batch=500)
    sender = start_sender(queue)
    queue.put(1)  # woken, the sender thread takes it and is held in its send
    assert sent.sending.wait(10)
    queue.put(2, wake=False)
    queue.flush()  # a client's thread: it must not wait behind the sender's batch
    assert sent.batches == [("chatlab-test-sender", [1])] and len(queue) == 1
    sent.release.set()
    wait_until(lambda: sent.items() == [1, 2], timeout=10)
    assert sent.batches[1] == ("chatlab-test-sender", [2])
    queue.close()
    sender.join(10)
    assert not sender.is_alive()


def test_close_lets_the_sender_finish_what_was_queued_before():
    sent = Sent()
    queue: SendQueue[int] = SendQueue(sent, batch=500)
    for item in range(4):
        queue.put(item)
    sender = start_sender(queue)
    queue.close()
    sender.join(10)
    assert not sender.is_alive() and sent.items() == [0, 1, 2, 3]


def test_a_send_that_raises_does_not_stop_the_queue():
    calls: list[list[int]] = []

    def send(batch: list[int]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("a bug in the send function")

    queue: SendQueue[int] = SendQueue(send, batch=500)
    queue.put(1, wake=False)
    with pytest.raises(RuntimeError):
        queue.flush()
    queue.put(2, wake=False)
    queue.flush()  # not stuck "sending" for ever
    assert calls == [[1], [2]]
