"""Large arguments skip the pipe (wire/buffers.py): read from the
parent's memory (bytes) or through shared memory; right values and types on
every front, one writable array, and nothing held open after the task, even
when its worker dies."""
from __future__ import annotations


import hashlib
import os

import pytest

import poolguard
from poolguard.wire import buffers, messages

import tasks

MIB = 1 << 20
numpy = pytest.importorskip("numpy")
pytestmark = pytest.mark.skipif(not buffers.AVAILABLE, reason="needs memfd and /proc")


def test_every_front_and_kind(method):
    blob = b"\x07" * (3 * MIB)
    array = numpy.full(MIB, 5, dtype=numpy.uint8)
    with poolguard.Pool(2, context=method, maxtasksperchild=1) as pool:
        # maxtasksperchild=1: under fork, new workers are forked while other
        # tasks' buffers are open in the parent; they must not keep them.
        out = pool.map(tasks.describe_buffer, [blob, bytearray(blob), array, b"small"])
        assert out[0] == ("bytes", 3 * MIB, 7, None, 0, [], [])
        assert out[1] == ("bytearray", 3 * MIB, 7, None, 0, [], [])
        # The array lives on the mapping, and Python's mmap keeps a descriptor
        # of the file while it is mapped: that one, and no inherited ones.
        assert out[2] == ("ndarray", MIB, 6, True, 1, [], [])
        assert out[3] == ("bytes", 5, ord("s"), None, 0, [], [])
        assert array[0] == 5            # the worker's write stayed in the worker
        assert pool.starmap(tasks.describe_buffer, [(blob, blob, b"x")]) == [
            ("bytes", 3 * MIB, 7, None, 0, [3 * MIB, 1], [])]
        assert pool.apply(tasks.describe_buffer, (blob,), {"extra": blob}) == (
            "bytes", 3 * MIB, 7, None, 0, [], ["extra"])
    assert tasks.argument_buffers_held() == 0
    with poolguard.ProcessPoolExecutor(2, mp_context=method) as executor:
        assert executor.submit(tasks.describe_buffer, array).result(timeout=30) == (
            "ndarray", MIB, 6, True, 1, [], [])
        assert list(executor.map(tasks.big_len, [blob] * 3)) == [3 * MIB] * 3
    assert tasks.argument_buffers_held() == 0


def test_long_chunk_goes_out_of_band_too():
    # Chunks of more than 64 items are not searched before pickling; a large
    # pickle sends them back through the search.
    items = [bytes([i]) * MIB for i in range(70)]
    frame, shared = messages.encode_task(1, messages.MAP, b"f", items)
    try:
        assert shared is not None and len(shared.handle[4]) == 70
        assert sum(len(part) for part in frame) < 64 * 1024
    finally:
        shared.close()
    with poolguard.Pool(2) as pool:
        assert pool.map(tasks.big_len, items, chunksize=70) == [MIB] * 70
    small = list(range(1000))
    frame, shared = messages.encode_task(2, messages.MAP, b"f", small)
    assert shared is None


def test_freed_when_the_worker_dies(method):
    blob = b"\x01" * (2 * MIB)
    with poolguard.Pool(2, context=method) as pool:
        with pytest.raises(poolguard.WorkerCrashedError) as info:
            pool.apply(tasks.die_holding, (blob,))
        assert info.value.signal == "SIGKILL"
        assert tasks.argument_buffers_held() == 0
        # With retries the unit is encoded again; every attempt's file is freed.
        pool_retry = poolguard.Pool(1, context=method, retries=2)
        try:
            with pytest.raises(poolguard.WorkerCrashedError) as info:
                pool_retry.apply(tasks.die_holding, (blob,))
            assert len(info.value.attempts) == 3
            assert tasks.argument_buffers_held() == 0
        finally:
            pool_retry.terminate()
            pool_retry.join()
        assert pool.map(tasks.big_len, [blob] * 4) == [2 * MIB] * 4
    assert tasks.argument_buffers_held() == 0


def test_terminate_frees_pending_buffers():
    blob = bytearray(b"\x02" * MIB)    # mutable: always copied to shared memory
    pool = poolguard.Pool(1)
    try:
        results = [pool.apply_async(tasks.sleep_then, (5, blob)) for _ in range(6)]
        assert tasks.argument_buffers_held() == 6
    finally:
        pool.terminate()
        pool.join()
    assert tasks.argument_buffers_held() == 0
    for result in results:
        with pytest.raises(poolguard.PoolTerminatedError):
            result.get(timeout=5)


@pytest.mark.parametrize("remote", [True, False], ids=["read-from-parent", "shared-memory"])
def test_content_arrives_exact_both_ways(method, remote):
    blobs = [os.urandom(MIB + i) for i in range(6)]
    with poolguard.Pool(2, context=method) as pool:
        engine = pool._engine
        assert pool.map(tasks.square, [1, 2]) == [1, 4]    # workers up and checked
        if not remote:
            replies = engine._supervisor.replies   # as if a worker could not read us
            replies.remote_refused, replies.remote_reads = True, False
        elif not engine.remote_reads:
            pytest.skip("this system does not let a worker read its parent's memory")
        digests = pool.map(tasks.digest, blobs, chunksize=2)
        assert digests == [hashlib.sha256(b).hexdigest() for b in blobs]
        assert pool.starmap(tasks.digest, [(blobs[0],)]) == [digests[0]]
    assert tasks.argument_buffers_held() == 0


def test_reading_the_parent_is_checked_by_each_worker():
    from poolguard.wire import buffers
    assert buffers.can_read_parent(buffers.probe_handle()) is buffers.REMOTE_POSSIBLE
    assert buffers.can_read_parent(None) is False
    # An address nothing is mapped at: refused, never a crash.
    assert buffers.can_read_parent((os.getpid(), 4096, 16)) is False
