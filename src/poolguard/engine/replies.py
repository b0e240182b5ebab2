"""What workers send back, read and acted on by the supervisor thread: a
unit's reply (delivered to its job), one call's reply of a batch of
submits, and a worker's own news (ready, retiring, its initializer failed).
Large results come with their buffers in a memfd of the worker's
(wire/result_intake.py)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..wire.channels import Read, WatchSet
from ..wire.messages import (CONTROL, INIT_FAILED, ITEM, PER_ITEM, READY, REPLY_HEADER,
                             RETIRING, SHARED, decode_exception, decode_reply)
from ..wire.result_intake import take_shared
from .callbacks import report_callback_error
from .jobs import deliver
from .pacing import Pacer
from .postmortem import Postmortem
from .worker_set import WorkerSet
from .workers import State, Worker

# Called when a worker's initializer failed: (the worker, what it raised).
InitFailed = Callable[[Worker, BaseException], None]


class Replies:
    """Reads each worker's result pipe and hands what came to its job."""

    def __init__(self, watch: WatchSet, workers: WorkerSet, pacer: Pacer,
                 postmortem: Postmortem, init_failed: InitFailed) -> None:
        self._watch = watch
        self._workers = workers
        self._pacer = pacer
        self._postmortem = postmortem
        self._init_failed = init_failed
        # May workers read large bytes from our memory?  Not until the first
        # has checked; never again once one could not.  Read by caller
        # threads as they cut units (a bool: no lock needed).
        self.remote_reads = False
        self.remote_refused = False

    def read(self, worker: Worker) -> Read:
        """Act on what *worker* has written; where the read stopped."""
        frames, state = worker.reader.read()
        for data in frames:
            self._on_reply(worker, data)
        if state is Read.EOF:  # keep the pipe out of the wait set; the death fd says the rest
            self._watch.discard(worker.reader.fd)
        return state

    def _on_reply(self, worker: Worker, data: bytes) -> None:
        task_id, status, micros_or_offset = REPLY_HEADER.unpack_from(data)
        body = memoryview(data)[REPLY_HEADER.size:]
        if task_id == CONTROL:
            self._on_control(worker, status, body)
            return
        shared: Optional[Sequence[Any]] = ()
        if status & SHARED:   # its large buffers wait in a memfd of the worker's
            status &= ~SHARED
            got = take_shared(worker.pid, worker.death_fd, body,
                              lambda parts: self._workers.send(worker, parts))
            if got is None:
                return   # the worker died holding them: its death fails the task
            body, shared = got
        if status & ITEM:
            self._on_call_reply(worker, task_id, status & ~ITEM, micros_or_offset, body, shared)
            return
        unit = worker.pop_unit(task_id)
        worker.watch.task_done()
        self._postmortem.task_finished()
        if unit is None:
            return  # the job was already failed (terminate)
        self._pacer.learn(unit, micros_or_offset / 1e6)
        ok, value = decode_reply(status, body, lambda: str(unit.job.describe(unit, None)),
                                 unit.job.kind in PER_ITEM, shared)
        deliver(unit, ok, value)

    def _on_call_reply(self, worker: Worker, task_id: int, status: int, offset: int,
                       body: memoryview, shared: Optional[Sequence[Any]]) -> None:
        """One call of an EACH_APPLY or STREAM unit ended; the unit goes on."""
        unit = worker.find_unit(task_id)
        if unit is None:
            return   # the job was already failed (terminate)
        self._postmortem.task_finished()
        worker.items_done += 1   # now: its caller may have its value before the unit ends
        ok, value = decode_reply(status, body, lambda: str(unit.job.describe(unit, offset)),
                                 shared=shared)
        try:
            unit.job.call_done(unit, offset, ok, value[0] if ok else value)
        except Exception:
            report_callback_error()

    def _on_control(self, worker: Worker, status: int, body: memoryview) -> None:
        if status == READY:
            worker.advance(State.READY)
            if bytes(body[:1]) != b"\x01":
                self.remote_refused = True
            self.remote_reads = not self.remote_refused
            worker.watch.sample()   # its cgroup and OOM counter, before any task
        elif status == RETIRING:
            worker.advance(State.RETIRING)
        elif status == INIT_FAILED:
            worker.advance(State.INIT_FAILED)
            self._init_failed(worker, decode_exception(body))
