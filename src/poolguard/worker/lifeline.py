"""How a worker process is set up to die cleanly, and with its pool.

Signals and stack dumps, a process group of its own, and the ways it ends
when the pool's process dies (even by SIGKILL): PR_SET_PDEATHSIG, a thread
watching the parent-alive pipe, a guardian child that kills its group.  An
audit hook notes a signal a task sends its own process.
"""
from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import os
import select
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional, Sequence

from ..wire import buffers
from ..wire.slots import SENT_BY_COMMAND, SENT_WORD

_PR_SET_PDEATHSIG = 1


def prepare(crash_conn: Connection, fds_to_close: Sequence[int]) -> None:
    """Signals, process group, stack dumps; drop what is not ours to hold."""
    # Ctrl-C reaches the whole process group; the parent alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A group of our own: when we die, the pool kills the group, so children a
    # task started (and did not move to a session of their own) die with us.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    # At a fatal signal, the Python stack goes to a pipe the parent reads
    # after our death (crash_conn must stay referenced: it owns the fd).
    faulthandler.enable(file=crash_conn.fileno(), all_threads=False)
    # SIGUSR1: print every thread's stack to stderr and go on, to see where a
    # task hangs (the test suite does it to each worker before a timeout).
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=2, all_threads=True)
    # SIGUSR2: the same to the crash pipe, where the pool reads it after the
    # worker's end (task_timeout: where the task hung).
    if hasattr(signal, "SIGUSR2"):
        faulthandler.register(signal.SIGUSR2, file=crash_conn.fileno(), all_threads=True)
    for fd in fds_to_close:  # the zygote's socket, other workers' pipes (fork)
        try:
            os.close(fd)
        except OSError:
            pass


# Executors inherited through fork, kept referenced (see forget_inherited_executors).
_inherited: list[Any] = []


def forget_inherited_executors() -> None:
    """A worker forked from a process that used loky (joblib's default
    backend, or loky itself) inherits its reusable executor, whose worker
    processes and threads are the parent's: a task's nested ``Parallel``
    would queue work there and wait forever.  Forget it, so that the task
    makes its own.  It stays referenced: collecting it would run its
    callbacks, which wake the parent's threads through inherited pipes."""
    for name in ("joblib.externals.loky.reusable_executor", "loky.reusable_executor"):
        state = vars(sys.modules[name]) if name in sys.modules else {}
        if state.get("_executor") is not None:
            _inherited.append(state["_executor"])
            state["_executor"] = state["_executor_kwargs"] = None


def end_children() -> None:
    """The worker is leaving: the ``multiprocessing`` processes its tasks
    started and left running (a nested joblib's loky workers, idle for
    minutes) are killed, not waited for.  Else multiprocessing's exit
    handler joins them, and the pool's shutdown waits as long.  Whatever
    else a task left in our process group dies with it when the pool
    kills the group after our exit."""
    for child in multiprocessing.active_children():
        if child.pid is None:
            continue
        try:   # by pid: loky's processes have no kill(); unreaped, the pid is still theirs
            os.kill(child.pid, signal.SIGKILL)
        except OSError:
            pass


def watch_own_signals(slot: memoryview) -> None:
    """An audit hook notes in the slot a signal the task sends its own process
    (``os.kill``, ``os.killpg``) or a ``kill`` command naming our pid that it
    starts (``os.system``, ``subprocess``): the parent then does not blame
    the outside for that death.  The hook runs before the call it audits."""
    pid = os.getpid()
    mine = (pid, 0, -pid)
    me = str(pid)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not event.startswith(("os.kill", "os.system", "subprocess.Popen")):
            return
        try:
            if event in ("os.kill", "os.killpg") and args[0] in mine:
                slot[SENT_WORD] = int(args[1])
            elif event in ("os.system", "subprocess.Popen"):
                command = args[0] if event == "os.system" else args[1]
                if isinstance(command, (bytes, str)):
                    command = [command]
                words = " ".join(os.fsdecode(word) for word in command).replace(";", " ").split()
                if me in words and any(word.endswith("kill") for word in words):
                    slot[SENT_WORD] = SENT_BY_COMMAND
        except Exception:   # an audit hook must never fail the call it watches
            pass

    sys.addaudithook(hook)


_prctl: Optional[Callable[..., int]] = None


def load_native() -> None:
    """Load what a worker calls through ctypes, in a process that forks
    workers (the zygote's parent), so that each forked worker need not."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass
    buffers.load_native()


def die_with_parent(alive_conn: Connection, parent_pid: Optional[int],
                    by_zygote: bool) -> Optional[Callable[[], None]]:
    """Exit when the pool's process dies, even by SIGKILL.

    Linux: PR_SET_PDEATHSIG, valid while the thread that forked us lives: the
    zygote's only thread (fork), or the supervisor thread (spawn).  Also: a
    thread blocked on a pipe whose only write end the pool's process holds
    (EOF means it is gone).  Under the zygote, which kills our group when the
    pool's process dies, that thread is only a fallback (for a zygote that
    cannot act, say stopped): it is returned, for the worker to start once
    its first task is answered, off the path to the pool's first result.
    Otherwise it starts now, with a guardian child that kills our group, so
    that what a task started dies too.
    """
    if not by_zygote:
        _start_group_guardian(alive_conn.fileno())
    if parent_pid is not None and sys.platform.startswith("linux"):
        load_native()
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # died before prctl took effect
            os._exit(1)

    def _watch_parent() -> None:
        try:
            alive_conn.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(1)

    def start() -> None:
        try:
            threading.Thread(target=_watch_parent, name="poolguard-parent-watch",
                             daemon=True).start()
        except RuntimeError:
            # No thread to be had (a cgroup's pids.max reached): under the
            # zygote it is a fallback, and PDEATHSIG and the group kill
            # remain; a worker that ended here lost a task it had done.
            if not by_zygote:
                raise

    if by_zygote:
        return start
    start()
    return None


def _start_group_guardian(alive_fd: int) -> None:
    """Fork, while we still have one thread, a tiny child in our process
    group that waits for the pool's process to die and then SIGKILLs the
    whole group: PDEATHSIG kills only us, and a process a task started would
    outlive the pool.  It waits for that alone (our own death may come first,
    by PDEATHSIG, while the pool's process is still closing its files); while
    the pool lives, the pool ends it with our group when we die."""
    if not sys.platform.startswith("linux"):
        return
    try:
        pid = os.fork()
    except OSError:
        return
    if pid:
        return
    code = 0
    try:
        poller = select.poll()
        poller.register(alive_fd, select.POLLIN)
        while not poller.poll():
            pass
        os.killpg(0, signal.SIGKILL)   # the pool's process is gone
    except BaseException:
        code = 1
    finally:
        os._exit(code)
