import json
from pathlib import Path

import pytest
from tritonclient.grpc.model_config_pb2 import ModelConfig, ModelInstanceGroup

from autotune.errors import AutotuneError
from autotune.params import ServerParams
from autotune.triton.model_config import (
    apply,
    completes_itself,
    from_json,
    override,
    params_of,
    read_pbtxt,
    to_json,
    to_pbtxt,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = (ROOT / "model_repository" / "mlp" / "config.pbtxt").read_text()
GPU_CONFIG = '''
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 64
instance_group [ { count: 1, kind: KIND_GPU, gpus: [ 0, 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
'''


def test_shipped_configs_round_trip_through_text_and_json(tmp_path: Path) -> None:
    paths = sorted([*(ROOT / "model_repository").glob("*/config.pbtxt"),
                    *(ROOT / "benchmarks" / "profiles").glob("*/config.pbtxt")])
    assert {path.parent.name for path in paths} == {"mlp", "wide_mlp", "gpu_like", "contended"}
    for path in paths:
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


def test_override_sets_a_dotted_field_in_text_format_syntax() -> None:
    base = read_pbtxt(ROOT / "model_repository" / "mlp" / "config.pbtxt")
    config = override(base, "dynamic_batching.max_queue_delay_microseconds=2000")
    config = override(config, "dynamic_batching.preferred_batch_size=4,8")
    config = override(config, "instance_group.kind=KIND_GPU")
    config = override(config, "max_batch_size=16")
    assert params_of(config) == ServerParams(True, 16, 2000, (4, 8), 1)
    assert config.instance_group[0].kind == ModelInstanceGroup.KIND_GPU
    assert override(config, "dynamic_batching={}").dynamic_batching.max_queue_delay_microseconds == 0
    assert base == read_pbtxt(ROOT / "model_repository" / "mlp" / "config.pbtxt"), "the base is not changed"


def test_override_of_a_repeated_message_sets_every_element() -> None:
    config = override(from_json({"instance_group": [{"count": 1}, {"count": 2}]}), "instance_group.count=3")
    assert [group.count for group in config.instance_group] == [3, 3]
    assert [group.count for group in override(ModelConfig(), "instance_group.count=2").instance_group] == [2]


@pytest.mark.parametrize(("assignment", "message"), [
    ("instance_group.count", "expected KEY=VALUE"),
    ("batch_size=8", "ModelConfig has no field 'batch_size'"),
    ("max_batch_size=many", "Couldn't parse integer"),
    ("dynamic_batching.delay=5", "ModelDynamicBatching has no field 'delay'"),
    ("instance_group.kind=KIND_TPU", "KIND_TPU"),
])
def test_override_errors_say_what_is_wrong(assignment: str, message: str) -> None:
    with pytest.raises(AutotuneError, match=message):
        override(ModelConfig(), assignment)


@pytest.mark.parametrize("model", ["mlp", "wide_mlp"])
def test_a_shipped_model_needs_no_auto_complete(model: str) -> None:
    assert not completes_itself(ROOT / "model_repository" / model)


@pytest.mark.parametrize(("config", "code", "why"), [
    (None, "", "no config.pbtxt"),
    ('backend: "python"\nmax_batch_size: 8', "", "no inputs or outputs"),
    ('max_batch_size: 8\ninput [{name: "X", data_type: TYPE_FP32, dims: [1]}]\n'
     'output [{name: "Y", data_type: TYPE_FP32, dims: [1]}]', "", "no backend"),
    ("not a config {", "", "an unreadable config"),
    (SHIPPED_CONFIG, "class TritonPythonModel:\n    def auto_complete_config(config):\n        return config\n",
     "a Python model that completes its own config"),
])
def test_a_model_needs_auto_complete_when_its_config_is_not_whole(tmp_path: Path, config: str | None, code: str,
                                                                   why: str) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text(code or "class TritonPythonModel:\n    pass\n")
    if config is not None:
        (tmp_path / "config.pbtxt").write_text(config)
    assert completes_itself(tmp_path), why
