"""What a store holds, and its upkeep: ``python -m poolguard checkpoint PATH``."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List

from .files import read_small

_STALE_TEMP = 3600.0                    # seconds before `clean` removes a temp file
_INFO_LIMIT = 1 << 20                   # bytes of a step.json read at most


@dataclass
class StepInfo:
    directory: str
    step: str
    function: str
    entries: int
    size: int
    temporary: int      # temporary files (writes in progress, or left by a killed writer)


def steps(root: str) -> List[StepInfo]:
    """What a store holds, one StepInfo a step; an unreadable part counts as empty."""
    found = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        directory = os.path.join(root, name)
        if not os.path.isdir(directory):
            continue
        try:
            info: Dict[str, Any] = json.loads(read_small(os.path.join(directory, "step.json"),
                                                         _INFO_LIMIT))
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict):
            info = {}
        entries = size = temporary = 0
        for path in _files(directory):
            if path.endswith(".tmp"):
                temporary += 1
            elif path.endswith(".entry"):
                entries += 1
                try:
                    size += os.stat(path).st_size
                except OSError:
                    pass
        found.append(StepInfo(name, info.get("step", "?"), info.get("function", "?"),
                              entries, size, temporary))
    return found


def clear(root: str, step: str) -> bool:
    """Remove one step (by its name or its directory name); False if absent."""
    for info in steps(root):
        if step in (info.step, info.directory):
            shutil.rmtree(os.path.join(root, info.directory), ignore_errors=True)
            return True
    return False


def clean(root: str, older_than: float = _STALE_TEMP) -> int:
    """Remove temporary files older than *older_than* seconds (left by killed
    writers); returns how many went.  Safe while others write."""
    removed = 0
    now = time.time()
    for path in _files(root):
        if path.endswith(".tmp"):
            try:
                if now - os.stat(path).st_mtime > older_than:
                    os.unlink(path)
                    removed += 1
            except OSError:   # gone already (another cleaner, or renamed into place)
                pass
    return removed


def _files(directory: str) -> Iterator[str]:
    for base, _dirs, files in os.walk(directory):
        for name in files:
            yield os.path.join(base, name)
