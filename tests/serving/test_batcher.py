"""Server-side batching (serving.server.Batcher) without TensorFlow: merging, splitting, and closing under load."""

from __future__ import annotations

import threading
import time

import numpy as np

from serving.server import Batcher


def _doubling_model(calls: list[int], delay_s: float = 0.0):
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        time.sleep(delay_s)
        return {"y": inputs["x"] * 2}

    return run


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows():
    calls: list[int] = []
    batcher = Batcher(_doubling_model(calls, 0.05), max_batch_size=64, timeout_s=0.05, num_threads=1)
    results: dict[int, np.ndarray] = {}

    def send(i: int) -> None:
        results[i] = batcher.submit({"x": np.full((2, 3), i, np.float32)})["y"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    batcher.close()
    assert sorted(results) == list(range(12))
    for i, y in results.items():
        np.testing.assert_array_equal(y, np.full((2, 3), 2 * i, np.float32))
    assert sum(calls) == 24 and len(calls) < 12  # fewer model calls than requests: they were merged


def test_closing_under_load_answers_every_request():
    """A version swap closes the old batcher while requests are still arriving: none may hang or fail."""
    calls: list[int] = []
    batcher = Batcher(_doubling_model(calls, 0.002), max_batch_size=4, timeout_s=0.001, num_threads=2)
    answered, errors = [], []
    stop = threading.Event()

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                y = batcher.submit({"x": np.full((1, 2), i, np.float32)})["y"]
                answered.append(bool((y == 2 * i).all()))
            except Exception as exc:  # noqa: BLE001 - recorded, fails the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    batcher.close()  # requests keep coming: those after close run unbatched
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a request queued around close() never got an answer"
    assert not errors, errors[:3]
    assert answered and all(answered)
