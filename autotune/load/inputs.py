"""Request data for the load loop: one batch-1 request per data step, serialised once before the load starts.

Tensors are random by default, made from the model's metadata for every Triton datatype. Dynamic dimensions
take their size from ``--shape NAME:d1,d2``; real data comes from ``--input-data FILE``, either
perf_analyzer's JSON format or a NumPy ``.npz`` archive keyed by input name. Shapes never include the batch
dimension, as in perf_analyzer; autotune adds it when the model batches.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from autotune.errors import AutotuneError


@dataclass(frozen=True)
class InputSpec:
    """What the user said about a model's inputs: sizes of dynamic dimensions, and a data file."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    data_file: Path | None = None


@dataclass(frozen=True)
class TensorSpec:
    """One input as the server declares it; ``shape`` leaves out the batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:d1,d2`` -> (NAME, (d1, d2)), the form of perf_analyzer's ``--shape``."""
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape or any(d < 1 for d in shape):
        raise AutotuneError(f"--shape {text!r}: expected NAME:d1,d2,... with positive sizes, e.g. INPUT:3,224,224")
    return name, shape


def tensor_specs(metadata: Mapping[str, Any], batching: bool) -> list[TensorSpec]:
    """The model's inputs from ``get_model_metadata(as_json=True)``, without the batch dimension."""
    specs = []
    for entry in metadata["inputs"]:
        shape = tuple(int(d) for d in entry["shape"])
        specs.append(TensorSpec(entry["name"], entry["datatype"], shape[1:] if batching else shape))
    return specs


def build_requests(model: str, specs: list[TensorSpec], batching: bool, spec: InputSpec) -> list[bytes]:
    """Serialised ``ModelInferRequest`` messages, one per data step (one step for random data)."""
    steps = _load_steps(spec.data_file, specs) if spec.data_file else [_random_step(specs, spec.shapes)]
    return [_request(model, specs, step, batching) for step in steps]


def _random_step(specs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        raise AutotuneError(f"--shape names no input of this model: {', '.join(unknown)}; "
                            f"its inputs are {', '.join(s.name for s in specs)}")
    rng = np.random.default_rng(0)
    step = {}
    for tensor in specs:
        shape = shapes.get(tensor.name, tensor.shape)
        if any(d < 0 for d in shape):
            raise AutotuneError(
                f"input {tensor.name} has dynamic shape {list(tensor.shape)}: give its size with "
                f"--shape {tensor.name}:{','.join('3' if d < 0 else str(d) for d in tensor.shape)} "
                "or real data with --input-data FILE")
        if not _fits(tensor, shape):
            raise AutotuneError(f"--shape {tensor.name}:{','.join(map(str, shape))} does not fit the model's "
                                f"shape {list(tensor.shape)}")
        step[tensor.name] = _random_array(tensor.datatype, shape, rng)
    return step


def _random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([rng.bytes(16) for _ in range(int(np.prod(shape)))], dtype=np.object_).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind == "f" or datatype == "BF16":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 64, size=shape).astype(dtype)


