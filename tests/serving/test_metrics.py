"""The Prometheus registry: cumulative `le` buckets (a value on a bound counts in it), cells kept by callers."""

from __future__ import annotations

from serving.metrics import Metrics


def test_histogram_buckets_are_cumulative_and_a_value_on_a_bound_counts_in_it():
    metrics = Metrics()
    for value in (1, 2, 3, 5, 100):
        metrics.observe("h", value, buckets=(1, 2, 4), model_name="m")
    page = metrics.render()
    assert 'h_bucket{model_name="m",le="1"} 1\n' in page
    assert 'h_bucket{model_name="m",le="2"} 2\n' in page
    assert 'h_bucket{model_name="m",le="4"} 3\n' in page
    assert 'h_bucket{model_name="m",le="+Inf"} 5\n' in page
    assert 'h_sum{model_name="m"} 111\n' in page and 'h_count{model_name="m"} 5\n' in page


def test_a_kept_cell_is_the_registry_cell():
    metrics = Metrics()
    counter = metrics.counter(":tensorflow:serving:request_count", status="OK", model_name="m")
    counter.add()
    metrics.count(":tensorflow:serving:request_count", model_name="m", status="OK")
    histogram = metrics.histogram(":tensorflow:serving:request_latency", model_name="m", API="Predict",
                                  entrypoint="GRPC")
    histogram.observe(20.0)
    metrics.request("m", "Predict", "GRPC", "OK", 30.0)
    page = metrics.render()
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 3\n' in page  # 1 + 1 + request()
    assert (':tensorflow:serving:request_latency_count{API="Predict",entrypoint="GRPC",model_name="m"} 2\n'
            in page)
