import json
from pathlib import Path

from tritonclient.grpc.model_config_pb2 import ModelInstanceGroup

from autotune.model_config import ServerParams, apply, from_json, params_of, read_pbtxt, to_json, to_pbtxt

ROOT = Path(__file__).resolve().parent.parent
GPU_CONFIG = '''
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 64
instance_group [ { count: 1, kind: KIND_GPU, gpus: [ 0, 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
'''


def test_shipped_configs_round_trip_through_text_and_json(tmp_path: Path) -> None:
    for path in (ROOT / "model_repository").glob("*/config.pbtxt"):
        config = read_pbtxt(path)
        copy = tmp_path / "config.pbtxt"
        copy.write_text(to_pbtxt(config))
        assert read_pbtxt(copy) == config
        assert from_json(json.loads(to_json(config))) == config


def test_apply_sets_only_the_tuned_fields(tmp_path: Path) -> None:
    base = read_pbtxt(ROOT / "model_repository" / "mlp" / "config.pbtxt")
    tuned = apply(base, ServerParams(True, 16, 2000, (8,), 3))
    assert tuned.max_batch_size == 16
    assert tuned.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(tuned.dynamic_batching.preferred_batch_size) == [8]
    assert [(g.count, g.kind) for g in tuned.instance_group] == [(3, ModelInstanceGroup.KIND_CPU)]
    assert (tuned.input, tuned.output, tuned.backend) == (base.input, base.output, base.backend)
    assert params_of(tuned) == ServerParams(True, 16, 2000, (8,), 3)


def test_a_zero_delay_batcher_is_still_a_batcher() -> None:
    base = read_pbtxt(ROOT / "model_repository" / "mlp" / "config.pbtxt")
    tuned = apply(base, ServerParams(True, 8, 0, (), 1))
    assert tuned.HasField("dynamic_batching")
    assert "dynamic_batching" in to_pbtxt(tuned)


def test_turning_batching_off_removes_the_batcher(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text(GPU_CONFIG)
    tuned = apply(read_pbtxt(path), ServerParams(False, 64, instance_count=2))
    assert not tuned.HasField("dynamic_batching")


def test_gpu_instances_stay_on_their_gpus(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text(GPU_CONFIG)
    (group,) = apply(read_pbtxt(path), ServerParams(True, 32, 500, (), 4)).instance_group
    assert group.kind == ModelInstanceGroup.KIND_GPU
    assert list(group.gpus) == [0, 1]
    assert group.count == 4
