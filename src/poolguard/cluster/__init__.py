"""Pools on a dask.distributed cluster: ``Pool(cluster=...)``,
``ProcessPoolExecutor(cluster=...)``.

* :mod:`.engine` -- the pool's side: the fronts' units as dask tasks;
* :mod:`.on_worker` -- the dask worker's side: each pool's sub-pool, a
  poolguard engine that runs the units in processes of its own;
* :mod:`.parts` -- what crosses between them.

Imported only when ``cluster=`` is given: ``import poolguard`` never
imports dask.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Tuple

from ..options import Guards
from .engine import ClusterEngine

__all__ = ["ClusterEngine", "connect", "make_engine"]


def connect(cluster: Any) -> Tuple[Any, bool]:
    """A synchronous ``distributed.Client`` for *cluster* (a Client, a
    scheduler address, or a cluster object such as ``LocalCluster`` or
    dask-jobqueue's ``SLURMCluster``), and whether the pool made it (and
    so closes it)."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise ImportError("cluster= needs dask.distributed (the dask extra): "
                          "pip install 'distributed>=2024.1'"
                          ) from exc
    if isinstance(cluster, Client):
        if cluster.asynchronous:
            raise TypeError("cluster= needs a synchronous Client (asynchronous=False)")
        if cluster.status not in ("running", "connecting", "newly-created"):
            raise ValueError(f"the Client given as cluster= is {cluster.status}")
        return cluster, False
    if isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):
        return Client(cluster, set_as_default=False), True
    raise TypeError(f"cluster must be a distributed.Client, a scheduler address such as "
                    f"'tcp://host:8786', or a dask cluster object, not "
                    f"{type(cluster).__name__}")


def make_engine(cluster: Any, processes: Optional[int], initializer: Optional[Callable[..., Any]],
                initargs: Iterable[Any], maxtasks: Optional[int], context: Any,
                finish_at_exit: bool, guards: Guards) -> ClusterEngine:
    """The engine of a front given ``cluster=``; *processes* defaults to the
    cluster's thread count, *context* chooses the start method of the
    processes on the workers."""
    client, owns = connect(cluster)
    try:
        if processes is None:
            processes = max(1, sum(client.nthreads().values()))
        method = context if isinstance(context, str) or context is None \
            else context.get_start_method()
        return ClusterEngine(client, owns, processes, initializer, initargs, maxtasks,
                             method, finish_at_exit, guards)
    except BaseException:
        if owns:
            client.close()
        raise
