"""Workers started by ``multiprocessing`` itself: spawn and forkserver (and
fork where the zygote cannot watch its workers: no pidfd)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from multiprocessing import process as mp_process
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

from ... import diagnosis
from ...diagnosis import zombie_exit_status
from ...wire.pickling import top_level_names_of_main
from ...wire.slots import SharedSlots
from ...worker.loop import worker_main
from .base import WorkerPipes, WorkerProcess, WorkerSpec, _pidfd
from ...worker.starting import StartError, describe_start_error, started_pid
from . import fork_server
from .starter import Starter


class ContextProcess(WorkerProcess):
    """A worker that ``multiprocessing`` started in our process."""

    def __init__(self, process: Any, forkserver: bool):
        self.process = process
        self.pid = process.pid
        self._forkserver = forkserver
        self.pidfd = _pidfd(self.pid)
        self.death_fd = self.pidfd if self.pidfd is not None else process.sentinel

    def reap(self) -> Optional[int]:
        if not self._forkserver:
            self.process.join()
            exitcode: Optional[int] = self.process.exitcode
            return exitcode
        # Not our child: its status comes through the fork server, which
        # reports 255 when it cannot read it.  Read it ourselves first.
        exitcode = zombie_exit_status(self.pid, diagnosis.SOURCES)
        self.process.join(1.0)
        if exitcode is None and self.process.exitcode != 255:
            exitcode = self.process.exitcode
        return exitcode

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        try:
            self.process.close()
        except ValueError:
            pass  # forkserver did not report the status in time; it reaps the process


class ContextLauncher:
    """Workers started by ``multiprocessing`` (spawn, forkserver)."""


    def __init__(self, context: Any, spec: WorkerSpec):
        self.context = context
        self.spec = spec
        self._method = context.get_start_method()
        self._main_names: Optional[FrozenSet[str]] = None
        self._starter: Optional[Starter] = None
        self._sent: Optional[Tuple[Connection, SharedSlots]] = None
        if self._method == "forkserver":
            self._start_on_thread()
            fork_server.preload_poolguard()

    def _start_on_thread(self) -> None:
        """Under forkserver each start waits for the fork server: made on a
        thread of ours, not the supervisor's (starter.py).  That thread may
        still be sending a start's descriptors to the fork server when the
        pool closes its own: it sends copies, closed only once no start uses
        them.  (Closed under a start, they failed its sendmsg with EBADF
        after it had connected, and CPython 3.11's fork server died of the
        empty connection.)"""
        alive = os.dup(self.spec.alive_conn.fileno())
        try:
            slots = self.spec.slots.duplicate()
        except BaseException:
            os.close(alive)
            raise
        self._sent = (Connection(alive, writable=False), slots)
        try:
            self._starter = Starter(self._start_now, self._release_sent)
        except BaseException:
            self._release_sent()
            raise

    def _release_sent(self) -> None:
        if self._sent is not None:
            for copy in self._sent:
                copy.close()
            self._sent = None

    def main_by_value(self, func: Callable[..., Any]) -> bool:
        """Must a function of __main__ go by value?  Under fork (no zygote)
        workers are forked from our process as it is: never.  Under spawn
        and forkserver, multiprocessing imports the script again in each
        worker, so what the script defines at its top level goes by name, as
        with the standard library (and shares the module's globals with the
        initializer); anything else (a function under the main guard, a
        program without a file, a notebook) goes by value."""
        if self._method == "fork":
            return False
        if self._main_names is None:
            self._main_names = top_level_names_of_main()
        name = getattr(func, "__qualname__", "")
        return name not in self._main_names

    # Under spawn every worker is started at once, on request: nothing to
    # watch, nothing pending.  Under forkserver the starter's thread makes
    # the starts, and they are taken as the zygote's answers are.
    broken: Optional[str] = None

    def helper_pids(self) -> Dict[str, int]:
        """The fork server's pid under forkserver, once it runs (one per
        process, shared by every pool made with forkserver)."""
        if self._method != "forkserver":
            return {}
        from multiprocessing import forkserver
        pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
        return {"fork server": pid} if isinstance(pid, int) else {}

    def fds(self) -> List[int]:
        return [self._starter.wake_fd] if self._starter is not None else []

    def on_ready(self, fd: int) -> Optional[str]:
        if self._starter is not None:
            self._starter.drain()   # the next turn takes what was started
        return None

    def take_prepared(self, index: int) -> Optional[Tuple[WorkerPipes, WorkerProcess]]:
        """The worker started for slot *index*, and its pipes; None if none
        is (StartError if its start failed)."""
        outcome = self._starter.take(index) if self._starter is not None else None
        if outcome is None:
            return None
        pipes, process = outcome
        if isinstance(process, StartError):
            pipes.close_parent_ends()
            raise process
        return pipes, process

    def still_forking(self, index: int) -> bool:
        return self._starter is not None and self._starter.pending(index)

    def forking_slots(self) -> Optional[Set[int]]:
        return self._starter.pending_slots() if self._starter is not None else set()

    def busy(self) -> bool:
        return self._starter is not None and self._starter.busy()

    def prepared(self, index: int) -> bool:
        """Is a worker started for slot *index*, to be taken?"""
        return self._starter is not None and self._starter.ready(index)

    def start(self, index: int, pipes: WorkerPipes) -> Optional[WorkerProcess]:
        """Start the worker of slot *index* (under forkserver: ask the
        starter, None: taken later); our copies of its ends of *pipes* are
        closed, whatever happens."""
        if self._starter is None:
            return self._start_now(index, pipes)
        self._starter.ask(index, pipes)
        return None

    def _start_now(self, index: int, pipes: WorkerPipes) -> WorkerProcess:
        """Start the worker of slot *index*.  If the fork server died
        during the start (killed, or by the OOM killer), multiprocessing
        makes a new one at the next start: the start is made again once, on
        new pipes (a worker it may have forked holds the old ones, and sees
        their end)."""
        try:
            return self._start(index, pipes)
        except _ForkServerGone:
            fork_server.wait_for_exit()
        try:
            pipes.renew()
        except OSError as exc:
            raise StartError(f"cannot make a worker's pipes: {describe_start_error(exc)}") from exc
        try:
            return self._start(index, pipes)
        except _ForkServerGone as exc:
            cause = exc.__cause__ or exc
            raise StartError(f"the fork server died twice while starting a worker: "
                             f"{describe_start_error(cause)}") from cause

    def _start(self, index: int, pipes: WorkerPipes) -> WorkerProcess:
        spec = self.spec if self._sent is None else dataclasses.replace(
            self.spec, alive_conn=self._sent[0], slots=self._sent[1])
        conns = (Connection(pipes.task_r, writable=False),
                 Connection(pipes.result_w, readable=False),
                 Connection(pipes.crash_w, readable=False))
        # (Under fork, what only we may hold is closed by the at-fork hook.)
        factory = (fork_server.process_class(self.context) if self._method == "forkserver"
                   else self.context.Process)
        process = factory(
            target=worker_main, name=f"poolguard-worker-{index}",
            args=(spec, index, *conns,
                  os.getpid() if self._method != "forkserver" else None, []),
            daemon=False)   # not inherited from a daemonic pool's process: tasks may fork too
        try:
            if self._method == "forkserver":
                fork_server.say_if_gone()
            with _children_allowed():
                process.start()
            # multiprocessing would join it when a daemonic process of its
            # own exits, and wait forever: it is ours to reap.
            if mp_process.current_process().daemon:
                mp_process._children.discard(process)   # type: ignore[attr-defined]
        except (EOFError, ConnectionError) as exc:
            if self._method != "forkserver":
                raise StartError(describe_start_error(exc)) from exc
            raise _ForkServerGone() from exc   # it closed or refused our connection
        except Exception as exc:
            raise StartError(describe_start_error(exc)) from exc
        finally:
            for conn in conns:     # the child has its own copies now
                conn.close()
            if self._method == "forkserver":
                fork_server.went_through()
        started_pid(process)
        return ContextProcess(process, self._method == "forkserver")

    def close(self) -> None:
        if self._starter is not None:   # each worker was reaped by the supervisor
            self._starter.close()


class _ForkServerGone(Exception):
    """The fork server died while it started a worker."""


_daemon_flag_lock = threading.Lock()


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let ``multiprocessing`` start a worker from a daemonic process (a
    worker of a dask cluster or of a ``multiprocessing.Pool``).  It refuses
    because a daemonic process is ended without joining its children, which
    would be orphaned; ours end with the pool's process whatever happens
    (the parent-alive pipe, the group guardian)."""
    config = mp_process.current_process()._config   # type: ignore[attr-defined]
    if not config.get("daemon"):
        yield
        return
    with _daemon_flag_lock:   # two pools starting workers must not race on the flag
        config["daemon"] = False
        try:
            yield
        finally:
            config["daemon"] = True


