"""Many jobs at once on one shared, new checkpoint store with a key that does
not exist yet: what a batch array does on its first run.  Everything
poolguard creates (the store's directories, the key and its directory,
temporary files) is made by several processes at the same instant.

Run as plain processes here, and as SLURM array tasks where the SLURM of
tools/slurm.sh is up (marker ``slurm``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import batch

JOBS = 8
ITEMS = 40

# Each job: wait until every job has started (a barrier on files), then a
# checkpointed map; report what it got, the warnings and the calls it made.
STEP = r'''
import json, os, sys, time, warnings
folder, store, jobs, index = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def square(x):
    with open(os.path.join(folder, f"calls-{index}-{os.getpid()}"), "a") as f:
        f.write(f"{x}\n")
    return x * x

if __name__ == "__main__":
    import poolguard
    open(os.path.join(folder, f"arrived-{index}"), "w").close()
    deadline = time.monotonic() + 120
    while sum(name.startswith("arrived-") for name in os.listdir(folder)) < jobs:
        if time.monotonic() > deadline:
            sys.exit("not every job started within 120 s")
        time.sleep(0.005)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with poolguard.Pool(2) as pool:
            got = pool.map(square, range(%(items)d), checkpoint=store)
    report = {"got": got, "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}
    with open(os.path.join(folder, f"done-{index}.tmp"), "w") as f:
        json.dump(report, f)
    os.replace(os.path.join(folder, f"done-{index}.tmp"), os.path.join(folder, f"done-{index}"))
'''


def _as_processes(script, folder, store, env):
    procs = [subprocess.Popen([sys.executable, str(script), str(folder), str(store), str(JOBS),
                               str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(JOBS)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=150)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [(proc.returncode, out) for proc, out in zip(procs, outputs, strict=True)]


def _as_slurm_array(script, folder, store, env):
    """One array job of JOBS tasks, one CPU each (the node claims more CPUs
    than it has cores, so all run at once)."""
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{JOBS - 1}", "-n", "1", "-c", "1", "--mem=400M",
         "-t", "00:05:00", "-J", "poolguard-many", "-o", f"{folder}/out-%a", "--wrap",
         f"exec {sys.executable} {script} {folder} {store} {JOBS} $SLURM_ARRAY_TASK_ID"],
        env=env, capture_output=True, text=True, timeout=30, check=True)
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 150
        while subprocess.run(["squeue", "-h", "-j", job, "-o", "%A"], capture_output=True,
                             text=True, timeout=30).stdout.strip():
            assert time.monotonic() < deadline, f"array job {job} still queued after 150 s"
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job], timeout=30)
    results = []
    for i in range(JOBS):
        out = folder / f"out-{i}"
        text = out.read_text() if out.exists() else "(no output)"
        results.append((0 if (folder / f"done-{i}").exists() else 1, text))
    return results


@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", ["processes", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_many_jobs_start_together_on_a_new_store_and_key(tmp_path, how):
    if how == "slurm":
        reason = batch.slurm_unavailable()
        if reason:
            pytest.skip(reason)
    run = _as_processes if how == "processes" else _as_slurm_array
    script = tmp_path / "step.py"
    script.write_text(STEP % {"items": ITEMS})
    store = tmp_path / "shared" / "store"          # neither exists yet
    key = tmp_path / "keys" / "new" / "checkpoint.key"
    env = dict(os.environ, POOLGUARD_CHECKPOINT_KEY=str(key))
    expected = [x * x for x in range(ITEMS)]
    for round_ in ("first", "second"):
        folder = tmp_path / round_
        folder.mkdir()
        for i, (code, output) in enumerate(run(script, folder, store, env)):
            assert code == 0, f"{round_} run, job {i}:\n{output}"
            report = json.loads((folder / f"done-{i}").read_text())
            assert report["got"] == expected, f"{round_} run, job {i}"
            assert report["warnings"] == [], f"{round_} run, job {i}: {report['warnings']}"
            assert "Traceback" not in output and "Warning" not in output, output
        calls = sum(len(path.read_text().split()) for path in folder.glob("calls-*"))
        if round_ == "first":
            assert ITEMS <= calls <= JOBS * ITEMS
        else:   # every job wrote under the same key: the second run computes nothing
            assert calls == 0, f"{calls} items computed again"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
