"""Prometheus metrics with TF Serving's names, served at the path `--monitoring_config_file` names.

TF Serving's exporter writes its `/tensorflow/serving/...` monitoring cells with `/` turned into `:`,
so dashboards and alerts are written against names such as `:tensorflow:serving:request_count`
(labels `model_name`, `status`) and `:tensorflow:serving:request_latency` (histogram in microseconds,
labels `model_name`, `API`, `entrypoint` = GRPC or REST). The same names are produced here, plus the
runtime latency, the batch sizes actually run, and load attempts, in the text exposition format.
"""

from __future__ import annotations

import bisect
import itertools
import threading

# Microsecond buckets: TF Serving's request latency uses exponential buckets (10 us x 1.8^i).
LATENCY_BUCKETS = tuple(round(10 * 1.8 ** i) for i in range(33))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_HELP = {
    ":tensorflow:serving:request_count": ("counter", "The total number of requests."),
    ":tensorflow:serving:request_latency": ("histogram", "Distribution of wall time (in microseconds) for "
                                                         "Tensorflow Serving request."),
    ":tensorflow:serving:runtime_latency": ("histogram", "Distribution of wall time (in microseconds) for "
                                                         "Tensorflow runtime."),
    ":tensorflow:serving:batching_session:processed_batch_size": ("histogram", "Tracks the batch size "
                                                                               "distribution on processing."),
    ":tensorflow:cc:saved_model:load_attempt_count": ("counter", "The number of times a SavedModel was "
                                                                 "successfully loaded."),
}


class Counter:
    """One counter cell (a name with one set of labels); `add` is what a request pays."""

    __slots__ = ("_lock", "value")

    def __init__(self, lock: threading.Lock):
        self._lock = lock
        self.value = 0.0

    def add(self, value: float = 1.0) -> None:
        with self._lock:
            self.value += value


class Histogram:
    """One histogram cell. A value lands in one bucket (found by bisection); the exposition's cumulative
    `le` counts are summed when the page is rendered, not on every observation."""

    __slots__ = ("_lock", "buckets", "counts", "total", "count")

    def __init__(self, lock: threading.Lock, buckets: tuple):
        self._lock = lock
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot: above every bound (+Inf only)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)  # the first bound >= value, as `le` means
        with self._lock:
            self.counts[index] += 1
            self.total += value
            self.count += 1

    def cumulative(self) -> list[int]:
        return list(itertools.accumulate(self.counts[:-1]))


class Metrics:
    """A small thread-safe registry: counter and histogram cells keyed by (name, labels).

    `counter()` / `histogram()` return the cell itself, so a caller on a hot path (the request handlers)
    looks a cell up once and keeps it; `count()` / `observe()` look it up each call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple, Counter] = {}
        self._histograms: dict[tuple, Histogram] = {}
        self._request_cells: dict[tuple[str, str, str, str], tuple[Counter, Histogram | None]] = {}
        self._runtime_cells: dict[tuple[str, str], Histogram] = {}

    def counter(self, name: str, **labels: str) -> Counter:
        key = (name, tuple(sorted(labels.items())))
        cell = self._counters.get(key)
        if cell is None:
            with self._lock:
                cell = self._counters.setdefault(key, Counter(self._lock))
        return cell

    def histogram(self, name: str, buckets: tuple = LATENCY_BUCKETS, **labels: str) -> Histogram:
        """The cell of `name` with these labels; its buckets are fixed by the first caller."""
        key = (name, tuple(sorted(labels.items())))
        cell = self._histograms.get(key)
        if cell is None:
            with self._lock:
                cell = self._histograms.setdefault(key, Histogram(self._lock, tuple(buckets)))
        return cell

    def counter_total(self, name: str) -> int:
        """A counter's value as a ReloadConfigRequest's `metric_names` reads it (model_service_impl.cc
        GetMetrics; 0 when it has no cell). `name` may use TF Serving's `/` spelling. TF Serving reads the
        metric's first point, the same for a counter with one cell; for one with several cells (per model,
        per status) that point is whichever sorts first, so the total over the cells is answered here."""
        wanted = name.replace("/", ":")
        with self._lock:
            return int(sum(cell.value for (n, _), cell in self._counters.items() if n == wanted))

    def count(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.counter(name, **labels).add(value)

    def observe(self, name: str, value: float, buckets: tuple = LATENCY_BUCKETS, **labels: str) -> None:
        self.histogram(name, buckets, **labels).observe(value)

    def request(self, model: str, api: str, entrypoint: str, status: str, micros: float) -> None:
        """One answered request: the count by status always, the latency when it succeeded (as TF Serving).
        The request path's cells are looked up once per (model, API, entrypoint, status) and kept."""
        key = (model, api, entrypoint, status)
        cells = self._request_cells.get(key)
        if cells is None:
            cells = self._request_cells[key] = (
                self.counter(":tensorflow:serving:request_count", model_name=model, status=status),
                self.histogram(":tensorflow:serving:request_latency", model_name=model, API=api,
                               entrypoint=entrypoint) if status == "OK" else None)
        cells[0].add()
        if cells[1] is not None:
            cells[1].observe(micros)

    def runtime(self, model: str, api: str, micros: float) -> None:
        """Time in the model's session run (TF Serving's runtime_latency: labels model_name, API = Predict,
        Classify or Regress as each API records it, runtime = TF1 for a session-run SavedModel)."""
        key = (model, api)
        cell = self._runtime_cells.get(key)
        if cell is None:
            cell = self._runtime_cells[key] = self.histogram(
                ":tensorflow:serving:runtime_latency", model_name=model, API=api, runtime="TF1")
        cell.observe(micros)

    def render(self) -> str:
        """The Prometheus text exposition of everything recorded so far."""
        with self._lock:
            counters = {k: c.value for k, c in self._counters.items()}
            histograms = {k: (h.buckets, h.cumulative(), h.total, h.count) for k, h in self._histograms.items()}
        lines: list[str] = []
        names = sorted({k[0] for k in counters} | {k[0] for k in histograms} | set(_HELP))
        for name in names:
            kind, text = _HELP.get(name, ("counter" if any(k[0] == name for k in counters) else "histogram", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for (n, labels), value in sorted(counters.items()):
                if n == name:
                    lines.append(f"{name}{_labels(labels)} {_number(value)}")
            for (n, labels), (buckets, counts, total, count) in sorted(histograms.items()):
                if n != name:
                    continue
                for bound, c in zip(buckets, counts, strict=True):
                    lines.append(f"{name}_bucket{_labels(labels + (('le', str(bound)),))} {c}")
                lines.append(f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {count}")
                lines.append(f"{name}_sum{_labels(labels)} {_number(total)}")
                lines.append(f"{name}_count{_labels(labels)} {count}")
        return "\n".join(lines) + "\n"


def _labels(pairs: tuple) -> str:
    if not pairs:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
