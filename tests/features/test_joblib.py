"""The joblib backend (poolguard/joblib.py), with real joblib and a real
scikit-learn estimator.  The scikit-learn cases run in fresh interpreters
(a script per start method), since what a worker can import depends on how
the program was started."""
from __future__ import annotations

import os

import psutil
import pytest

joblib = pytest.importorskip("joblib")

import poolguard  # noqa: E402
import poolguard.joblib  # noqa: E402,F401  (registers the backend)
import tasks  # noqa: E402
from conftest import wait_until  # noqa: E402
from scripts import run_script  # noqa: E402

ESTIMATORS = """
import os, signal
from sklearn.linear_model import Ridge

class KilledAtOne(Ridge):
    '''A real estimator whose fit is SIGKILLed for alpha=1.0.'''
    def fit(self, X, y, sample_weight=None):
        if self.alpha == 1.0:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().fit(X, y, sample_weight)

class KilledOnce(Ridge):
    '''Killed on its first fit with alpha=1.0 only (a marker file in the
    working directory says so).'''
    def fit(self, X, y, sample_weight=None):
        if self.alpha == 1.0:
            try:
                os.close(os.open("killed-once", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().fit(X, y, sample_weight)
"""


def test_grid_search_names_the_killed_fit_and_the_pool_goes_on(tmp_path, method):
    pytest.importorskip("sklearn")
    out = run_script(tmp_path, """
        import joblib, poolguard.joblib
        from sklearn.datasets import make_regression
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import GridSearchCV, cross_val_score
        from estimators import KilledAtOne, KilledOnce
        X, y = make_regression(n_samples=60, n_features=4, random_state=0)
        grid = {"alpha": [0.1, 1.0, 10.0]}
        with joblib.parallel_config(backend="poolguard", n_jobs=2, mp_context=METHOD):
            try:
                GridSearchCV(KilledAtOne(), grid, cv=3).fit(X, y)
            except poolguard.WorkerCrashedError as e:
                print("crash", e.signal, e.task.function, e.task.item, e.task.call)
                print("args", e.task.arguments)
            # the same backend, after the crash:
            print("scores", len(cross_val_score(Ridge(), X, y, cv=3)))
        with joblib.parallel_config(backend="poolguard", n_jobs=2, retries=1,
                                    mp_context=METHOD):
            search = GridSearchCV(KilledOnce(), grid, cv=3).fit(X, y)
            print("retried", search.best_params_["alpha"] in grid["alpha"])
    """, method, modules={"estimators": ESTIMATORS})
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    signal_name, function, item, call = lines["crash"].split()
    assert (signal_name, function, call) == ("SIGKILL", "_fit_and_score", "joblib.Parallel")
    # candidate 1 (alpha=1.0) of three, three folds each: calls 3, 4 and 5
    assert int(item) in (3, 4, 5), out
    assert "'alpha': 1.0" in lines["args"], out
    assert lines["scores"] == "3"
    assert lines["retried"] == "True"
    assert os.path.exists(tmp_path / "killed-once")


@pytest.fixture
def backend():
    with joblib.parallel_config(backend="poolguard", n_jobs=2) as config:
        yield config


def test_results_in_order_lambdas_and_exceptions(backend):
    assert joblib.Parallel()(joblib.delayed(tasks.square)(i) for i in range(50)) \
        == [i * i for i in range(50)]
    k = 3
    assert joblib.Parallel()(joblib.delayed(lambda x: x + k)(i) for i in range(4)) \
        == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="item 5 refuses"):
        joblib.Parallel()(joblib.delayed(tasks.raise_at)(i, 5) for i in range(10))
    # the backend was reset after the failure and serves the next call
    assert joblib.Parallel()(joblib.delayed(tasks.add)(i, 1) for i in range(3)) == [1, 2, 3]


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generators(backend, return_as):
    results = joblib.Parallel(return_as=return_as)(
        joblib.delayed(tasks.sleep_then_square)(i, 0.001) for i in range(30))
    assert not isinstance(results, list)
    values = list(results)
    if return_as == "generator":
        assert values == [i * i for i in range(30)]
    else:
        assert sorted(values) == [i * i for i in range(30)]


