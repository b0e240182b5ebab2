"""No DeprecationWarning may come from poolguard's own code (a pytest plugin,
loaded by conftest.py).

An ``error`` filter is not enough: CPython 3.12+ warns when a multi-threaded
process calls ``os.fork()``, and it clears that warning when a filter turns it
into an error (the fork has happened by then), so under
``-W error::DeprecationWarning`` it vanishes without a trace.  Instead every
DeprecationWarning whose code lies in the tested poolguard package is
recorded, whatever the filters of the environment, and fails the run with
the test and the line that raised it.  Interpreters the tests start are
checked through their stderr (``offending_lines``, used by scripts.py).
"""
from __future__ import annotations

import os
import re
from typing import List

import pytest

import poolguard

PACKAGE = os.path.dirname(os.path.abspath(poolguard.__file__))
# For the interpreters the tests start: every DeprecationWarning is shown.
SCRIPT_WARNINGS = "always::DeprecationWarning"
_LINE = re.compile(r"^(?P<file>/\S+\.py):\d+: (?:\w+\.)*\w*DeprecationWarning: .*$", re.M)

_found: List[str] = []


def from_poolguard(filename: str) -> bool:
    return os.path.abspath(filename).startswith(PACKAGE + os.sep)


def offending_lines(stderr: str) -> List[str]:
    """The warning lines of *stderr* (as ``warnings`` prints them) that point
    into poolguard's package."""
    return [m.group(0) for m in _LINE.finditer(stderr) if from_poolguard(m.group("file"))]


def pytest_configure(config):
    # Module names are regexes here: every poolguard.* module, shown each time.
    config.addinivalue_line("filterwarnings", "always::DeprecationWarning:poolguard")


def pytest_warning_recorded(warning_message, when, nodeid, location):
    if issubclass(warning_message.category, DeprecationWarning) \
            and from_poolguard(warning_message.filename):
        _found.append(f"{nodeid or when}: {warning_message.filename}:{warning_message.lineno}: "
                      f"{warning_message.category.__name__}: {warning_message.message}")


def pytest_sessionfinish(session, exitstatus):
    if _found and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _found:
        terminalreporter.section("DeprecationWarning from poolguard (the run fails)", red=True)
        for line in dict.fromkeys(_found):
            terminalreporter.write_line(line)
