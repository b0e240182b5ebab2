"""``progress=`` on the map calls: items done, rate, ETA, and the deaths no
other pool shows (``2 crashed · 1 retried · 1 timed out``).

Counting happens on the supervisor thread as units finish (a few integer
additions a unit); showing happens on the pool's callback thread, at most
every ``INTERVAL`` seconds and once at the end, so a terminal or pipe that
blocks on write can never stall the supervisor.

``progress=True`` draws a tqdm bar on a terminal when tqdm is installed, and
otherwise one plain text line (rewritten in place on a terminal, printed
every ``TEXT_EVERY`` seconds into a log).  A tqdm instance is updated as it
is (and not closed: it is the caller's).  Any other callable is called with a
:class:`ProgressInfo`.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Union

from .naming import function_name
from .engine.reports import PoolStats
from .errors import TaskTimeoutError, WorkerCrashedError

INTERVAL = 0.1      # seconds between two updates of what is shown
TEXT_EVERY = 10.0   # seconds between two lines of the text fallback in a log
PROGRESS_WAIT = 1.0   # seconds a finished call waits for its last report to be shown

ProgressArg = Union[None, bool, Callable[["ProgressInfo"], object], Any]


class ProgressInfo(NamedTuple):
    """What a progress callable (``progress=callable``) is given, about 10
    times a second and once at the end (``final``).

    Attributes:
        label: The call, e.g. ``"map(square)"``.
        done: Items finished, with or without success.
        total: Items in all; ``None`` while a lazy iterable is being read.
        failed: Items that raised or whose worker died.
        crashed: Worker deaths while running the call's items (timeouts
            apart), a death whose item was retried too.
        timed_out: Items stopped by ``task_timeout``, retried ones too.
        retried: Runs given another worker after a death.
        elapsed: Seconds since the call.
        final: Whether this is the call's last report.
        workers: In the last report, what the pool's workers did during
            the call (a :class:`poolguard.PoolStats`); else None.
        raised: Of the failed items, those that raised.
    """

    label: str                # the call, e.g. "map(square)"
    done: int                 # items finished, with or without success
    total: Optional[int]      # None while a lazy iterable is being read
    failed: int               # items that raised or whose worker died
    crashed: int              # worker deaths running its items, retried or not (timeouts apart)
    timed_out: int            # items stopped by task_timeout, retried or not
    retried: int              # runs that were given another worker after a death
    elapsed: float            # seconds since the call
    final: bool               # the last report of this call
    workers: Optional[PoolStats] = None   # the last report: the workers during the call
    raised: int = 0           # failed items that raised

    def describe(self) -> str:
        """One line, as the text display prints it:
        ``map(square): 120/500 items (24%) · 80 items/s · ETA 4.7 s · 2 crashed``."""
        parts = [f"{self.label}: {self.done}" + (f"/{self.total}" if self.total else "")
                 + " items"]
        if self.total:
            parts[0] += f" ({100 * self.done // self.total}%)"
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        parts.append(f"{rate:.0f} items/s")
        if self.total and rate > 0 and not self.final:
            parts.append(f"ETA {(self.total - self.done) / rate:.1f} s")
        parts.extend(self.deaths())
        return " · ".join(parts)

    def summary(self) -> Optional[str]:
        """The line shown under the last report: what the pool's workers did
        during the call, ``map(square): 2 workers · 500 tasks · busy 95% ·
        idle 4% · starting 1%``; None when there are no figures."""
        if self.workers is None or not self.workers.workers:
            return None
        return f"{self.label}: {self.workers}"

    def deaths(self) -> list[Any]:
        """The non-zero death counts as words: ``["2 crashed", "1 retried"]``."""
        words = [(self.crashed, "crashed"), (self.retried, "retried"),
                 (self.timed_out, "timed out"),
                 (self.raised, "raised")]
        return [f"{count} {word}" for count, word in words if count]


def check_progress(progress: ProgressArg) -> None:
    """At the call, not later: what ``progress=`` accepts."""
    if progress is None or isinstance(progress, bool) or callable(progress) \
            or _is_bar(progress):
        return
    raise TypeError(f"progress must be True, a callable or a tqdm bar, not "
                    f"{type(progress).__name__}")


def make_progress(progress: ProgressArg, engine: Any, call: str, func: Callable[..., Any],
                  total: Optional[int]) -> Optional["Progress"]:
    """The Progress of a call, or None when ``progress=`` is not set."""
    if progress is None or progress is False:
        return None
    return Progress(progress, f"{call}({function_name(func)})", total, engine.call_soon,
                    getattr(engine, "stats", None))


def finish_progress(progress: Optional["Progress"]) -> None:
    """In the caller, at the end of a call: the last report, shown before
    the caller goes on (waiting at most PROGRESS_WAIT)."""
    if progress is not None:
        progress.finish()
        progress.shown.wait(PROGRESS_WAIT)


class Progress:
    """The counts of one call and the view that shows them."""

    def __init__(self, progress: ProgressArg, label: str, total: Optional[int],
                 call_soon: Callable[..., None],
                 stats: Optional[Callable[..., PoolStats]] = None) -> None:
        self.label = label
        self.total = total
        self.done = self.failed = self.crashed = self.timed_out = self.retried = 0
        self.raised = 0
        self._call_soon = call_soon
        self._start = time.monotonic()
        self._next_show = self._start + INTERVAL
        self._view = _make_view(progress, label, total)
        self._finished = False
        self.shown = threading.Event()   # set once the final report is shown
        self._stats = stats   # the pool's stats(): its figures at the start, then at the end
        self._stats_before = stats(sample=False) if stats is not None else None

    # ---- supervisor thread -------------------------------------------------------

    def count(self, done: int, error: Optional[BaseException] = None, failed: int = 0) -> None:
        """*done* items finished, *failed* of them by *error*."""
        self.done += done
        if error is not None:
            self.failed += failed
            if isinstance(error, TaskTimeoutError):
                self.timed_out += 1
            elif isinstance(error, WorkerCrashedError):
                self.crashed += 1
            else:
                self.raised += failed
        self._maybe_show()

    def count_retry(self, timed_out: bool = False) -> None:
        """A death (*timed_out*: a task_timeout stop) whose item runs again:
        counted as the death it was, and as a retry."""
        if timed_out:
            self.timed_out += 1
        else:
            self.crashed += 1
        self.retried += 1
        self._maybe_show()

    def _maybe_show(self) -> None:
        now = time.monotonic()
        if now >= self._next_show and not self._finished:
            self._next_show = now + INTERVAL
            self._call_soon(self._view.show, self._info(now, False))

    # ---- any thread ----------------------------------------------------------------

    def set_total(self, total: int) -> None:
        self.total = total

    def finish(self) -> None:
        """The call is over (all items in, or it failed): the last report."""
        if self._finished:
            return
        self._finished = True
        info = self._info(time.monotonic(), True)
        if self._stats is not None and self._stats_before is not None:
            info = info._replace(workers=self._stats(sample=False).since(self._stats_before))
        self._call_soon(self._show_last, info)

    def _show_last(self, info: ProgressInfo) -> None:
        try:
            self._view.show(info)
            self._view.close()
        finally:
            self.shown.set()

    def _info(self, now: float, final: bool) -> ProgressInfo:
        return ProgressInfo(self.label, self.done, self.total, self.failed, self.crashed,
                            self.timed_out, self.retried, now - self._start, final,
                            raised=self.raised)


class _CallableView:
    def __init__(self, func: Callable[[ProgressInfo], object]) -> None:
        self.func = func

    def show(self, info: ProgressInfo) -> None:
        self.func(info)

    def close(self) -> None:
        pass


class _TqdmView:
    """A tqdm bar: ours (closed at the end) or the caller's (left open)."""

    def __init__(self, bar: Any, owned: bool) -> None:
        self.bar, self.owned, self._shown = bar, owned, 0
        self._summary: Optional[str] = None

    def show(self, info: ProgressInfo) -> None:
        if info.total is not None and self.bar.total != info.total:
            self.bar.total = info.total
        deaths = " · ".join(info.deaths())
        if deaths:
            self.bar.set_postfix_str(deaths, refresh=False)
        self.bar.update(info.done - self._shown)
        self._shown = info.done
        self._summary = info.summary() if info.final else None

    def close(self) -> None:
        if self.owned:
            self.bar.close()
        else:
            self.bar.refresh()
        write = getattr(self.bar, "write", None)   # tqdm's: a line under the bars
        if self._summary and callable(write):
            try:
                write(self._summary, file=getattr(self.bar, "fp", None))
            except (OSError, ValueError):   # a closed stream: the work goes on
                pass


