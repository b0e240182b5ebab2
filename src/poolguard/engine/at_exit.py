"""The end of the interpreter: no new futures once it has begun, and every
pool still running is ended (executors finish their work, as the standard
library's do; pools terminate, as multiprocessing's do), so that exit
neither hangs on a worker waiting for tasks nor leaves one behind."""
from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any

live_engines: "weakref.WeakSet[Any]" = weakref.WeakSet()   # every Engine not yet finished
_exiting = False


def interpreter_exiting() -> bool:
    """True once the interpreter has begun to shut down (no new futures)."""
    return _exiting


def _mark_exiting() -> None:
    global _exiting
    _exiting = True


# Before atexit handlers, as the standard executor does, so that one that
# submits work is told at once that it cannot.
threading._register_atexit(_mark_exiting)   # type: ignore[attr-defined]


@atexit.register
def _end_all() -> None:
    engines = list(live_engines)
    for engine in engines:
        if engine.finish_at_exit:
            engine.close()
        else:
            engine.terminate()
    for engine in engines:
        engine.join(None if engine.finish_at_exit else 5.0)
