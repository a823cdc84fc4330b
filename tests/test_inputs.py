"""Request data for the load loop: random tensors from metadata, --shape, and --input-data files."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from autotune.errors import AutotuneError
from autotune.load.inputs import InputSpec, TensorSpec, build_requests, parse_shape, tensor_specs

ALL_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                 "FP16", "BF16", "FP32", "FP64", "BYTES"]


def decoded(payload: bytes) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest.FromString(payload)


def test_metadata_shapes_lose_the_batch_dimension_only_when_the_model_batches() -> None:
    metadata = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]}
    assert tensor_specs(metadata, batching=True) == [TensorSpec("INPUT", "FP32", (3, 224, 224))]
    assert tensor_specs(metadata, batching=False) == [TensorSpec("INPUT", "FP32", (-1, 3, 224, 224))]


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_random_data_for_every_triton_datatype(datatype: str) -> None:
    (payload,) = build_requests("m", [TensorSpec("X", datatype, (2, 3))], batching=True, spec=InputSpec())
    request = decoded(payload)
    assert request.model_name == "m"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("X", datatype, [1, 2, 3])]
    raw = request.raw_input_contents[0]
    if datatype == "BYTES":
        assert len(deserialize_bytes_tensor(raw)) == 6
    else:
        assert len(raw) == 6 * np.dtype(triton_to_np_dtype(datatype)).itemsize


def test_a_model_that_does_not_batch_gets_its_shape_as_declared() -> None:
    (payload,) = build_requests("m", [TensorSpec("X", "FP32", (4,))], batching=False, spec=InputSpec())
    assert list(decoded(payload).inputs[0].shape) == [4]


def test_a_dynamic_dimension_without_a_size_names_the_flags_that_fix_it() -> None:
    with pytest.raises(AutotuneError, match=r"input IMAGE has dynamic shape \[3, -1\]: give its size with "
                                            r"--shape IMAGE:3,3 or real data with --input-data FILE"):
        build_requests("m", [TensorSpec("IMAGE", "FP32", (3, -1))], batching=True, spec=InputSpec())


def test_shape_sizes_dynamic_dimensions() -> None:
    spec = InputSpec(shapes=dict([parse_shape("IMAGE:3,224")]))
    (payload,) = build_requests("m", [TensorSpec("IMAGE", "FP32", (3, -1))], batching=True, spec=spec)
    assert list(decoded(payload).inputs[0].shape) == [1, 3, 224]


@pytest.mark.parametrize(("shape", "message"), [
    ("IMAGE:4,224", "does not fit the model's shape"),
    ("IMAGE:224", "does not fit the model's shape"),
    ("LABEL:3", "--shape names no input of this model: LABEL"),
])
def test_a_shape_that_does_not_fit_is_refused(shape: str, message: str) -> None:
    with pytest.raises(AutotuneError, match=message):
        build_requests("m", [TensorSpec("IMAGE", "FP32", (3, -1))], batching=True,
                       spec=InputSpec(shapes=dict([parse_shape(shape)])))


@pytest.mark.parametrize("text", ["IMAGE", "IMAGE:", "IMAGE:3,x", ":3", "IMAGE:0"])
def test_malformed_shapes(text: str) -> None:
    with pytest.raises(AutotuneError, match="expected NAME:d1,d2"):
        parse_shape(text)


def test_perf_analyzer_json_gives_one_request_per_step(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [
        {"X": [1, 2, 3, 4], "TEXT": ["hello"]},
        {"X": {"content": [[5, 6], [7, 8]], "shape": [4]}, "TEXT": {"content": ["bye"], "shape": [1]}},
        {"X": {"b64": base64.b64encode(np.arange(4, dtype=np.int32).tobytes()).decode()}, "TEXT": ["again"]},
    ]}))
    specs = [TensorSpec("X", "INT32", (4,)), TensorSpec("TEXT", "BYTES", (1,))]
    requests = [decoded(p) for p in build_requests("m", specs, batching=True, spec=InputSpec(data_file=data))]
    numbers = [np.frombuffer(r.raw_input_contents[0], dtype=np.int32).tolist() for r in requests]
    texts = [deserialize_bytes_tensor(r.raw_input_contents[1]).tolist() for r in requests]
    assert numbers == [[1, 2, 3, 4], [5, 6, 7, 8], [0, 1, 2, 3]]
    assert texts == [[b"hello"], [b"bye"], [b"again"]]


def test_npz_arrays_are_one_request_keyed_by_input_name(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, X=np.full((2, 2), 7, dtype=np.float32))
    (payload,) = build_requests("m", [TensorSpec("X", "FP32", (-1, 2))], batching=True,
                                spec=InputSpec(data_file=data))
    request = decoded(payload)
    assert list(request.inputs[0].shape) == [1, 2, 2]
    assert np.frombuffer(request.raw_input_contents[0], dtype=np.float32).tolist() == [7.0] * 4


@pytest.mark.parametrize(("content", "message"), [
    ("{", "malformed JSON"),
    ('{"inputs": []}', "expected perf_analyzer's format"),
    ('{"data": [{"X": [1, 2, 3]}]}', "input X has 3 values, its shape \\[4\\] needs 4"),
    ('{"data": [{"Y": [1, 2, 3, 4]}]}', "the model has no input 'Y'"),
    ('{"data": [{}]}', "no data for input X"),
    ('{"data": [{"X": ["a", "b", "c", "d"]}]}', "input X is INT32; its data must be numbers"),
    ('{"data": [{"X": [{"a": 1}, 2, 3, 4]}]}', "input X is INT32; its data must be numbers"),
    ('{"data": [{"X": {"content": [1, 2, 3, 4], "shape": [2, 2]}}]}', "shape \\[2, 2\\], which does not fit"),
    ('{"data": [{"X": {"content": [1, 2, 3, 4], "shape": "4"}}]}', "has shape '4'; expected a list of sizes"),
    ('{"data": [{"X": {"shape": [4]}}]}', 'input X needs "content" or "b64"'),
    ('{"data": [{"X": {"b64": "!!!"}}]}', "input X has malformed base64 data"),
    ('{"data": [{"X": {"b64": "AAAA"}}]}', "input X has 3 bytes of data, its shape \\[4\\] of INT32 needs 16"),
])
def test_bad_input_data_files(tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "data.json"
    data.write_text(content)
    with pytest.raises(AutotuneError, match=message):
        build_requests("m", [TensorSpec("X", "INT32", (4,))], batching=True, spec=InputSpec(data_file=data))


def test_bytes_inputs_take_strings_not_base64(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"TEXT": {"b64": "aGVsbG8="}}]}))
    with pytest.raises(AutotuneError, match='input TEXT is BYTES; give its strings as "content"'):
        build_requests("m", [TensorSpec("TEXT", "BYTES", (1,))], batching=True, spec=InputSpec(data_file=data))


def test_npz_arrays_take_the_models_datatypes(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, X=np.array([0.5, 1.5]), TEXT=np.array(["hello"]))
    specs = [TensorSpec("X", "FP32", (2,)), TensorSpec("TEXT", "BYTES", (1,))]
    (payload,) = build_requests("m", specs, batching=True, spec=InputSpec(data_file=data))
    request = decoded(payload)
    assert np.frombuffer(request.raw_input_contents[0], dtype=np.float32).tolist() == [0.5, 1.5]
    assert deserialize_bytes_tensor(request.raw_input_contents[1]).tolist() == [b"hello"]


@pytest.mark.parametrize(("arrays", "message"), [
    ({"X": np.zeros((2, 2))}, "input X has shape \\[2, 2\\], which does not fit the model's shape \\[4\\]"),
    ({"X": np.array(["a", "b", "c", "d"])}, "input X is FP32; its data must be numbers"),
])
def test_npz_arrays_that_do_not_fit_are_refused(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    with pytest.raises(AutotuneError, match=message):
        build_requests("m", [TensorSpec("X", "FP32", (4,))], batching=True, spec=InputSpec(data_file=data))
