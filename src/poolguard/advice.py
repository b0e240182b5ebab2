"""What a crash message says beyond the facts: the likely cause of a
signal, where in a task's trip the worker was, and what to do, by verdict.
errors.py's WorkerCrashedError composes its message from these."""
from __future__ import annotations

from typing import Any, Optional, Tuple

HINTS = {
    "SIGKILL": "SIGKILL comes from the kernel OOM killer (see `dmesg`) or from "
               "outside the process: a job scheduler's time or memory limit, a "
               "user, a container runtime",
    "SIGTERM": "SIGTERM comes from outside the process: a job scheduler, a user "
               "or a container runtime stopping it",
    "SIGSEGV": "a crash in native code (a C extension, ctypes, a corrupted buffer)",
    "SIGBUS": "a crash in native code, or a memory-mapped file that shrank",
    "SIGILL": "a crash in native code (or code built for another CPU)",
    "SIGFPE": "an arithmetic fault in native code",
    "SIGABRT": "native code called abort() (a failed assertion in a C library)",
}


# The last line of a crash message, by verdict.
ADVICE = {
    "oom": "give each task more memory (fewer processes=, a larger memory limit for the "
           "job or container), or set max_worker_memory= so poolguard stops the task "
           "before the kernel does; retries= runs it again if the peak was passing.",
    "outside": "check the limits of the job scheduler (time, memory: `sacct`, `qstat`) and "
               "of the container, and what else may signal this process; retries= runs "
               "the task again.",
    "crash": "the stack above shows the call that crashed; run the task on this input "
             "alone to reproduce it.",
    "native": "run the task on this input alone to reproduce it; a C extension or ctypes "
              "call is the usual culprit.",
    "self": "the task's own code signalled its process: look for os.kill or a kill "
            "command in it.",
    "exit": "look for os._exit() in the task, or a C library calling exit(); run the task "
            "on this input alone to reproduce it.",
    "unknown": "the exit status could not be read; retries= runs the task again.",
}

PHASES = {
    "running": "while running",
    "decoding": "while decoding the arguments of",
    "sending": "while sending the result of",
    "starting": "while starting",
}


def explain(diagnosis: Any, signame: Optional[str], exitcode: Optional[int],
             crash_stack: Optional[str]) -> Tuple[str, str]:
    """The sentence after "worker N was killed by S while running f(x)", and
    the key of its advice in ADVICE."""
    if diagnosis is not None and diagnosis.self_kill:
        return f". Not an OOM kill: {diagnosis.evidence}", "self"
    if diagnosis is not None and diagnosis.verdict in ("confirmed", "likely", "possible"):
        return f". OOM {diagnosis.verdict}: {diagnosis.evidence}", "oom"
    crashed = signame in HINTS and signame not in ("SIGKILL", "SIGTERM")
    advice = ("crash" if crash_stack else "native") if crashed else \
        "outside" if signame is not None else "exit" if exitcode is not None else "unknown"
    if diagnosis is not None and diagnosis.outside_kill:
        return f". {diagnosis.evidence[0].upper()}{diagnosis.evidence[1:]}", advice
    if signame in HINTS:
        return f". Likely cause: {HINTS[signame]}", advice
    if signame is None and exitcode is not None:
        return (". The process ended itself (os._exit, or native code calling exit()) "
                "without reporting an error", advice)
    return "", advice