def _load_steps(path: Path, specs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as error:
            raise AutotuneError(f"--input-data {path}: cannot read it as .npz: {error}") from None
        return [_check_step(path, specs, arrays)]
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise AutotuneError(f"--input-data {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise AutotuneError(f"--input-data {path}: malformed JSON (line {error.lineno}): {error.msg}") from None
    steps = document.get("data") if isinstance(document, dict) else None
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        raise AutotuneError(f'--input-data {path}: expected perf_analyzer\'s format, {{"data": [{{"INPUT": ...}}]}}')
    return [_check_step(path, specs, {name: _json_array(path, specs, name, value) for name, value in step.items()})
            for step in steps]


def _json_array(path: Path, specs: list[TensorSpec], name: str, value: Any) -> np.ndarray:
    """One input of one step: a flat list, ``{"content": [...], "shape": [...]}``, or ``{"b64": "..."}``."""
    tensor = next((s for s in specs if s.name == name), None)
    if tensor is None:
        raise AutotuneError(f"--input-data {path}: the model has no input {name!r}")
    shape = tensor.shape
    if isinstance(value, dict):
        shape = value.get("shape", shape)
        if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise AutotuneError(f"--input-data {path}: input {name} has shape {shape!r}; expected a list of sizes")
    if any(d < 0 for d in shape):
        raise AutotuneError(f'--input-data {path}: input {name} has a dynamic shape; give "shape" with its content')
    if isinstance(value, dict):
        if "b64" in value:
            return _b64_array(path, tensor, tuple(shape), value["b64"])
        if "content" not in value:
            raise AutotuneError(f'--input-data {path}: input {name} needs "content" or "b64"')
        value = value["content"]
    flat = np.array(list(_flatten(value)), dtype=np.object_ if tensor.datatype == "BYTES" else None)
    if flat.size != int(np.prod(shape)):
        raise AutotuneError(f"--input-data {path}: input {name} has {flat.size} values, its shape {list(shape)} "
                            f"needs {int(np.prod(shape))}")
    return flat.reshape(shape)


def _b64_array(path: Path, tensor: TensorSpec, shape: tuple[int, ...], text: Any) -> np.ndarray:
    """``{"b64": ...}``: the tensor's raw little-endian bytes in row-major order, as perf_analyzer reads them."""
    if tensor.datatype == "BYTES":
        raise AutotuneError(f'--input-data {path}: input {tensor.name} is BYTES; give its strings as "content", '
                            'not "b64"')
    try:
        raw = base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        raise AutotuneError(f"--input-data {path}: input {tensor.name} has malformed base64 data") from None
    dtype = np.dtype(triton_to_np_dtype(tensor.datatype))
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise AutotuneError(f"--input-data {path}: input {tensor.name} has {len(raw)} bytes of data, its shape "
                            f"{list(shape)} of {tensor.datatype} needs {int(np.prod(shape)) * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _check_step(path: Path, specs: list[TensorSpec], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The step's arrays in the model's datatypes, once every input has data whose shape fits."""
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise AutotuneError(f"--input-data {path}: no data for input {', '.join(missing)}")
    extra = sorted(set(arrays) - {s.name for s in specs})
    if extra:
        raise AutotuneError(f"--input-data {path}: the model has no input {', '.join(extra)}")
    step = {}
    for tensor in specs:
        array = arrays[tensor.name]
        if not _fits(tensor, array.shape):
            raise AutotuneError(f"--input-data {path}: input {tensor.name} has shape {list(array.shape)}, which "
                                f"does not fit the model's shape {list(tensor.shape)}")
        step[tensor.name] = _as_datatype(path, tensor, array)
    return step


def _as_datatype(path: Path, tensor: TensorSpec, array: np.ndarray) -> np.ndarray:
    """``array`` in ``tensor``'s datatype: a NumPy archive holds float64 and unicode arrays as readily as the
    model's own types."""
    if tensor.datatype == "BYTES":
        if array.dtype.kind not in "USO":
            raise AutotuneError(f"--input-data {path}: input {tensor.name} is BYTES; its data must be strings")
        return np.array([v.encode() if isinstance(v, str) else v for v in array.flat],
                        dtype=np.object_).reshape(array.shape)
    try:
        return array.astype(triton_to_np_dtype(tensor.datatype))
    except (TypeError, ValueError):
        raise AutotuneError(f"--input-data {path}: input {tensor.name} is {tensor.datatype}; its data must be "
                            "numbers") from None


def _fits(tensor: TensorSpec, shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` is one the model takes: as many dimensions, and the fixed ones of the same size."""
    return len(shape) == len(tensor.shape) and all(d < 0 or d == s for d, s in zip(tensor.shape, shape, strict=True))


def _request(model: str, specs: list[TensorSpec], step: dict[str, np.ndarray], batching: bool) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    for tensor in specs:
        array = step[tensor.name]
        entry = request.inputs.add(name=tensor.name, datatype=tensor.datatype)
        entry.shape.extend([1, *array.shape] if batching else array.shape)
        if tensor.datatype == "BYTES":
            serialized = serialize_byte_tensor(array)  # a 0-d object array holding the bytes, or empty
            request.raw_input_contents.append(serialized.item() if serialized.size else b"")
        else:
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request.SerializeToString()
