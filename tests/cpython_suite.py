"""Run CPython's own test_concurrent_futures against poolguard's executor.

    python tests/cpython_suite.py DIR METHOD

DIR is a ``test`` directory holding this Python's test_concurrent_futures, a
module up to 3.11 and a package from 3.12 (tests/outside/test_cpython_suite.py finds
or fetches it; CPython's code is not kept in this tree).  The suite
starts interpreters of its own, some isolated (``python -I``), so the swap
of ``concurrent.futures.ProcessPoolExecutor`` for ``poolguard.ProcessPoolExecutor``
is made by a ``.pth`` file put in this environment's site-packages for the
run: it acts only in processes whose environment has POOLGUARD_CPYTHON_SUITE
(so one left behind by a killed run is inert) and is removed at the end.
Runs the process-pool test classes for one start method and ends with a
line ``N passed, N failed, N skipped``.  Tests that read CPython's private
attributes are set aside (SET_ASIDE).
"""
from __future__ import annotations

import faulthandler
import importlib
import os
import pkgutil
import sys
import sysconfig
import unittest

PER_TEST_LIMIT = 120    # seconds a test may take; past it every stack is printed and the run exits
ENV = "POOLGUARD_CPYTHON_SUITE"

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
    "test_traceback_when_child_process_terminates_abruptly": "_RemoteTraceback",   # 3.15
    "test_idle_process_reuse_one": "_max_workers, _processes",
    "test_idle_process_reuse_multiple": "_max_workers, _processes",
    "test_max_tasks_per_child": "_processes",
    "test_max_tasks_per_child_defaults_to_spawn_context": "_mp_context",
    "test_shutdown_deadlock_pickle": "_executor_manager_thread",
    # 3.12 on: makes threading._start_joinable_thread fail from the second
    # thread on, expecting CPython's executor to break at its second one.
    "test_python_finalization_error": "threading._start_joinable_thread",
    # 3.14 on.  Run with the attribute missing, test_broken_process_pool_traceback
    # hangs in tearDown (its tasks wait for an event nobody sets), and the
    # gh_132969 ones leave their executors running: under forkserver their
    # workers keep the fork server, hence the module's teardown, waiting.
    "test_broken_process_pool_traceback": "_processes",
    "test_shutdown_no_wait_max_tasks_gh119592": "_executor_manager_thread",
    "test_gc_during_max_tasks_worker_exit_gh152967": "_executor_manager_thread",
    "test_force_shutdown_during_max_tasks_worker_exit":
        "_executor_manager_thread, _shutdown_lock, _force_shutting_down",
    "test_failed_worker_replacement_breaks_pool":
        "_executor_manager_thread, concurrent.futures.process._spawn_worker",
    "test_terminate_workers": "_force_shutdown",
    "test_kill_workers": "_force_shutdown",
    "test_force_shutdown_workers_invalid_op": "_force_shutdown",
    "test_force_shutdown_workers": "_processes",
    "test_force_shutdown_workers_stops_pool": "_processes",
    "test_shutdown_gh_132969_case_1": "_executor_manager_thread",
    "test_shutdown_gh_132969_case_2": "_executor_manager_thread",
}

# Run at the start of every interpreter of this environment while the .pth
# exists, and only where ENV is set: the swap, and CPython's test file
# beside this Python's own test package.
SHIM = (
    "import os\n"
    f"if os.environ.get({ENV!r}):\n"
    "    import concurrent.futures, poolguard, test\n"
    "    concurrent.futures.ProcessPoolExecutor = poolguard.ProcessPoolExecutor\n"
    f"    test.__path__.append(os.environ[{ENV!r}])\n"
)


def install_shim() -> str:
    path = os.path.join(sysconfig.get_paths()["purelib"], f"zz-poolguard-cpython-{os.getpid()}.pth")
    with open(path, "w") as f:
        f.write(f"import os; exec({SHIM!r}) if os.environ.get({ENV!r}) else None\n")
    return path


def modules(top):
    """The module, or the test modules of the package (3.12 on)."""
    if not hasattr(top, "__path__"):
        return [top]
    return [importlib.import_module(f"{top.__name__}.{info.name}")
            for info in sorted(pkgutil.iter_modules(top.__path__), key=lambda i: i.name)
            if info.name.startswith("test_")]


def suite(top, method: str) -> unittest.TestSuite:
    tests = unittest.TestSuite()
    for module in modules(top):
        tests.addTests(module_suite(module, method))
    return tests


def module_suite(module, method: str) -> unittest.TestSuite:
    mixin = {"fork": "ProcessPoolFork", "spawn": "ProcessPoolSpawn",
             "forkserver": "ProcessPoolForkserver"}[method]
    loader = unittest.TestLoader()
    tests = unittest.TestSuite()
    for name in sorted(dir(module)):
        cls = getattr(module, name)
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)) \
                or cls.__module__ != module.__name__:    # imported from another module
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


class BoundedResult(unittest.TextTestResult):
    """Each test bounded on its own: a hang is shown, with its stacks, as
    the test it is in, not as the whole run's timeout at the end."""

    def startTest(self, test):
        super().startTest(test)
        faulthandler.dump_traceback_later(PER_TEST_LIMIT, exit=True)

    def stopTest(self, test):
        super().stopTest(test)
        # What comes before the next test (a module's teardown) is bounded too.
        faulthandler.dump_traceback_later(PER_TEST_LIMIT, exit=True)


def main() -> int:
    directory, method = sys.argv[1], sys.argv[2]
    # Bounded from here to the interpreter's exit (the tests re-arm it).
    faulthandler.dump_traceback_later(PER_TEST_LIMIT, exit=True)
    os.environ[ENV] = directory
    exec(SHIM)                      # this interpreter started before the .pth existed
    shim = install_shim()
    try:
        import concurrent.futures
        import poolguard
        import test.test_concurrent_futures as top
        assert concurrent.futures.ProcessPoolExecutor is poolguard.ProcessPoolExecutor
        tests = suite(top, method)
        result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout,
                                         resultclass=BoundedResult).run(tests)
    finally:
        os.unlink(shim)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    print(f"{passed} passed, {failed} failed, {len(result.skipped)} skipped")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
