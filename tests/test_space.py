from pathlib import Path

import optuna
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from optuna.trial import FixedTrial

from autotune.errors import AutotuneError
from autotune.params import ServerParams
from autotune.search.space import IntRange, SearchSpace
from autotune.triton.model_config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent


powers_of_two = st.tuples(st.integers(0, 3), st.integers(3, 7)).map(lambda e: IntRange(2 ** e[0], 2 ** e[1]))


@st.composite
def spaces(draw: st.DrawFn) -> SearchSpace:
    def int_range(low_floor: int, top: int) -> IntRange:
        low = draw(st.integers(low_floor, top))
        return IntRange(low, draw(st.integers(low, top)))

    return SearchSpace(
        dynamic_batching=tuple(draw(st.sets(st.booleans(), min_size=1))),
        max_queue_delay_microseconds=int_range(2, 50_000),
        max_batch_size=draw(st.none() | powers_of_two),
        preferred_batch_size=tuple(draw(st.sets(st.sampled_from(["max", "half"]), min_size=1))),
        instance_count=int_range(1, 8),
        concurrency=int_range(1, 256),
    )


def assert_valid(space: SearchSpace, base: ModelConfig, params: ServerParams) -> None:
    assert space.instance_count.low <= params.instance_count <= space.instance_count.high
    if base.max_batch_size == 0:
        assert not params.dynamic_batching and params.max_batch_size == 0
    if not params.dynamic_batching:
        assert params.max_batch_size == base.max_batch_size
        return
    assert params.max_batch_size >= 1 and params.max_batch_size & (params.max_batch_size - 1) == 0
    assert params.max_batch_size in space.batch_sizes(base)
    assert all(1 <= size <= params.max_batch_size for size in params.preferred_batch_size)
    delay = params.max_queue_delay_microseconds
    assert delay == 0 or space.max_queue_delay_microseconds.low <= delay <= space.max_queue_delay_microseconds.high


@settings(max_examples=150, deadline=None)
@given(space=spaces(), model_max_batch=st.integers(0, 128), seed=st.integers(0, 2**16))
def test_every_sampled_setting_is_valid_for_the_model(space: SearchSpace, model_max_batch: int, seed: int) -> None:
    base = ModelConfig(name="m", max_batch_size=model_max_batch)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(5):
        trial = study.ask()
        params = space.suggest(trial, base)
        concurrency = space.suggest_concurrency(trial)
        assert space.concurrency.low <= concurrency <= space.concurrency.high
        assert_valid(space, base, params)
        study.tell(trial, 1.0)


@settings(max_examples=150, deadline=None)
@given(space=spaces(), model_max_batch=st.integers(0, 128), seed=st.integers(0, 2**16))
@example(space=SearchSpace(preferred_batch_size=("half", "max")), model_max_batch=2, seed=1)
def test_a_neighbour_moves_one_setting_one_step_and_stays_in_the_space(
    space: SearchSpace, model_max_batch: int, seed: int
) -> None:
    base = ModelConfig(name="m", max_batch_size=model_max_batch)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    params, concurrency = space.suggest(trial, base), space.suggest_concurrency(trial)
    point = space.point(params, base, concurrency)
    assert point is not None and space.suggest(FixedTrial(point), base) == params, "a point gives back its settings"
    for step in space.neighbours(point, base):
        assert len([key for key in point if step[key] != point[key]]) == 1
        assert_valid(space, base, space.suggest(FixedTrial(step), base))
        assert space.concurrency.low <= step["concurrency"] <= space.concurrency.high


def test_the_neighbours_of_a_batching_config_are_one_step_away_in_each_setting() -> None:
    point = {"instance_count": 2, "dynamic_batching": True, "max_batch_size": 8, "max_queue_delay_microseconds": 1000,
             "preferred_batch_size": "max"}
    moved = [{key: value for key, value in step.items() if point[key] != value}
             for step in SearchSpace().neighbours(point, ModelConfig(max_batch_size=16))]
    # The delay moves by a quarter of its log range, 50 us (no delay) to 20 ms: x 4.47.
    assert moved == [{"instance_count": 3}, {"instance_count": 1}, {"max_batch_size": 16}, {"max_batch_size": 4},
                     {"max_queue_delay_microseconds": 4472}, {"max_queue_delay_microseconds": 224},
                     {"preferred_batch_size": "half"}]


def test_settings_outside_the_space_are_snapped_into_it_or_refused() -> None:
    baseline = ServerParams(dynamic_batching=True, max_batch_size=12, max_queue_delay_microseconds=50_000,
                            preferred_batch_size=(4, 12), instance_count=6)
    assert SearchSpace().point(baseline, ModelConfig(max_batch_size=12)) == {
        "instance_count": 4, "dynamic_batching": True, "max_batch_size": 8, "max_queue_delay_microseconds": 20_000,
        "preferred_batch_size": "max"}
    assert SearchSpace(dynamic_batching=(False,)).point(baseline, ModelConfig(max_batch_size=12)) is None


def test_batch_sizes_are_powers_of_two_up_to_the_models_limit() -> None:
    assert SearchSpace().batch_sizes(ModelConfig(max_batch_size=32)) == [1, 2, 4, 8, 16, 32]
    assert SearchSpace().batch_sizes(ModelConfig(max_batch_size=12)) == [1, 2, 4, 8]
    bounded = SearchSpace(max_batch_size=IntRange(4, 16))
    assert bounded.batch_sizes(ModelConfig(max_batch_size=64)) == [4, 8, 16]


def test_zero_delay_is_part_of_the_delay_scale() -> None:
    space = SearchSpace(dynamic_batching=(True,))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    delays = {space.suggest(study.ask(), ModelConfig(max_batch_size=8)).max_queue_delay_microseconds
              for _ in range(200)}
    assert 0 in delays
    assert max(delays) > 5_000


def test_shipped_spaces_load() -> None:
    shipped = sorted((ROOT / "studies").glob("*.yaml"))
    profiles = sorted((ROOT / "benchmarks" / "profiles").glob("*.yaml"))
    assert [path.stem for path in shipped + profiles] == ["mlp", "wide_mlp", "contended", "gpu_like"]
    for path in shipped + profiles:
        space = SearchSpace.from_yaml(path)
        assert space.model == path.stem
        models = ROOT / "model_repository" if path in shipped else path.parent  # a profile's model sits beside it
        assert (models / space.model / "config.pbtxt").exists()


def test_missing_keys_keep_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("concurrency: {high: 8}\n")
    space = SearchSpace.from_yaml(path)
    assert space.concurrency == IntRange(1, 8)
    assert space.instance_count == SearchSpace().instance_count


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurrency: [1, 2", "malformed YAML"),
        ("concurency: {high: 8}", "unknown setting 'concurency'"),
        ("concurrency: {low: 8, high: 2}", "low <= high"),
        ("concurrency: {high: many}", "whole numbers"),
        ("dynamic_batching: [yes, maybe]", "dynamic_batching"),
        ("preferred_batch_size: [all]", "preferred_batch_size"),
        ("max_queue_delay_microseconds: {low: 1}", "2 <= low"),
        ("- just a list", "mapping"),
        ("max_batch_size: {low: 5, high: 7}", "no power of two"),
        ("concurrency: {high: 1000000}", "high is at most 65536 requests in flight, got 1000000"),
    ],
)
def test_bad_spaces_are_refused_with_the_file_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(AutotuneError, match=message) as error:
        SearchSpace.from_yaml(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)