def test_a_crash_in_a_generator_names_its_item(backend):
    results = joblib.Parallel(return_as="generator")(
        joblib.delayed(tasks.die_at)(i, 4) for i in range(8))
    seen = []
    with pytest.raises(poolguard.WorkerCrashedError) as info:
        for value in results:   # joblib raises a task's error as soon as it comes
            seen.append(value)
    assert seen == [0, 2, 4, 6][:len(seen)]
    assert info.value.task.function == "die_at" and info.value.task.item == 4
    assert info.value.task.arguments == "4, 4"


def test_workers_are_shared_within_a_parallel_block_and_gone_after(backend):
    with joblib.Parallel() as parallel:
        first = set(parallel(joblib.delayed(tasks.getpid)(i) for i in range(20)))
        second = set(parallel(joblib.delayed(tasks.getpid)(i) for i in range(20)))
    assert first & second
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in first | second), 10,
               message="workers still alive after the Parallel block")


def test_guard_options():
    with joblib.parallel_config(backend="poolguard", n_jobs=2, task_timeout=0.5):
        with pytest.raises(poolguard.TaskTimeoutError) as info:
            joblib.Parallel()(joblib.delayed(tasks.sleep_then)(s, s) for s in (0, 30, 0))
    assert info.value.task.function == "sleep_then" and info.value.task.item == 1
    with joblib.parallel_config(backend="poolguard", n_jobs=2, max_worker_memory="200MiB"):
        with pytest.raises(poolguard.WorkerMemoryError) as info:
            joblib.Parallel()([joblib.delayed(tasks.grow)(8)])
    assert "max_worker_memory=200 MiB" in str(info.value)


def test_nested_parallel_inside_a_task(backend):
    assert joblib.Parallel()(joblib.delayed(_nested)(i) for i in range(3)) == [0, 1, 3]


def _nested(n):
    return sum(joblib.Parallel(n_jobs=2)(joblib.delayed(int)(i) for i in range(n + 1)))


def test_unknown_option_is_refused_at_once():
    with pytest.raises(TypeError, match="unknown option.*tsak_timeout"):
        with joblib.parallel_config(backend="poolguard", tsak_timeout=1):
            pass


def test_loky_inside_a_poolguard_task_does_not_hold_up_the_shutdown(tmp_path, method):
    """A task runs a nested loky Parallel, whose workers idle on for minutes
    (loky's reusable executor): the poolguard workers end them as they
    leave instead of waiting for them at exit.  The caller has used loky
    first: a worker forked from it must not queue work to the caller's
    loky executor, which it inherited and whose processes are not its own."""
    out = run_script(tmp_path, """
        import joblib, poolguard.joblib

        def inner(i):
            return sum(joblib.Parallel(n_jobs=2, backend="loky")(
                joblib.delayed(abs)(-j) for j in range(i + 2)))

        print("caller", joblib.Parallel(n_jobs=2, backend="loky")(
            joblib.delayed(abs)(-j) for j in range(3)))
        started = time.monotonic()
        with joblib.parallel_config(backend="poolguard", n_jobs=2, mp_context=METHOD):
            print("results", joblib.Parallel()(joblib.delayed(inner)(i) for i in range(4)))
        print("took", time.monotonic() - started)
    """, method)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["caller"] == "[0, 1, 2]"
    assert lines["results"] == "[1, 3, 6, 10]"
    # loky's idle workers would hold each poolguard worker for 300 s
    assert float(lines["took"]) < 30, out


def test_n_jobs_1_runs_in_the_callers_process():
    with joblib.parallel_config(backend="poolguard"):
        assert joblib.Parallel(n_jobs=1)(joblib.delayed(tasks.getpid)(i) for i in range(3)) \
            == [os.getpid()] * 3


