"""CPython 3.11's own test_concurrent_futures against poolguard's executor.

The test file is CPython's and stays outside this tree: it is taken from
this Python's ``test`` package when that has it, else from Debian's
``libpython3.11-testsuite`` package, fetched into a temporary directory once
per machine.  Where neither can be had, the test is skipped with the reason.
tests/cpython_suite.py runs it with the executor swapped.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

from scripts import ROOT

HERE = Path(__file__).resolve().parent
CACHE = Path(tempfile.gettempdir()) / "poolguard-cpython-3.11-tests"
SUITE_LIMIT = 600     # seconds for one start method's run


def _fetch() -> Optional[Path]:
    spec = importlib.util.find_spec("test.test_concurrent_futures")
    if spec is not None and spec.origin:
        return Path(spec.origin)
    found = list(CACHE.glob("**/test/test_concurrent_futures.py"))
    if found:
        return found[0]
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    download = tempfile.mkdtemp(dir=CACHE)
    try:
        subprocess.run(["apt-get", "download", "libpython3.11-testsuite"], cwd=download,
                       capture_output=True, timeout=120, check=True)
        deb = next(Path(download).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), download], capture_output=True,
                       timeout=120, check=True)
    except (subprocess.SubprocessError, OSError, StopIteration):
        return None
    found = list(Path(download).glob("**/test/test_concurrent_futures.py"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def cpython_test_file() -> Path:
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the fetched suite is CPython 3.11's; this is "
                    f"{sys.version_info[0]}.{sys.version_info[1]}")
    path = _fetch()
    if path is None:
        pytest.skip("test_concurrent_futures.py is not in this Python and "
                    "libpython3.11-testsuite could not be fetched")
    return path


@pytest.mark.timeout(SUITE_LIMIT + 60)
def test_cpython_test_concurrent_futures_passes(cpython_test_file, method):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    done = subprocess.run([sys.executable, str(HERE / "cpython_suite.py"),
                           str(cpython_test_file.parent), method],
                          capture_output=True, text=True, timeout=SUITE_LIMIT, env=env,
                          start_new_session=True)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    match = re.fullmatch(r"(\d+) passed, (\d+) failed, (\d+) skipped", summary)
    assert match, f"no summary line\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    passed, failed = int(match.group(1)), int(match.group(2))
    assert failed == 0 and done.returncode == 0, \
        f"{summary}\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-6000:]}"
    assert passed >= 30, summary
