"""progress= on the map calls: counts of items, crashes, retries and timeouts,
shown by tqdm, by a plain text line, or given to a callable."""
from __future__ import annotations

import fcntl
import functools
import io
import os
import sys
import struct
import subprocess
import termios

import pytest

import poolguard
import tasks
from scripts import ROOT

tqdm = pytest.importorskip("tqdm").tqdm


def test_a_callable_gets_the_counts_of_crashes_retries_and_timeouts(tmp_path):
    infos = []
    die_at_3 = functools.partial(tasks.die_at, at=3)
    with poolguard.Pool(2, retries=1, task_timeout=1.0) as pool:
        results = pool.imap(die_at_3, range(8), progress=infos.append)
        outcomes = []
        while True:
            try:
                outcomes.append(next(results))
            except StopIteration:
                break
            except poolguard.WorkerCrashedError:
                outcomes.append("crash")
        assert outcomes == [0, 2, 4, "crash", 8, 10, 12, 14]
        last = infos[-1]
        assert last.final and (last.done, last.total) == (8, 8)
        # Item 3 killed its worker twice: the first death was retried.
        assert (last.failed, last.crashed, last.retried, last.timed_out) == (1, 2, 1, 0)
        assert last.label == "imap(die_at)"
        assert all(not info.final for info in infos[:-1])
        assert "2 crashed · 1 retried" in last.describe() and "raised" not in last.describe()

        infos.clear()
        with pytest.raises(poolguard.TaskTimeoutError):
            pool.map(tasks.sleep_then, [0, 30, 0], chunksize=1, progress=infos.append)
        # Timed out twice (retries=1): each stop counted, as a timeout.
        assert infos[-1].final and infos[-1].timed_out == 2 and infos[-1].crashed == 0
        assert infos[-1].retried == 1


def test_a_crash_that_was_retried_counts_as_a_crash_and_a_retry(tmp_path):
    infos = []
    marker = str(tmp_path / "died")
    die_once = functools.partial(tasks.die_first_time, marker)
    with poolguard.ProcessPoolExecutor(2, retries=1) as executor:
        assert list(executor.map(die_once, range(6), progress=infos.append)) == list(range(6))
        last = infos[-1]
        assert (last.done, last.failed, last.crashed, last.retried, last.raised) == (6, 0, 1, 1, 0)
        assert last.describe().endswith("· 1 crashed · 1 retried")
        infos.clear()
        raise_at_2 = functools.partial(tasks.raise_at, at=2)
        with pytest.raises(ValueError):
            list(executor.map(raise_at_2, range(4), progress=infos.append))
        assert (infos[-1].failed, infos[-1].raised, infos[-1].crashed) == (1, 1, 0)
        assert "1 raised" in infos[-1].describe()


def test_plain_text_when_not_a_terminal_and_nothing_when_off(capfd):
    with poolguard.Pool(2) as pool:
        pool.map(tasks.square, range(50))
        assert capfd.readouterr().err == ""
        assert pool.map(tasks.square, range(50), progress=True)[-1] == 49 * 49
        line = capfd.readouterr().err
        assert line.startswith("map(square): 50/50 items (100%) · ") and line.endswith("\n")
        assert line.count("\n") == 2   # the count, then the workers' summary
        assert line.splitlines()[1].startswith("map(square): 2 workers · 50 tasks")


def test_a_tqdm_bar_of_the_caller_is_updated_and_left_open():
    stream = io.StringIO()
    bar = tqdm(file=stream, mininterval=0)
    die_at_5 = functools.partial(tasks.die_at, at=5)
    with poolguard.ProcessPoolExecutor(2) as executor:
        with pytest.raises(poolguard.WorkerCrashedError):
            list(executor.map(die_at_5, range(10), chunksize=2, progress=bar))
    assert bar.total == 10 and bar.n >= 6   # the chunk of item 5 and the ones before it
    assert "1 crashed" in stream.getvalue()
    assert not bar.disable
    bar.close()


@pytest.mark.parametrize("chunksize", [None, 3])
def test_executor_map(chunksize):
    infos = []
    with poolguard.ProcessPoolExecutor(2) as executor:
        values = list(executor.map(tasks.square, range(100), chunksize=chunksize,
                                   progress=infos.append))
    assert values == [i * i for i in range(100)]
    assert infos[-1].final and infos[-1].done == 100 and infos[-1].label == "map(square)"


def test_a_lazy_iterable_gets_its_total_at_the_end():
    infos = []
    with poolguard.Pool(2) as pool:
        assert sum(pool.imap_unordered(tasks.square, (i for i in range(30)), 4,
                                       progress=infos.append)) == sum(i * i for i in range(30))
    assert infos[-1].final and (infos[-1].done, infos[-1].total) == (30, 30)


def test_a_bad_progress_is_refused_at_the_call():
    with poolguard.Pool(1) as pool:
        with pytest.raises(TypeError, match="progress must be"):
            pool.map(tasks.square, range(3), progress="yes")


def test_tqdm_on_a_terminal_in_a_fresh_interpreter(tmp_path):
    """A real pseudo-terminal as stderr: tqdm draws; and import poolguard
    alone imports none of tqdm, joblib and dask."""
    script = tmp_path / "bar.py"
    script.write_text(
        "import sys, poolguard\n"
        "assert not {'tqdm', 'joblib', 'distributed', 'dask'} & set(sys.modules)\n"
        "def square(x):\n    return x * x\n"
        "if __name__ == '__main__':\n"
        "    with poolguard.Pool(2) as pool:\n"
        "        print(sum(pool.map(square, range(500), progress=True)))\n")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=slave, env=env, text=True)
    os.close(slave)
    out, _ = proc.communicate(timeout=60)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:   # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    assert proc.returncode == 0 and out.strip() == str(sum(i * i for i in range(500)))
    assert b"map(square)" in drawn and b"500/500" in drawn and b"100%" in drawn
