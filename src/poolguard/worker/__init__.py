"""What runs in the processes a pool starts, not in the pool's own process:
a worker's loop (``loop``) and the thread that watches its parent and its
slot (``lifeline``), and, under fork, the single-threaded zygote that forks
workers (``zygote_main``, with ``clean_fork``).  ``starting`` says alike on
both sides of a fork why a start failed.  Nothing here imports the engine;
the engine imports these to start them."""
