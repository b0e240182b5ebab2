"""The pool's callback thread: user callbacks never run on the supervisor,
so a slow one cannot delay the detection of a death."""
from __future__ import annotations

import queue
import sys
import threading
import traceback
from typing import Any, Callable, Optional


class CallbackThread:
    """Runs callbacks in submission order on one thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.thread: Optional[threading.Thread] = None

    def call_soon(self, func: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="poolguard-callbacks",
                                               daemon=True)
                self.thread.start()
        self._queue.put((func, args))

    def stop(self) -> None:
        """After the last callback queued: let it run, then end the thread
        (joined unless a callback is what stops us)."""
        with self._lock:
            thread = self.thread
        if thread is not None:
            self._queue.put(None)
            if threading.current_thread() is not thread:
                thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            func, args = item
            try:
                func(*args)
            except Exception:   # a user callback raised: report it, go on
                report_callback_error()


def report_callback_error() -> None:
    """Print the exception being handled, raised by a user callback: the
    standard library lets it kill its result thread; we report it and go on."""
    print("poolguard: exception in a result callback (ignored):", file=sys.stderr)
    traceback.print_exc()
