"""The running CPython's own test_concurrent_futures against poolguard's executor.

The tests are CPython's and stay outside this tree: a module up to 3.11, a
package from 3.12.  They are taken from this Python's ``test`` package when
that has them (pyenv's 3.10 and 3.13 do, its 3.11 and 3.12 do not), else
from Debian's ``libpython3.X-testsuite`` package of the same version,
fetched into a temporary directory once per machine.  Where neither can be
had, the test is skipped with the reason.  tests/cpython_suite.py runs them
with the executor swapped.
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

from scripts import ROOT, TESTS
from warnings_policy import SCRIPT_WARNINGS, offending_lines

HERE = Path(TESTS)
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
PACKAGE = f"libpython{VERSION}-testsuite"
CACHE = Path(tempfile.gettempdir()) / f"poolguard-cpython-{VERSION}-tests"
SUITE_LIMIT = 600     # seconds for one start method's run


def _test_dir(found: "list[Path]") -> Optional[Path]:
    """The ``test`` directory holding test_concurrent_futures, from the
    paths of its module or of its package's __init__.py."""
    for path in found:
        return path.parent if path.name != "__init__.py" else path.parent.parent
    return None


def _in_tree(tree: Path) -> Optional[Path]:
    return _test_dir(list(tree.glob("**/test/test_concurrent_futures.py"))
                     + list(tree.glob("**/test/test_concurrent_futures/__init__.py")))


def _fetch() -> Optional[Path]:
    spec = importlib.util.find_spec("test.test_concurrent_futures")
    if spec is not None and spec.origin:
        return _test_dir([Path(spec.origin)])
    if CACHE.is_dir():
        found = _in_tree(CACHE)
        if found:
            return found
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    download = tempfile.mkdtemp(dir=CACHE)
    try:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=download,
                       capture_output=True, timeout=120, check=True)
        deb = next(Path(download).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), download], capture_output=True,
                       timeout=120, check=True)
    except (subprocess.SubprocessError, OSError, StopIteration):
        return None
    return _in_tree(Path(download))


@pytest.fixture(scope="module")
def cpython_test_dir() -> Path:
    path = _fetch()
    if path is None:
        pytest.skip(f"test_concurrent_futures is not in this Python {VERSION} and "
                    f"{PACKAGE} could not be fetched")
    return path


@pytest.mark.timeout(SUITE_LIMIT + 60)
def test_cpython_test_concurrent_futures_passes(cpython_test_dir, method):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]),
               PYTHONWARNINGS=SCRIPT_WARNINGS)
    done = subprocess.run([sys.executable, str(HERE / "cpython_suite.py"),
                           str(cpython_test_dir), method],
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
    assert not offending_lines(done.stderr), f"DeprecationWarning from poolguard:\n{done.stderr}"
