"""The engine under both fronts; it runs in the pool's own process.

* :mod:`.local` -- ``Engine``: builds a pool's parts, starts its supervisor
  thread, and answers the fronts from their threads;
* :mod:`.supervisor` -- the loop of the one thread per pool that owns all
  state: starts, dispatch, deaths, guards, shutdown (its docstring has the
  data flow, what it waits on and what other threads touch);
* :mod:`.replies` -- what workers send back, decoded and delivered;
* :mod:`.surface` -- what the fronts may use of an engine (this one, or the
  cluster's in poolguard/cluster/);
* :mod:`.inbox` -- where callers leave units and the pool's state;
* :mod:`.jobs` -- what a front's call becomes: a job cut into units;
* :mod:`.workers` and :mod:`.worker_set` -- one worker as the supervisor
  sees it, and the set of them by slot;
* :mod:`.dispatch` and :mod:`.pacing` -- which worker gets the next unit;
* :mod:`.launch` -- how workers are started, reaped and signalled under
  each start method (the zygote forks them under fork);
* :mod:`.postmortem` -- after a death: the culprit, its error, what runs again;
* :mod:`.guards` -- task_timeout, max_worker_memory, stops: when to stop a worker;
* :mod:`.callbacks` -- the thread user callbacks run on;
* :mod:`.at_exit` -- what happens to live pools when the interpreter ends.
"""
from .inbox import PoolState
from .jobs import Job, Unit
from .callbacks import report_callback_error
from .local import Engine
from .surface import EngineSurface

__all__ = ["Engine", "EngineSurface", "Job", "PoolState", "Unit", "report_callback_error"]
