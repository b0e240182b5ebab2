"""``soft_timeout``, in the worker: a call past it gets
:class:`~poolguard.SoftTimeoutError` raised where it runs, so that it can
clean up; the supervisor's ``task_timeout`` still ends it if it goes on.

The worker keeps time itself, so that no signal can reach a later call: one
thread of the worker waits for the deadline of the call that runs, and
interrupts the main thread with ``SIGNAL`` (a real-time signal, so that a
task's own SIGALRM or SIGUSR1 handlers are left alone).  The handler raises
only for the call that was armed and is still running: a signal that
arrives after its call returned (the thread fired while it was returning)
is ignored.
"""
from __future__ import annotations

import functools
import signal
import threading
import time
from typing import Any, Callable, Optional

from ..errors import SoftTimeoutError

SIGNAL = signal.SIGRTMIN + 3   # not SIGRTMIN itself, which some libraries take


class SoftTimer:
    """The deadline of the running call, and the thread that watches it."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._deadline: Optional[float] = None
        self._call = 0            # the number of the last call armed
        self._inside = False      # that call has not returned yet
        self._fired = -1          # the call the thread signalled for
        self._seconds = 0.0
        self._main: Optional[int] = None   # the thread that runs the calls
        self._thread: Optional[threading.Thread] = None

    def limited(self, func: Callable[..., Any], seconds: float) -> Callable[..., Any]:
        """*func*, each of whose calls gets SoftTimeoutError after *seconds*."""
        if self._thread is None:   # first use: the handler, then the thread
            # Not at import: the zygote and the fork server import this
            # module in a process whose threads the worker does not have.
            self._main = threading.get_ident()
            signal.signal(SIGNAL, self._on_signal)
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="poolguard-soft-timeout")
            self._thread.start()

        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            self._arm(seconds)
            try:
                return func(*args, **kwargs)
            finally:
                self._disarm()
        return call

    def _arm(self, seconds: float) -> None:
        with self._cond:
            self._call += 1
            self._inside = True
            self._seconds = seconds
            self._deadline = time.monotonic() + seconds
            self._cond.notify()

    def _disarm(self) -> None:
        # First, and without the lock: from here on, a signal for this call
        # is ignored wherever the handler runs (it takes no lock, and reads
        # what one store each changes).
        self._inside = False
        with self._cond:
            self._deadline = None

    def _watch(self) -> None:
        with self._cond:
            while True:
                deadline = self._deadline
                if deadline is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._deadline = None
                self._fired = self._call
                if self._main is not None:
                    signal.pthread_kill(self._main, SIGNAL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._inside and self._fired == self._call:
            self._inside = False   # once per call
            raise SoftTimeoutError(
                f"the task ran past soft_timeout={self._seconds:g} s; poolguard raised "
                f"this in it so that it can clean up", limit=self._seconds)


timer = SoftTimer()
