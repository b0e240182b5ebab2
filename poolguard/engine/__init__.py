"""The engine under both fronts.

* :mod:`.supervisor` -- the one thread per pool that owns all state: queues,
  dispatch, replies, deaths, guards, shutdown (its docstring has the data flow);
* :mod:`.jobs` -- what a front's call becomes: a job cut into units;
* :mod:`.workers` -- one worker process as the supervisor sees it, and how
  worker processes are started under each start method.
"""
from .jobs import Job, Unit
from .supervisor import Engine, report_callback_error

__all__ = ["Engine", "Job", "Unit", "report_callback_error"]
