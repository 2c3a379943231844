"""The broker's send queue: one queue, and one thread at a time sending from its front.

What a server's room hands over for the other servers (:mod:`chatlab.broker`) waits here, in
order, until it is sent. Only one thread sends at a time, taking the first items of the queue,
so the queue's order is the order in which they go out. Which thread? The one that is free:

- after a client's line is handled, that client's own thread calls :meth:`SendQueue.flush`. If
  nobody is sending, it sends what is queued itself, at once: its line goes out without waking
  another thread, and a thread switch costs time, more so on a busy machine.
- if a send is already under way, it leaves its lines in the queue and goes back to its
  client: the sender thread (:meth:`SendQueue.run`) takes them next. So no client's thread
  waits behind another's lines.

The queue knows nothing of Redis: it is given the function that sends one batch. It is
thread-safe (one condition guards the queue and the two flags).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["SendQueue"]

Item = TypeVar("Item")


class SendQueue(Generic[Item]):
    """Items waiting to be sent, in order; ``send(batch)`` sends at most ``batch`` of them.

    Resource handling: the queue starts no thread; whoever runs :meth:`run` is the sender
    thread, and it returns once :meth:`close` was called and nothing is left to send.
    Error handling: ``send`` must not raise (it reports failures itself).
    """

    def __init__(self, send: Callable[[list[Item]], None], batch: int) -> None:
        self._send = send
        self._batch = batch
        self._items: deque[Item] = deque()
        self._sending = False  # a thread has taken items and is sending them
        self._closing = False
        self._changed = threading.Condition()  # guards the three fields above

    def __len__(self) -> int:
        """How many items wait (not counting a batch being sent)."""
        return len(self._items)

    def put(self, item: Item, *, wake: bool = True) -> None:
        """Queue an item. ``wake=False``: the caller calls :meth:`flush` a moment later, so the
        sender thread need not wake up for it."""
        with self._changed:
            self._items.append(item)
            if wake:
                self._changed.notify()

    def flush(self) -> None:
        """Send what is queued now, in this thread, unless another thread is sending (then
        that one, or the sender thread after it, takes it: the order is kept either way)."""
        with self._changed:
            if self._sending or not self._items:
                return
            batch = self._take()
        self._send_and_hand_over(batch)

    def run(self) -> None:
        """The sender thread: send what is queued while nobody else does, until :meth:`close`."""
        while True:
            with self._changed:
                while self._sending or not self._items:
                    if self._closing and not self._sending:
                        return
                    self._changed.wait()
                batch = self._take()
            self._send_and_hand_over(batch)

    def close(self) -> None:
        """Let :meth:`run` return once everything queued before now is sent."""
        with self._changed:
            self._closing = True
            self._changed.notify()

    def _take(self) -> list[Item]:
        """Take the first items (at most ``batch``) to send them; with the condition held."""
        self._sending = True
        return [self._items.popleft() for _ in range(min(self._batch, len(self._items)))]

    def _send_and_hand_over(self, batch: list[Item]) -> None:
        try:
            self._send(batch)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        with self._changed:
            self._sending = False
            # Items queued meanwhile are the sender thread's now; at a close it waits for us.
            if self._items or self._closing:
                self._changed.notify()
