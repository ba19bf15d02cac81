"""The LoadGen system under test: a batching queue served by `streams` workers, like NVIDIA's
harness. LoadGen's issue callback only appends sample ids to the queue; a free worker takes up
to `batch_size` of them, waiting at most `deque_timeout_us` for the batch to fill once it holds
a first sample, runs the batch on its stream and completes every sample of it with one
`QuerySamplesComplete` call, in `finally`, so a failing engine fails the measurement instead of
hanging LoadGen.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType

import numpy as np

from harness.backends.base import Backend
from harness.dataset import SampleSet

#: Compact the queue's consumed prefix once it is this long (amortised O(1) per sample).
_COMPACT_AT = 1 << 16
#: GIL switch interval while the SUT runs: LoadGen's issue thread must not wait CPython's
#: default 5 ms for the GIL behind a busy worker (that alone breaks a 10 ms p99 bound).
_SWITCH_INTERVAL_S = 0.0005


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
