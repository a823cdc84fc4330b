"""The load loop against a real embedded Triton server."""

import pytest

from autotune.embedded import EmbeddedServer
from autotune.loadgen import LoadGenerator, LoadSettings
from autotune.server import ModelServer

QUICK = LoadSettings(warmup_s=0.2, window_s=0.3, max_windows=4)


def test_a_measurement_reports_throughput_and_ordered_percentiles(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "mlp")
    before = server.statistics()
    measurement = LoadGenerator(triton.url, "mlp", QUICK).measure(concurrency=4)
    served = server.statistics()["success_count"] - before["success_count"]
    server.close()
    assert measurement.errors == 0
    assert measurement.requests > 10
    assert 3 <= measurement.windows <= QUICK.max_windows
    assert 0 < measurement.p50_ms <= measurement.p90_ms <= measurement.p95_ms <= measurement.p99_ms
    # Figures come from the last three windows; the server also served the warm-up and earlier windows.
    assert measurement.throughput == pytest.approx(measurement.requests / (3 * QUICK.window_s), rel=0.1)
    assert served > measurement.requests


def test_failed_requests_are_counted_with_the_servers_message(triton: EmbeddedServer) -> None:
    server = ModelServer(triton.url, "broken")
    try:
        measurement = LoadGenerator(triton.url, "broken", QUICK).measure(concurrency=2)
    finally:
        server.restore()
        server.close()
    assert measurement.requests == 0
    assert measurement.errors > 0
    assert "broken on purpose" in measurement.first_error
