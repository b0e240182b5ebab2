"""The kernel log (/dev/kmsg), one reader per pool: the OOM killer's record
of a pid, from the records written since the pool was made."""
from __future__ import annotations

import os
import re
from typing import Dict, Optional

from .proc import SOURCES, Sources

_KILLED = re.compile(r"Killed process (\d+) ")
_OOM_KILL = re.compile(r"oom-kill:.*?oom_memcg=([^,]*),.*?pid=(\d+)")


class KernelLog:
    """New records of the kernel log since this object was made."""

    MAX_REMEMBERED = 256

    def __init__(self, sources: Sources = SOURCES):
        self.problem: Optional[str] = None
        self._records: Dict[int, Dict[str, str]] = {}
        try:
            self._fd: Optional[int] = os.open(sources.kmsg, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._fd, 0, os.SEEK_END)   # only what happens from now on
        except OSError as exc:
            self._fd = None
            self.problem = f"{sources.kmsg} not readable ({exc.strerror or exc})"

    @property
    def readable(self) -> bool:
        return self._fd is not None

    def oom_record(self, pid: int) -> Optional[Dict[str, str]]:
        """The OOM killer's record for *pid*, if it wrote one."""
        self._drain()
        return self._records.get(pid)

    def _drain(self) -> None:
        if self._fd is None:
            return
        for _ in range(100_000):   # records since the last read; bounded anyway
            try:
                raw = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == 32:   # EPIPE: records were overwritten; go on
                    continue
                self.problem = f"kernel log read failed ({exc.strerror or exc})"
                self.close()
                return
            if not raw:
                return
            text = raw.decode("utf-8", "replace")
            message = text.split(";", 1)[-1].strip()
            match = _OOM_KILL.search(message)
            if match:
                self._remember(int(match.group(2)), "memcg", match.group(1))
                continue
            match = _KILLED.search(message)
            if match and "out of memory" in message.lower():
                self._remember(int(match.group(1)), "line", message)

    def _remember(self, pid: int, key: str, value: str) -> None:
        self._records.setdefault(pid, {})[key] = value
        while len(self._records) > self.MAX_REMEMBERED:
            self._records.pop(next(iter(self._records)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
