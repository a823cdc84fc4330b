"""The asyncio gRPC load loop: keeps N requests in flight and measures throughput and latency percentiles.

It works like perf_analyzer's concurrency mode: a warm-up, then fixed-length measurement windows until the
last three agree (throughput and p95 within 10 % of their mean) or a window cap is reached. Latencies are
kept exactly; percentiles are taken over every request of the windows that count.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from autotune.errors import AutotuneError

STABLE_WINDOWS = 3


@dataclass(frozen=True)
class LoadSettings:
    """How long and how carefully to measure one point."""

    warmup_s: float = 1.0
    window_s: float = 1.0
    max_windows: int = 8
    stability: float = 0.10
    request_timeout_s: float = 30.0


@dataclass(frozen=True)
class Measurement:
    """What one point measured: client-side figures in infer/s and milliseconds."""

    concurrency: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    errors: int
    windows: int
    stable: bool
    first_error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _Window:
    latencies: np.ndarray
    errors: int
    first_error: str
    duration: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.duration

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies, 95)) if len(self.latencies) else float("inf")


class _Recorder:
    """Collects the latencies of completed requests; the controller swaps it out window by window."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.started = time.perf_counter()

    def close(self) -> _Window:
        return _Window(np.asarray(self.latencies), self.errors, self.first_error, time.perf_counter() - self.started)


def _random_tensor(name: str, datatype: str, shape: list[int], rng: np.random.Generator) -> grpcaio.InferInput:
    if any(dim < 0 for dim in shape):
        raise AutotuneError(f"input {name} has a dynamic shape {shape}: autotune cannot choose its size yet")
    if datatype == "BYTES":
        data = np.array([rng.bytes(16) for _ in range(int(np.prod(shape)))], dtype=np.object_).reshape(shape)
    elif datatype == "BOOL":
        data = rng.integers(0, 2, size=shape).astype(bool)
    else:
        dtype = np.dtype(triton_to_np_dtype(datatype))
        if dtype.kind == "f":
            data = rng.standard_normal(shape).astype(dtype)
        else:
            data = rng.integers(0, 64, size=shape).astype(dtype)
    tensor = grpcaio.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(data)
    return tensor


async def _inputs(client: grpcaio.InferenceServerClient, model: str) -> list[grpcaio.InferInput]:
    """Random batch-1 tensors for every input the model declares."""
    metadata = await client.get_model_metadata(model, as_json=True)
    config = (await client.get_model_config(model, as_json=True))["config"]
    batching = int(config.get("max_batch_size", 0)) > 0
    rng = np.random.default_rng(0)
    tensors = []
    for spec in metadata["inputs"]:
        shape = [int(dim) for dim in spec["shape"]]
        if batching:
            shape = [1, *shape[1:]]
        tensors.append(_random_tensor(spec["name"], spec["datatype"], shape, rng))
    return tensors


class LoadGenerator:
    """Measures one model on one server at a given concurrency."""

    def __init__(self, url: str, model: str, settings: LoadSettings = LoadSettings()) -> None:
        self.url = url
        self.model = model
        self.settings = settings

    def measure(self, concurrency: int) -> Measurement:
        return asyncio.run(self._measure(concurrency))

    async def _measure(self, concurrency: int) -> Measurement:
        client = grpcaio.InferenceServerClient(self.url)
        try:
            inputs = await _inputs(client, self.model)
            self._recorder = _Recorder()
            stop = asyncio.Event()
            workers = [asyncio.create_task(self._worker(client, inputs, stop)) for _ in range(concurrency)]
            try:
                await asyncio.sleep(self.settings.warmup_s)
                windows = await self._windows()
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
            return self._summarise(concurrency, windows)
        finally:
            await client.close()

    async def _worker(self, client: grpcaio.InferenceServerClient, inputs: list, stop: asyncio.Event) -> None:
        timeout = self.settings.request_timeout_s
        while not stop.is_set():
            start = time.perf_counter()
            try:
                await client.infer(self.model, inputs, client_timeout=timeout)
            except InferenceServerException as error:
                recorder = self._recorder
                recorder.errors += 1
                recorder.first_error = recorder.first_error or str(error)
                await asyncio.sleep(0.01)  # a failing server answers at once: do not spin on it
                continue
            self._recorder.latencies.append(time.perf_counter() - start)

    async def _windows(self) -> list[_Window]:
        windows: list[_Window] = []
        self._recorder = _Recorder()
        while len(windows) < self.settings.max_windows:
            await asyncio.sleep(self.settings.window_s)
            finished, self._recorder = self._recorder, _Recorder()
            windows.append(finished.close())
            if finished.errors or self._stable(windows[-STABLE_WINDOWS:]):
                break
        return windows

    def _stable(self, windows: list[_Window]) -> bool:
        if len(windows) < STABLE_WINDOWS:
            return False
        for values in ([w.throughput for w in windows], [w.p95 for w in windows]):
            mean = float(np.mean(values))
            tolerance = self.settings.stability * mean
            if not np.isfinite(mean) or mean == 0 or any(abs(v - mean) > tolerance for v in values):
                return False
        return True

    def _summarise(self, concurrency: int, windows: list[_Window]) -> Measurement:
        counted = windows[-STABLE_WINDOWS:]
        latencies_ms = np.concatenate([w.latencies for w in counted]) * 1e3
        p50, p90, p95, p99 = (
            np.percentile(latencies_ms, [50, 90, 95, 99]) if len(latencies_ms) else [float("inf")] * 4
        )
        return Measurement(
            concurrency=concurrency,
            throughput=len(latencies_ms) / sum(w.duration for w in counted),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p95_ms=float(p95),
            p99_ms=float(p99),
            requests=len(latencies_ms),
            errors=sum(w.errors for w in windows),
            windows=len(windows),
            stable=self._stable(counted),
            first_error=next((w.first_error for w in windows if w.first_error), ""),
        )
