"""Turns on the model: one computation at a time, first come first served, cancellable.

Generation is CPU-bound torch work that already spreads over every core, so two tabs computing at once would
only oversubscribe the cores. Work runs in worker threads (the event loop stays free to serve) but takes a
turn first; work that runs long (a task over many windows) hands the turn on after every decoding step, so a
tab's drive window waits for one step of another tab's task, not for the whole task.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator

# How often a thread waiting for its turn looks at its cancel token (seconds).
_POLL_SECONDS = 0.05


class Cancelled(Exception):
    """The work's owner went away (its tab closed, its drive was reset, its task was cancelled)."""


class CancelToken:
    """Set once by the owner; the work checks it between decoding steps and while it waits for a turn."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise Cancelled once `cancel` was called."""
        if self._event.is_set():
            raise Cancelled


class Turn:
    """A turn held by one piece of work (see `ModelTurns.turn`)."""

    def __init__(self, turns: ModelTurns, token: CancelToken) -> None:
        self._turns, self.token = turns, token

    def between_steps(self) -> None:
        """Call between decoding steps: raises Cancelled when cancelled, else lets waiting work go first."""
        self.token.check()
        self._turns._hand_over(self)


class ModelTurns:
    """A fair (FIFO) lock over the model with a hand-over between decoding steps."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._queue: deque[Turn] = deque()

    @contextlib.contextmanager
    def turn(self, token: CancelToken) -> Iterator[Turn]:
        """Wait for this work's turn (Cancelled if `token` is cancelled meanwhile) and hold it in the block."""
        turn = Turn(self, token)
        with self._condition:
            self._queue.append(turn)
        try:
            with self._condition:
                self._wait_for_front(turn)
            yield turn
        finally:
            with self._condition:
                self._queue.remove(turn)
                self._condition.notify_all()

    @property
    def queued(self) -> int:
        """Pieces of work holding or waiting for a turn."""
        with self._condition:
            return len(self._queue)

    def _hand_over(self, turn: Turn) -> None:
        with self._condition:
            if len(self._queue) > 1:
                self._queue.remove(turn)
                self._queue.append(turn)
                self._condition.notify_all()
                self._wait_for_front(turn)

    def _wait_for_front(self, turn: Turn) -> None:
        """With the condition held: wait until `turn` is first in the queue; Cancelled when it is cancelled first
        (`turn` leaves the queue in `turn`'s finally)."""
        while self._queue[0] is not turn:
            turn.token.check()
            self._condition.wait(_POLL_SECONDS)
