"""The two fronts, run in the caller's threads: :class:`~.pool.Pool` (a drop-in
``multiprocessing.Pool``; ``pool_maps`` holds its map family, ``pool_calls``
what its calls return) and :class:`~.executor.ProcessPoolExecutor` (a
``concurrent.futures.Executor``; ``executor_calls`` the jobs behind its
futures), and what both share (``shared``: how their engine is made, the
reports on their workers).  Both hand jobs to the engine (``poolguard.engine``)."""
