"""The LoadGen system under test: a batching queue served by `streams` workers, like NVIDIA's
harness. LoadGen's issue callback only appends sample ids to the queue; a free worker takes up
to `batch_size` of them, waiting at most `deque_timeout_us` for the batch to fill once it holds
a first sample, runs the batch on its stream and completes every sample of it with one
`QuerySamplesComplete` call, in `finally`, so a failing engine fails the measurement instead of
hanging LoadGen.

`SystemSUT` puts several of them (one per device) behind one LoadGen SUT; both are what the
scenarios need of a SUT, the `LoadgenSut` protocol.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

import numpy as np

from harness.backends.base import Backend
from harness.dataset import SampleSet

#: Compact the queue's consumed prefix once it is this long (amortised O(1) per sample).
_COMPACT_AT = 1 << 16
#: GIL switch interval while the SUT runs: LoadGen's issue thread must not wait CPython's
#: default 5 ms for the GIL behind a busy worker (that alone breaks a 10 ms p99 bound).
_SWITCH_INTERVAL_S = 0.0005


class LoadgenSut(Protocol):
    """What a scenario needs of a system under test: LoadGen's two callbacks (which must never
    raise), the samples (the QSL's size) and the first failure of a run, re-raised after it."""

    @property
    def samples(self) -> SampleSet: ...

    @property
    def error(self) -> BaseException | None: ...

    @property
    def batch_slots(self) -> int:
        """Samples that give every stream one full batch (batch size x streams, summed over
        devices): an Offline query is a whole number of them."""
        ...

    def issue(self, ids: list[int], indices: list[int]) -> None: ...

    def flush(self) -> None: ...


class BatchingSUT:
    """Queue + batcher + stream workers. Use as a context manager around LoadGen runs."""

    def __init__(
        self,
        backend: Backend,
        samples: SampleSet,
        batch_size: int,
        streams: int,
        deque_timeout_us: int,
    ) -> None:
        self.backend = backend
        self.samples = samples
        self.batch_size = batch_size
        self.streams = streams
        self.deque_timeout_s = deque_timeout_us / 1e6
        self.error: BaseException | None = None
        self._batches = [0] * streams
        self._samples_done = [0] * streams
        self._cond = threading.Condition(threading.Lock())
        self._ids: list[int] = []
        self._indices: list[int] = []
        self._head = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._switch_interval = sys.getswitchinterval()

    @property
    def batch_slots(self) -> int:
        return self.batch_size * self.streams

    @property
    def batches(self) -> int:
        """Batches completed so far, over all streams."""
        return sum(self._batches)

    @property
    def samples_done(self) -> int:
        return sum(self._samples_done)

    # LoadGen callbacks (ConstructFastSUT): they run on LoadGen's threads and must never raise.
    def issue(self, ids: list[int], indices: list[int]) -> None:
        with self._cond:
            self._ids.extend(ids)
            self._indices.extend(indices)
            self._cond.notify()

    def flush(self) -> None:
        """LoadGen's flush: nothing is held back beyond the batching timeout."""

    def start(self) -> None:
        import mlperf_loadgen as lg

        self._complete = lg.QuerySamplesComplete
        self._response = lg.QuerySampleResponse
        self._stopping = False
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, _SWITCH_INTERVAL_S))
        self._threads = [
            threading.Thread(target=self._work, args=(s,), name=f"stream-{s}", daemon=True)
            for s in range(self.streams)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []
        sys.setswitchinterval(self._switch_interval)

    def __enter__(self) -> BatchingSUT:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _take(self) -> tuple[list[int], list[int]] | None:
        """The next batch's (ids, indices), or None once stopped with nothing queued."""
        with self._cond:
            while self._head == len(self._ids):
                if self._stopping:
                    return None
                self._cond.wait()
            available = len(self._ids) - self._head
            if available < self.batch_size and self.deque_timeout_s > 0:
                deadline = time.monotonic() + self.deque_timeout_s
                while available < self.batch_size and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    available = len(self._ids) - self._head
                if available == 0:  # another worker took them while we waited
                    return ([], [])
            start = self._head
            end = start + min(available, self.batch_size)
            ids = self._ids[start:end]
            indices = self._indices[start:end]
            self._head = end
            if end >= _COMPACT_AT and 2 * end >= len(self._ids):
                del self._ids[:end]
                del self._indices[:end]
                self._head = 0
            if self._head < len(self._ids):
                self._cond.notify()  # more is queued: wake another free worker
            return ids, indices

    def _work(self, stream: int) -> None:
        complete, response = self._complete, self._response
        while (batch := self._take()) is not None:
            ids, indices = batch
            if not ids:
                continue
            try:
                if self.error is None:
                    inputs = self.samples.gather(np.asarray(indices, dtype=np.intp))
                    self.backend.infer(inputs, stream)
            except BaseException as exc:
                if self.error is None:
                    self.error = exc
            finally:
                complete([response(i, 0, 0) for i in ids])
                self._batches[stream] += 1
                self._samples_done[stream] += len(ids)


class SystemSUT:
    """One LoadGen SUT over several BatchingSUTs, one per device (NVIDIA's multi-GPU harness):
    every issued batch of samples goes to the least-loaded device (outstanding samples over
    the device's warm-up throughput). An Offline query is cut into batch-size chunks spread
    that way, i.e. in proportion to each device's speed; a Server query goes whole to the
    least-loaded device. A system of one passes every query straight through. Use as a
    context manager."""

    def __init__(self, suts: Sequence[BatchingSUT], weights: Sequence[float]) -> None:
        if not suts or len(suts) != len(weights):
            raise ValueError("give one weight per device SUT, and at least one SUT")
        self.suts = list(suts)
        self.samples = self.suts[0].samples
        positive = [w for w in weights if w > 0]
        fallback = min(positive) if positive else 1.0
        self.weights = [w if w > 0 else fallback for w in weights]
        self._routed = [0] * len(self.suts)
        self._chunk = min(s.batch_size for s in self.suts)
        self._lock = threading.Lock()
        self._next = 0

    @property
    def error(self) -> BaseException | None:
        return next((s.error for s in self.suts if s.error is not None), None)

    @property
    def samples_done(self) -> int:
        return sum(s.samples_done for s in self.suts)

    @property
    def batch_slots(self) -> int:
        return sum(s.batch_slots for s in self.suts)

    @property
    def routed(self) -> list[int]:
        """Samples routed to each device so far (over every LoadGen run). A system of one
        routes nothing itself: its device's count is what that device completed."""
        if len(self.suts) == 1:
            return [self.suts[0].samples_done]
        with self._lock:
            return list(self._routed)

    # LoadGen callbacks: they run on LoadGen's threads and must never raise.
    def issue(self, ids: list[int], indices: list[int]) -> None:
        if len(self.suts) == 1:  # straight through: no lock on the per-query path
            self.suts[0].issue(ids, indices)
            return
        with self._lock:
            parts: list[tuple[list[int], list[int]]] = [([], []) for _ in self.suts]
            outstanding = [
                r - s.samples_done for r, s in zip(self._routed, self.suts, strict=True)
            ]
            for start in range(0, len(ids), self._chunk):
                end = min(start + self._chunk, len(ids))
                device = self._least_loaded(outstanding, end - start)
                outstanding[device] += end - start
                self._routed[device] += end - start
                parts[device][0].extend(ids[start:end])
                parts[device][1].extend(indices[start:end])
        for sut, (part_ids, part_indices) in zip(self.suts, parts, strict=True):
            if part_ids:
                sut.issue(part_ids, part_indices)

    def _least_loaded(self, outstanding: list[int], size: int) -> int:
        """The device that would finish `size` more samples first; ties rotate."""
        n = len(self.suts)
        best, best_load = self._next, float("inf")
        for k in range(n):
            device = (self._next + k) % n
            load = (outstanding[device] + size) / self.weights[device]
            if load < best_load:
                best, best_load = device, load
        self._next = (best + 1) % n
        return best

    def flush(self) -> None:
        """LoadGen's flush: nothing is held back beyond each batcher's timeout."""

    def __enter__(self) -> SystemSUT:
        for sut in self.suts:
            sut.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sut in self.suts:
            sut.stop()
