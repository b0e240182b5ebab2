"""How worker processes are started, reaped and signalled, per start method.

Two launchers, one interface (``start``, then ``reap`` through the handle):

* :class:`ZygoteLauncher` -- ``fork``.  Workers are forked by the pool's
  zygote (zygote.py: the pool's side; zygote_standby.py: the zygote and its
  standby; zygote_helper.py: each as the pool sees it; worker/zygote_main.py: its
  loop), a process forked from the caller's thread inside ``Pool()`` before
  any thread of the pool exists.  It stays single-threaded,
  so no worker, first or replacement, can inherit a lock that another thread
  held at the instant of the fork.  Workers see the program as it was at
  ``Pool()``, as with ``multiprocessing.Pool``.
* :class:`ContextLauncher` -- ``spawn`` and ``forkserver`` (and ``fork``
  where the zygote cannot watch its workers: no pidfd): ``multiprocessing``
  starts the process; a fresh interpreter has no inherited locks
  (context.py).

Either way the supervisor watches a *death fd* per worker (a pidfd: readable
the moment the process exits, even if a grandchild holds its pipes) and
learns the exit status from whoever is its parent.  What both share (the
worker's parameters object, the process handle, the parent-alive pipe) is in
base.py.
"""
from __future__ import annotations

from typing import Any, Union

from ...wire.pickling import dumps_call
from .base import ParentAlive, WorkerPipes, WorkerProcess, WorkerSpec
from ...worker.starting import StartError, describe_start_error
from .context import ContextLauncher
from .zygote import ZygoteLauncher, can_use_zygote

__all__ = ["ContextLauncher", "Launcher", "ParentAlive", "StartError", "WorkerPipes",
           "WorkerProcess", "WorkerSpec", "ZygoteLauncher", "describe_start_error",
           "make_launcher"]


def make_launcher(context: Any, spec: WorkerSpec, workers: int) -> "Launcher":
    """The launcher for *context*'s start method.  Under fork this forks the
    zygote, which at once forks the first *workers* workers (slots 0 to
    workers - 1): call it before the pool starts any thread.
    *spec.alive_conn* is the read end of a ParentAlive."""
    if context.get_start_method() == "fork" and can_use_zygote():
        return ZygoteLauncher(context, spec, workers)
    launcher = ContextLauncher(context, spec)
    if spec.initializer is not None and context.get_start_method() != "fork":
        init = spec.initializer
        spec.initializer = dumps_call(init, init, launcher.main_by_value(init))
    return launcher


Launcher = Union[ContextLauncher, ZygoteLauncher]