def test_a_loky_task_may_name_the_poolguard_backend(tmp_path):
    """The name is registered in loky's workers too: the batches sent to
    them import poolguard.joblib (a function of __main__ goes by value and
    brings no import of its own)."""
    out = run_script(tmp_path, """
        import joblib, poolguard.joblib

        def inner(i):
            return joblib.Parallel(n_jobs=2, backend="poolguard")(
                joblib.delayed(abs)(-j) for j in range(i + 1))

        print(joblib.Parallel(n_jobs=2, backend="loky")(
            joblib.delayed(inner)(i) for i in range(3)))
    """, "spawn")
    assert out.strip() == "[[0], [0, 1], [0, 1, 2]]"


TREES = """
import os, signal
from sklearn.tree import DecisionTreeClassifier

class KilledAtDepthTwo(DecisionTreeClassifier):
    '''A real estimator whose fit is SIGKILLed for max_depth=2.'''
    def fit(self, X, y, sample_weight=None, check_input=True):
        if self.max_depth == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().fit(X, y, sample_weight=sample_weight, check_input=check_input)
"""


def test_a_grid_search_crash_shows_the_candidates_parameters_and_arrays_by_shape(tmp_path):
    """Before: `...parameters={'max_depth': 2...)`, cut behind the arrays'
    values.  The candidate comes whole, the arrays as type, shape and dtype."""
    pytest.importorskip("sklearn")
    out = run_script(tmp_path, """
        import joblib, poolguard.joblib
        from sklearn.datasets import load_iris
        from sklearn.model_selection import GridSearchCV
        from trees import KilledAtDepthTwo
        X, y = load_iris(return_X_y=True)
        grid = {"max_depth": [1, 2], "min_samples_leaf": [1], "min_samples_split": [2],
                "criterion": ["gini"], "splitter": ["best"], "max_features": [None]}
        with joblib.parallel_config(backend="poolguard", n_jobs=2, mp_context=METHOD):
            try:
                GridSearchCV(KilledAtDepthTwo(), grid, cv=3).fit(X, y)
            except poolguard.WorkerCrashedError as e:
                print(str(e).splitlines()[0])
    """, "spawn", modules={"trees": TREES})
    assert ("_fit_and_score(KilledAtDepthTwo(), <ndarray (150, 4) float64>, "
            "<ndarray (150,) int64>, parameters={'criterion': 'gini', 'max_depth': 2, "
            "'max_features': None, 'min_samples_leaf': 1, 'min_samples_split': 2, "
            "'splitter': 'best'}, ") in out, out


def test_arrays_are_named_by_type_shape_and_dtype_at_any_depth():
    import numpy as np
    from poolguard.naming import short_repr
    assert short_repr(np.zeros((150, 4))) == "<ndarray (150, 4) float64>"
    assert short_repr((np.arange(100), {"w": np.ones(7, dtype=np.float32)})) == \
        "(<ndarray (100,) int64>, {'w': <ndarray (7,) float32>})"
    assert short_repr(np.arange(3)) == "array([0, 1, 2])"   # small: its values
    assert short_repr(np.float64(2.5)) == "2.5" or short_repr(np.float64(2.5)) == "np.float64(2.5)"
    sparse = pytest.importorskip("scipy.sparse")
    assert short_repr(sparse.csr_matrix(np.eye(10))).endswith(" (10, 10) float64>")


class DataFrame:
    """Shaped as a pandas frame is, for what names it (pandas is no test
    dependency): a shape and a dtype per column."""
    shape = (10, 2)
    dtypes = ["int64", "float64"]


def test_a_frame_is_named_by_its_shape_and_column_types():
    from poolguard.naming import short_repr
    assert short_repr([DataFrame()]) == "[<DataFrame (10, 2) mixed>]"
