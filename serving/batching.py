"""Server-side batching, as TF Serving's `--enable_batching` with `--batching_parameters_file`.

Concurrent requests to one signature of one model version queue up; a batch thread takes the oldest,
adds queued requests whose non-batch shapes match until `max_batch_size` rows or until
`batch_timeout_micros` has passed since the batch opened, runs the model once and splits the outputs by
rows. Like TF Serving's BasicBatchScheduler:

- the queue is bounded (`max_enqueued_batches` x `max_batch_size` rows): a request that does not fit is
  refused at once with UNAVAILABLE, so overload sheds load instead of growing memory and latency;
- a request larger than `max_batch_size` is INVALID_ARGUMENT ("Task size ... is larger than maximum
  input batch size ...");
- `allowed_batch_sizes` pads a merged batch (with copies of its first row) up to the next allowed size,
  so the model only ever sees those sizes; `pad_variable_length_inputs` pads each input's non-batch
  dimensions to the longest in the batch (with the tensor's first element) so such requests can merge.

`batch_sizes` counts the sizes actually run (tests and the benchmark read it).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import numpy as np

from serving.options import BatchingParameters
from serving.status import ServingStatus, invalid_argument

Inputs = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class _Task:
    __slots__ = ("inputs", "rows", "key", "done")

    def __init__(self, inputs: Inputs, rows: int, key: tuple):
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.done: futures.Future = futures.Future()


def rows_of(inputs: Inputs) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


class Batcher:
    """One queue and its batch threads for one signature of one loaded version."""

    def __init__(self, run: Callable[[Inputs], Outputs], params: BatchingParameters, name: str = "batcher",
                 on_batch: Callable[[int], None] | None = None):
        self._run = run
        self._params = params
        self._on_batch = on_batch
        self._queue: collections.deque[_Task] = collections.deque()
        self._queued_rows = 0
        self._capacity = params.max_enqueued_batches * params.max_batch_size
        self._cond = threading.Condition()
        self._closed = False
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"retina-{name}-{i}")
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------ callers
    def submit(self, inputs: Inputs) -> Outputs:
        """Queue the request and wait for its rows of the batched result."""
        rows = rows_of(inputs)
        limit = self._params.max_batch_size
        if rows > limit:
            raise invalid_argument(f"Task size {rows} is larger than maximum input batch size {limit}")
        task = _Task(inputs, rows, self._key(inputs))
        with self._cond:
            if self._closed:
                raise ServingStatus("UNAVAILABLE", "the model version is being unloaded; retry")
            if self._queued_rows + rows > self._capacity:
                raise ServingStatus("UNAVAILABLE",
                                    "The batch scheduling queue to which this task was submitted is full")
            self._queue.append(task)
            self._queued_rows += rows
            self._cond.notify()
        return task.done.result()

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, answer every queued one, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=timeout_s)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    # ------------------------------------------------------------ batch threads
    def _key(self, inputs: Inputs) -> tuple:
        if self._params.pad_variable_length_inputs:
            return tuple(sorted((k, v.dtype.str, v.ndim) for k, v in inputs.items()))
        return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))

    def _next_batch(self) -> list[_Task] | None:
        """Wait for a first task, then gather compatible ones until full or the timeout; None at close."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self._params.batch_timeout_micros / 1e6
            while rows < self._params.max_batch_size:
                task = self._take_compatible(first.key, self._params.max_batch_size - rows)
                if task is not None:
                    batch.append(task)
                    rows += task.rows
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._queued_rows -= rows
            return batch

    def _take_compatible(self, key: tuple, room: int) -> _Task | None:
        for i, task in enumerate(self._queue):
            if task.key == key and task.rows <= room:
                del self._queue[i]
                return task
        return None

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Task]) -> None:
        try:
            merged, rows = self._merge([t.inputs for t in batch])
            self.batch_sizes[rows] += 1
            if self._on_batch is not None:
                self._on_batch(rows)
            outputs = self._run(merged)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure, none hangs
            for task in batch:
                task.done.set_exception(exc)
            return
        start = 0
        for task in batch:
            try:
                task.done.set_result({k: v[start:start + task.rows] for k, v in outputs.items()})
            except Exception as exc:  # noqa: BLE001 - an output without the batch dimension
                task.done.set_exception(invalid_argument(f"cannot split batched outputs by rows: {exc}"))
            start += task.rows

    def _merge(self, parts: list[Inputs]) -> tuple[Inputs, int]:
        rows = sum(rows_of(p) for p in parts)
        merged: Inputs = {}
        for key in parts[0]:
            arrays = [p[key] for p in parts]
            if self._params.pad_variable_length_inputs:
                arrays = _pad_to_longest(arrays)
            merged[key] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        target = self._padded_size(rows)
        if target > rows:
            merged = {k: np.concatenate([v, np.repeat(v[:1], target - rows, axis=0)]) for k, v in merged.items()}
        return merged, target

    def _padded_size(self, rows: int) -> int:
        for size in self._params.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


def _pad_to_longest(arrays: list[np.ndarray]) -> list[np.ndarray]:
    longest = tuple(max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim))
    padded = []
    for array in arrays:
        widths = [(0, 0)] + [(0, n - s) for n, s in zip(longest, array.shape[1:], strict=True)]
        if any(w for _, w in widths):
            fill: Any = array.flat[0] if array.size else 0
            array = np.pad(array, widths, mode="constant", constant_values=fill)
        padded.append(array)
    return padded
