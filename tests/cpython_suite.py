"""Run CPython's own test_concurrent_futures against poolguard's executor.

    CPYTHON_TEST_DIR=DIR PYTHONPATH=SHIM:. python tests/cpython_suite.py METHOD

with CPYTHON_TEST_DIR naming the directory that holds CPython 3.11's
test_concurrent_futures.py; SHIM holds a ``sitecustomize.py`` that replaces
``concurrent.futures.ProcessPoolExecutor`` by ``poolguard.ProcessPoolExecutor``
in every interpreter of the run (the suite starts some of its own).
tests/test_cpython_suite.py sets this up.  Runs the process-pool test classes
for one start method and ends with a line ``N passed, N failed, N skipped``.
Tests that read CPython's private attributes are set aside (SET_ASIDE).  The
test file itself is CPython's and is not kept in this tree
(tests/test_cpython_suite.py finds or fetches it).
"""
from __future__ import annotations

import faulthandler
import sys
import unittest

import poolguard

PER_TEST_LIMIT = 120    # seconds; a hung test prints every stack and exits

# Tests that read CPython's private attributes: "test" or "ClassSuffix.test" -> which.
SET_ASIDE = {
    "FailingInitializerTest.test_initializer": "_broken",
    "test_processes_terminate": "_processes",
    "test_context_manager_shutdown": "_processes",
    "test_del_shutdown": "_call_queue, _executor_manager_thread, _processes",
    "test_shutdown_no_wait": "_call_queue, _executor_manager_thread, _processes",
    "test_default_workers": "_max_workers",
    "test_saturation": "_max_workers, _processes",
    "test_killed_child": "_processes",
    "test_traceback": "_RemoteTraceback",
    "test_idle_process_reuse_one": "_max_workers, _processes",
    "test_idle_process_reuse_multiple": "_max_workers, _processes",
    "test_max_tasks_per_child": "_processes",
    "test_max_tasks_per_child_defaults_to_spawn_context": "_mp_context",
    "test_shutdown_deadlock_pickle": "_executor_manager_thread",
    # Not private, but out of a harness's reach: it starts `python -I` (isolated),
    # which sees neither this shim nor CPython's test file.  Its case (an
    # executor never shut down finishes its work at exit, under each start
    # method) is test_executor.py's test_unshut_executor_at_interpreter_exit.
    "test_interpreter_shutdown": "runs an isolated interpreter",
}


SHIM = """\
import concurrent.futures, os
import poolguard
concurrent.futures.ProcessPoolExecutor = poolguard.ProcessPoolExecutor
if os.environ.get("CPYTHON_TEST_DIR"):   # CPython's tests beside this Python's test package
    import test
    test.__path__.append(os.environ["CPYTHON_TEST_DIR"])
"""


def load():
    import test.test_concurrent_futures as module
    assert module.futures.ProcessPoolExecutor is poolguard.ProcessPoolExecutor, \
        "run with the sitecustomize shim on PYTHONPATH"
    return module


def suite(module, method: str) -> unittest.TestSuite:
    mixin = {"fork": "ProcessPoolFork", "spawn": "ProcessPoolSpawn",
             "forkserver": "ProcessPoolForkserver"}[method]
    loader = unittest.TestLoader()
    tests = unittest.TestSuite()
    for name in sorted(dir(module)):
        cls = getattr(module, name)
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
            continue
        if not name.startswith(mixin) or (method == "fork" and "Forkserver" in name):
            continue
        for test in loader.loadTestsFromTestCase(cls):
            if not set_aside(name, test.id().rsplit(".", 1)[-1]):
                tests.addTest(test)
    return tests


def set_aside(cls: str, test: str) -> bool:
    for key in SET_ASIDE:
        key_cls, _, key_test = key.rpartition(".")
        if key_test == test and cls.endswith(key_cls):
            return True
    return False


def main() -> int:
    method = sys.argv[1]
    module = load()
    tests = suite(module, method)
    faulthandler.dump_traceback_later(PER_TEST_LIMIT * max(1, tests.countTestCases()),
                                      exit=True)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(tests)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    print(f"{passed} passed, {failed} failed, {len(result.skipped)} skipped")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
