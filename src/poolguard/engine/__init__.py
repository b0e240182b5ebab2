"""The engine under both fronts.

* :mod:`.supervisor` -- the one thread per pool that owns all state: queues,
  dispatch, replies, deaths, guards, shutdown (its docstring has the data flow);
* :mod:`.surface` -- what the fronts may use of an engine (this one, or the
  cluster's in poolguard/cluster/);
* :mod:`.jobs` -- what a front's call becomes: a job cut into units;
* :mod:`.workers` -- one worker as the supervisor sees it: its state machine,
  its pipes, what it has in flight;
* :mod:`.launch` -- how workers are started, reaped and
  signalled under each start method (the zygote forks them under fork);
* :mod:`.postmortem` -- after a death: the culprit, its error, what runs again;
* :mod:`.guards` -- task_timeout and max_worker_memory: when to stop a worker;
* :mod:`.callbacks` -- the thread user callbacks run on;
* :mod:`.at_exit` -- what happens to live pools when the interpreter ends.
"""
from .inbox import PoolState
from .jobs import Job, Unit
from .callbacks import report_callback_error
from .supervisor import Engine
from .surface import EngineSurface

__all__ = ["Engine", "EngineSurface", "Job", "PoolState", "Unit", "report_callback_error"]
