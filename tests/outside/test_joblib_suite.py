"""joblib's own test_parallel.py with poolguard as joblib's default backend.

The test file is joblib's and stays outside this tree: the sdist of the
installed joblib is fetched from PyPI (``pip download --no-binary``) into a
temporary directory once per machine, and its test_parallel.py runs there
with JOBLIB_TESTS_DEFAULT_PARALLEL_BACKEND=poolguard (joblib's conftest
makes it the default backend) and ``poolguard.joblib`` loaded as a pytest
plugin (registered before the test module lists the backends, so
"poolguard" is also among the backends it parametrizes over).  The tests
that assume loky are set aside by name, with the reason (SET_ASIDE); any
other failure fails.

Several minutes: it runs where POOLGUARD_JOBLIB_SUITE is set (CI part
70-joblib-suite, which installs JOBLIB_VERSION), and is skipped otherwise.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import pytest

from scripts import ROOT

JOBLIB_VERSION = "1.6.0"   # the version SET_ASIDE was made for
CACHE = Path(tempfile.gettempdir()) / f"poolguard-joblib-{JOBLIB_VERSION}-sdist"
SUITE_LIMIT = 1500        # seconds for the whole file
PER_TEST_LIMIT = 120

# test id -> why it is set aside.
SET_ASIDE = {
    # They assume loky is joblib's default process backend.
    "test_backend_hinting_and_constraints[parallel_config]":
        "asserts that prefer='processes' gives LokyBackend; the default process "
        "backend is poolguard's here",
    "test_backend_hinting_and_constraints[parallel_backend]":
        "the same, through parallel_backend",
    # Failures of poolguard's, open: named here so that any other fails CI.
    "test_parallel_unordered_generator_returns_fastest_first[poolguard-2]":
        "open: submits are queued to a busy worker ahead of time, so the fast "
        "batches queued behind the 30 s one wait for it (head-of-line blocking)",
    "test_parallel_unordered_generator_returns_fastest_first[poolguard-4]":
        "open: the same",
    "test_memmapping_leaks[loky]":
        "open: with poolguard as the default backend (not with loky's), a loky "
        "Parallel's memmapping folder is not removed at the end of its block; "
        "cause not found yet",
}


def _fetch() -> Optional[Path]:
    """The sdist's root directory (fetched once), or None."""
    root = CACHE / f"joblib-{JOBLIB_VERSION}"
    if (root / "joblib" / "test" / "test_parallel.py").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(dir=CACHE))
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", f"joblib=={JOBLIB_VERSION}", "-d",
                        str(download)], capture_output=True, timeout=300, check=True)
        archive = next(download.glob("joblib-*.tar.gz"))
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):   # 3.10.12+, 3.11.4+
                tar.extractall(download, filter="data")
            else:
                tar.extractall(download)
        os.replace(download / f"joblib-{JOBLIB_VERSION}", root)   # atomic: racing fetches
    except (subprocess.SubprocessError, OSError, StopIteration, tarfile.TarError):
        return root if (root / "joblib" / "test" / "test_parallel.py").exists() else None
    return root


@pytest.fixture(scope="module")
def joblib_sdist() -> Path:
    if not os.environ.get("POOLGUARD_JOBLIB_SUITE"):
        pytest.skip("joblib's test suite takes minutes: CI part 70-joblib-suite runs it "
                    "(POOLGUARD_JOBLIB_SUITE=1)")
    joblib = pytest.importorskip("joblib")
    if joblib.__version__ != JOBLIB_VERSION:
        pytest.skip(f"the set-aside list is for joblib {JOBLIB_VERSION}, "
                    f"not {joblib.__version__}")
    root = _fetch()
    if root is None:
        pytest.skip(f"joblib {JOBLIB_VERSION}'s sdist could not be fetched")
    return root


@pytest.mark.timeout(SUITE_LIMIT + 60)
def test_joblib_test_parallel_passes_with_poolguard_as_default(joblib_sdist):
    env = dict(os.environ, JOBLIB_TESTS_DEFAULT_PARALLEL_BACKEND="poolguard",
               PYTHONPATH=str(ROOT))
    deselect = [arg for name in SET_ASIDE
                for arg in ("--deselect", f"joblib/test/test_parallel.py::{name}")]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "joblib/test/test_parallel.py", "-p",
         "poolguard.joblib", "-p", "no:cacheprovider", "-o", "addopts=", "-q", "-rfE",
         f"--timeout={PER_TEST_LIMIT}", *deselect],
        cwd=joblib_sdist, env=env, capture_output=True, text=True, timeout=SUITE_LIMIT,
        start_new_session=True)
    out = done.stdout
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    print(summary)
    for name, reason in SET_ASIDE.items():
        print(f"set aside: {name}: {reason}")
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.MULTILINE)
    passed = re.search(r"(\d+) passed", summary)
    assert not failed and done.returncode == 0, \
        f"{summary}\nfailed: {failed}\n{out[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert passed and int(passed.group(1)) > 600, summary