class _TextView:
    """One line on stderr: rewritten in place on a terminal, else printed
    every TEXT_EVERY seconds and at the end."""

    def __init__(self) -> None:
        self.stream = sys.stderr
        self.tty = _is_tty(self.stream)
        self._next_line = time.monotonic() + TEXT_EVERY
        self._width = 0

    def show(self, info: ProgressInfo) -> None:
        text = info.describe()
        try:
            if self.tty:
                self.stream.write("\r" + text.ljust(self._width) + ("\n" if info.final else ""))
                self._width = len(text)
            elif info.final or time.monotonic() >= self._next_line:
                self._next_line = time.monotonic() + TEXT_EVERY
                self.stream.write(text + "\n")
            summary = info.summary() if info.final else None
            if summary:
                self.stream.write(summary + "\n")
            self.stream.flush()
        except (OSError, ValueError):   # a closed or broken stream: the work goes on
            pass

    def close(self) -> None:
        pass


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _is_bar(progress: Any) -> bool:
    """A tqdm bar, or anything shaped like one."""
    return callable(getattr(progress, "update", None)) and hasattr(progress, "n")


def _make_view(progress: ProgressArg, label: str, total: Optional[int]) -> Any:
    if _is_bar(progress):
        return _TqdmView(progress, owned=False)
    if progress is not True:
        assert callable(progress)
        return _CallableView(progress)
    if _is_tty(sys.stderr):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return _TqdmView(tqdm(total=total, desc=label, unit="item"), owned=True)
    return _TextView()
