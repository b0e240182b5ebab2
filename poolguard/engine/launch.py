"""How worker processes are started, reaped and signalled, per start method.

Two launchers, one interface (``start``, then ``reap`` through the handle):

* :class:`ZygoteLauncher` -- ``fork``.  Workers are forked by the pool's
  zygote (zygote.py), a process forked from the caller's thread inside
  ``Pool()`` before any thread of the pool exists.  It stays single-threaded,
  so no worker, first or replacement, can inherit a lock that another thread
  held at the instant of the fork.  Workers see the program as it was at
  ``Pool()``, as with ``multiprocessing.Pool``.
* :class:`ContextLauncher` -- ``spawn`` and ``forkserver`` (and ``fork``
  where the zygote cannot watch its workers: no pidfd): ``multiprocessing``
  starts the process; a fresh interpreter has no inherited locks.

Either way the supervisor watches a *death fd* per worker (a pidfd: readable
the moment the process exits, even if a grandchild holds its pipes) and
learns the exit status from whoever is its parent.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from multiprocessing import process as mp_process
from multiprocessing.connection import Connection
from typing import Any, Callable, FrozenSet, Iterator, List, Optional, Set, Union

from .. import diagnosis
from ..diagnosis import zombie_exit_status
from ..errors import signal_name
from ..wire.messages import dumps_call, top_level_names_of_main
from ..wire.slots import SharedSlots
from ..worker import worker_main
from . import zygote

# Descriptors only the pool's own process may hold ("parent alive" write ends,
# zygote sockets): a child that kept one would hide the owner's death.
_parent_only_fds: Set[int] = set()
ZYGOTE_REPLY_TIMEOUT = 30.0   # a fork of a very large process can take a while
ZYGOTE_EXIT_GRACE = 5.0       # seconds the zygote has to kill and reap its workers


def parent_only(fd: int) -> int:
    _parent_only_fds.add(fd)
    return fd


def release_parent_only(fd: int) -> None:
    _parent_only_fds.discard(fd)


def close_parent_only_fds() -> None:
    """In any process forked from the pool's (a zygote, a worker of another
    library's pool, the user's own fork): close what only the pool may hold,
    or the zygote and the workers would not see the pool's process die."""
    for fd in list(_parent_only_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _parent_only_fds.clear()


os.register_at_fork(after_in_child=close_parent_only_fds)


class StartError(Exception):
    """A worker could not be started (the message says why)."""


@dataclass
class WorkerSpec:
    """What every worker of one pool starts with: one parameters object
    instead of a dozen arguments.  Under fork the zygote holds it as live
    objects; under spawn and forkserver it is pickled with the process, which
    lets ``initargs`` carry locks, events and queues as the stdlib does."""

    alive_conn: Connection            # EOF when the pool's process is gone
    slots: SharedSlots
    initializer: Any                  # callable (fork) or its pickle (spawn/forkserver)
    initargs: tuple[Any, ...]
    maxtasks: Optional[int]
    timed: bool                       # write each item's start time (task_timeout)
    probe: Optional[tuple[Any, ...]]            # may the worker read our memory? (buffers.py)
    # Fork a guardian that kills the worker's group if the pool's process
    # dies (not under the zygote, which does that itself).
    group_guardian: bool = True

    def load_initializer(self) -> Optional[Callable[..., Any]]:
        init: Optional[Callable[..., Any]] = \
            pickle.loads(self.initializer) if isinstance(self.initializer, bytes) \
            else self.initializer
        return init


class WorkerProcess:
    """A started worker as the supervisor handles it."""

    pid: int
    death_fd: int      # readable once the process has exited

    def reap(self) -> Optional[int]:
        """Collect the dead process; its exit code as ``Process.exitcode``
        reports it, or None when it cannot be known."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


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


class ParentAlive:
    """A pipe whose write end only the pool's process holds: its workers see
    end of file on the read end (``WorkerSpec.alive_conn``) when it dies."""

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()
        parent_only(self._write_fd)
        self.conn = Connection(read_fd, writable=False)

    def close(self) -> None:
        release_parent_only(self._write_fd)
        os.close(self._write_fd)
        self.conn.close()


class ContextLauncher:
    """Workers started by ``multiprocessing`` (spawn, forkserver)."""

    death_fd: Optional[int] = None   # nothing of ours besides the workers can die

    def __init__(self, context: Any, spec: WorkerSpec):
        self.context = context
        self.spec = spec
        self._method = context.get_start_method()
        self._main_names: Optional[FrozenSet[str]] = None

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

    def start(self, index: int, task_r: int, result_w: int, crash_w: int) -> WorkerProcess:
        conns = (Connection(task_r, writable=False), Connection(result_w, readable=False),
                 Connection(crash_w, readable=False))
        # (Under fork, what only we may hold is closed by the at-fork hook.)
        process = self.context.Process(
            target=worker_main, name=f"poolguard-worker-{index}",
            args=(self.spec, index, *conns,
                  os.getpid() if self._method != "forkserver" else None, []),
            daemon=False)   # not inherited from a daemonic pool's process: tasks may fork too
        try:
            with _children_allowed():
                process.start()
            # multiprocessing would join it when a daemonic process of its
            # own exits, and wait forever: it is ours to reap.
            if mp_process.current_process().daemon:
                mp_process._children.discard(process)   # type: ignore[attr-defined]
        except Exception as exc:
            raise StartError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            for conn in conns:     # the child has its own copies now
                conn.close()
        return ContextProcess(process, self._method == "forkserver")

    def close(self) -> None:
        pass   # each worker was reaped by the supervisor


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


class ZygoteProcess(WorkerProcess):
    """A worker forked by the zygote: its child, not ours."""

    def __init__(self, pid: int, pidfd: int, launcher: "ZygoteLauncher"):
        self.pid = pid
        self.pidfd: Optional[int] = pidfd
        self.death_fd = pidfd
        self._launcher = launcher

    def reap(self) -> Optional[int]:
        return self._launcher.reap(self.pid)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class ZygoteLauncher:
    """Workers forked by a single-threaded zygote (fork start method).

    Made in ``Pool()``, on the caller's thread, before the supervisor thread
    starts.  The supervisor asks it to fork a worker (passing the worker's
    pipe ends over a Unix socket) and, after the worker's pidfd says it died,
    to reap it: one short request and reply each.  Until then the worker is
    a zombie, so its pid and process group id cannot be reused.
    """

    def __init__(self, context: Any, spec: WorkerSpec):
        self.spec = spec
        spec.group_guardian = False     # the zygote kills its workers' groups itself
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent_only(ours.fileno())
        self.pid = zygote.fork_zygote(theirs, spec)
        theirs.close()
        self._sock = ours
        self.pidfd = os.pidfd_open(self.pid)
        self.death_fd: Optional[int] = self.pidfd   # the supervisor watches it
        self.exitcode: Optional[int] = None
        # Workers have the __main__ of this moment (the zygote's).
        self._main = {k: v for k, v in vars(sys.modules["__main__"]).items() if callable(v)}

    def main_by_value(self, func: Callable[..., Any]) -> bool:
        """A function of __main__ defined after the zygote was forked is not
        in the workers' __main__: it goes by value, as under spawn."""
        return self._main.get(getattr(func, "__name__", "")) is not func

    def start(self, index: int, task_r: int, result_w: int, crash_w: int) -> WorkerProcess:
        try:
            reply = self._ask(("fork", index), [task_r, result_w, crash_w])
        finally:
            for fd in (task_r, result_w, crash_w):
                os.close(fd)
        if reply[0] != "ok":
            raise StartError(reply[1])
        pid = reply[1]
        try:
            return ZygoteProcess(pid, os.pidfd_open(pid), self)
        except OSError as exc:   # cannot be: the zygote has not reaped it
            raise StartError(f"cannot watch worker {pid}: {exc}") from exc

    def reap(self, pid: int) -> Optional[int]:
        try:
            reply = self._ask(("reap", pid))
        except StartError:
            return None    # the zygote is gone: nobody can read the status now
        status: Optional[int] = reply[1]
        return status

    def _ask(self, request: tuple[Any, ...], fds: Optional[List[int]] = None) -> tuple[Any, ...]:
        """One request, one reply; StartError when the zygote cannot answer."""
        if self.exitcode is not None:
            raise StartError(self.describe_death())
        try:
            socket.send_fds(self._sock, [pickle.dumps(request)], fds or [])
            ready, _, _ = select.select([self._sock], [], [], ZYGOTE_REPLY_TIMEOUT)
            data = self._sock.recv(65536) if ready else None
        except OSError as exc:
            data = None
            why = f"{exc}"
        else:
            why = "no answer" if data is None else "it closed its socket"
        if not data:
            raise StartError(f"the pool's zygote (pid {self.pid}) did not answer: {why}")
        reply: tuple[Any, ...] = pickle.loads(data)
        return reply

    def died(self) -> str:
        """Called once its pidfd is readable: reap it, and say what happened."""
        _, status = os.waitpid(self.pid, 0)
        self.exitcode = os.waitstatus_to_exitcode(status)
        return self.describe_death()

    def describe_death(self) -> str:
        code = self.exitcode
        how = (f"was killed by {signal_name(-code)}" if code is not None and code < 0
               else f"exited with code {code}")
        return (f"the pool's zygote, the process that forks its workers (pid {self.pid}), "
                f"{how}; no new worker can be started. Create a new pool")

    def close(self) -> None:
        """Tell the zygote to kill what is left and exit; wait for it (it is
        our child), and kill it if it does not go."""
        if self.exitcode is None:
            try:
                self._sock.send(pickle.dumps(("exit",)))
            except OSError:
                pass   # already gone
        release_parent_only(self._sock.fileno())
        self._sock.close()
        if self.exitcode is None:
            if not select.select([self.pidfd], [], [], ZYGOTE_EXIT_GRACE)[0]:
                os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            self.exitcode = os.waitstatus_to_exitcode(status)
        os.close(self.pidfd)


def _pidfd(pid: int) -> Optional[int]:
    if hasattr(os, "pidfd_open"):
        try:
            return os.pidfd_open(pid)
        except OSError:
            pass
    return None


def can_use_zygote() -> bool:
    """The zygote needs pidfds to watch workers that are not our children."""
    fd = _pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return hasattr(socket, "send_fds")


def make_launcher(context: Any, spec: WorkerSpec) -> "Launcher":
    """The launcher for *context*'s start method.  Under fork this forks the
    zygote: call it before the pool starts any thread.  *spec.alive_conn* is
    the read end of a ParentAlive."""
    if context.get_start_method() == "fork" and can_use_zygote():
        return ZygoteLauncher(context, spec)
    launcher = ContextLauncher(context, spec)
    if spec.initializer is not None and context.get_start_method() != "fork":
        init = spec.initializer
        spec.initializer = dumps_call(init, init, launcher.main_by_value(init))
    return launcher


Launcher = Union[ContextLauncher, ZygoteLauncher]
