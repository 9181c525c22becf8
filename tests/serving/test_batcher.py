"""Server-side batching (serving.batching.Batcher) and its parameters file, without TensorFlow."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from components.common.errors import RetinaError
from serving.batching import Batcher
from serving.options import BatchingParameters, read_batching_parameters
from serving.status import ServingStatus

TESTDATA = Path(__file__).parent / "tfserving_testdata"


def _doubling_model(calls: list[int], delay_s: float = 0.0):
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        time.sleep(delay_s)
        return {"y": inputs["x"] * 2}

    return run


def _send_all(batcher: Batcher, n: int, rows: int = 2, width: int = 3) -> tuple[dict, list]:
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []

    def send(i: int) -> None:
        try:
            results[i] = batcher.submit({"x": np.full((rows, width), i, np.float32)})["y"]
        except ServingStatus as exc:
            errors.append(exc.code_name)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a request never got an answer"
    return results, errors


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows():
    calls: list[int] = []
    params = BatchingParameters(max_batch_size=64, batch_timeout_micros=50_000, num_batch_threads=1)
    batcher = Batcher(_doubling_model(calls, 0.05), params)
    results, errors = _send_all(batcher, 12)
    batcher.close()
    assert not errors and sorted(results) == list(range(12))
    for i, y in results.items():
        np.testing.assert_array_equal(y, np.full((2, 3), 2 * i, np.float32))
    assert sum(calls) == 24 and len(calls) < 12  # fewer model calls than requests: they were merged
    assert sum(size * n for size, n in batcher.batch_sizes.items()) == 24


def test_allowed_batch_sizes_pad_the_merged_batch():
    calls: list[int] = []
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1,
                                allowed_batch_sizes=(4, 8))
    batcher = Batcher(_doubling_model(calls), params)
    assert batcher.submit({"x": np.ones((3, 2), np.float32)})["y"].shape == (3, 2)  # padded to 4, cut back to 3
    batcher.close()
    assert calls == [4] and dict(batcher.batch_sizes) == {4: 1}


def test_full_queue_is_unavailable_and_oversized_task_invalid():
    gate = threading.Event()

    def blocked(inputs):
        gate.wait(5)
        return {"y": inputs["x"]}

    params = BatchingParameters(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    batcher = Batcher(blocked, params)
    with pytest.raises(ServingStatus) as too_big:
        batcher.submit({"x": np.ones((3, 1), np.float32)})
    assert too_big.value.code_name == "INVALID_ARGUMENT" and "larger than maximum input batch size" in too_big.value.message
    results, errors = [], []

    def send() -> None:
        try:
            results.append(batcher.submit({"x": np.ones((1, 1), np.float32)}))
        except ServingStatus as exc:
            errors.append(exc.code_name)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join(timeout=10)
    batcher.close()
    # one batch running + one queued batch of 2 rows fit; the rest were refused at once, not queued
    assert errors and set(errors) == {"UNAVAILABLE"} and len(results) + len(errors) == 8
    assert len(results) <= 1 + 2 * 2


def test_variable_length_inputs_are_padded_to_merge():
    seen: list[tuple] = []

    def run(inputs):
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"].sum(axis=1)}

    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=100_000, num_batch_threads=1,
                                pad_variable_length_inputs=True)
    batcher = Batcher(run, params)
    out: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda n=n: out.__setitem__(n, batcher.submit(
        {"x": np.full((1, n), 1.0, np.float32)})["y"])) for n in (2, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    batcher.close()
    assert seen == [(2, 5)]  # one call, the shorter row padded (with its first element)
    assert out[5][0] == 5.0 and out[2][0] == 5.0


def test_closing_under_load_answers_or_refuses_every_request():
    """A version unload closes the batcher while requests still arrive: each is answered or UNAVAILABLE."""
    calls: list[int] = []
    batcher = Batcher(_doubling_model(calls, 0.002),
                      BatchingParameters(max_batch_size=4, batch_timeout_micros=1000, num_batch_threads=2))
    answered, refused, errors = [], [], []
    stop = threading.Event()

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                y = batcher.submit({"x": np.full((1, 2), i, np.float32)})["y"]
                answered.append(bool((y == 2 * i).all()))
            except ServingStatus as exc:
                (refused if exc.code_name == "UNAVAILABLE" else errors).append(exc.message)
            except Exception as exc:  # noqa: BLE001 - recorded, fails the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    batcher.close()
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a request queued around close() never got an answer"
    assert not errors, errors[:3]
    assert answered and all(answered) and refused
    assert not any(t.is_alive() for t in batcher._threads)  # noqa: SLF001 - no thread left behind


def test_batching_parameters_file_as_tf_serving_reads_it(tmp_path):
    params = read_batching_parameters(str(TESTDATA / "batching_config.txt"))
    assert (params.max_batch_size, params.batch_timeout_micros, params.max_enqueued_batches,
            params.num_batch_threads) == (128, 0, 1000000, 8)
    full = tmp_path / "b.txt"
    full.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
                    "pad_variable_length_inputs: true\n")
    assert read_batching_parameters(str(full)).allowed_batch_sizes == (4, 8)
    bad = tmp_path / "bad.txt"
    bad.write_text("max_batch_sise { value: 8 }")
    with pytest.raises(RetinaError, match="Error parsing text-format tensorflow.serving.BatchingParameters"):
        read_batching_parameters(str(bad))
    bad.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4")
    with pytest.raises(RetinaError, match="end with max_batch_size"):
        read_batching_parameters(str(bad))
