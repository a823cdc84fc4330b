"""Triton model configurations as Triton's own protobuf: read and write ``config.pbtxt``, apply tuned settings.

Nothing here templates text: configs are ``ModelConfig`` messages, parsed and printed with ``text_format`` and
converted to the JSON form that ``load_model(config=...)`` takes with ``json_format``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig, ModelInstanceGroup

from autotune.errors import AutotuneError
from autotune.params import ServerParams


def read_pbtxt(path: Path) -> ModelConfig:
    return parse_pbtxt(Path(path).read_text(), str(path))


def parse_pbtxt(text: str, source: str = "config") -> ModelConfig:
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as error:
        raise AutotuneError(f"{source}: not a valid Triton model config: {error}") from None


def completes_itself(model_dir: Path) -> bool:
    """Whether Triton must complete a model's config when it loads it (its auto-complete): the config is missing,
    unreadable, or names no backend, inputs or outputs, or a Python model fills in its own
    (``auto_complete_config``).

    Anything else loads the same without it, and a Python model's reload then skips the extra stub process that
    auto-complete starts, 1.2 s of every 1.4 s on this machine.
    """
    try:
        config = read_pbtxt(model_dir / "config.pbtxt")
    except (OSError, UnicodeDecodeError, AutotuneError):
        return True
    if not (config.backend or config.platform) or not config.input or not config.output:
        return True
    return any("def auto_complete_config" in source.read_text(errors="replace")
               for source in model_dir.glob("*/*.py"))


def to_pbtxt(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def from_json(document: dict[str, Any]) -> ModelConfig:
    """Parse the JSON that ``get_model_config(as_json=True)`` returns (its ``config`` member)."""
    return json_format.ParseDict(document, ModelConfig(), ignore_unknown_fields=True)


def to_json(config: ModelConfig) -> str:
    """The JSON form of a config that ``InferenceServerClient.load_model(config=...)`` takes."""
    return json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))


def params_of(config: ModelConfig) -> ServerParams:
    """The tuned settings as the server runs them: Triton reads no ``preferred_batch_size`` as ``[max_batch_size]``."""
    batching = config.HasField("dynamic_batching")
    preferred = tuple(config.dynamic_batching.preferred_batch_size) or (config.max_batch_size,)
    return ServerParams(
        dynamic_batching=batching,
        max_batch_size=config.max_batch_size,
        max_queue_delay_microseconds=config.dynamic_batching.max_queue_delay_microseconds if batching else 0,
        preferred_batch_size=preferred if batching else (),
        instance_count=config.instance_group[0].count if config.instance_group else 1,
    )


def apply(base: ModelConfig, params: ServerParams) -> ModelConfig:
    """A copy of ``base`` with ``params`` applied; everything else (and the instance kind) is kept.

    The instance count is set on every instance group, so that a ``KIND_GPU`` group spread over several GPUs
    keeps its per-GPU meaning.
    """
    config = ModelConfig()
    config.CopyFrom(base)
    config.max_batch_size = params.max_batch_size
    if params.dynamic_batching:
        batching = config.dynamic_batching
        batching.SetInParent()
        batching.max_queue_delay_microseconds = params.max_queue_delay_microseconds
        batching.ClearField("preferred_batch_size")
        batching.preferred_batch_size.extend(params.preferred_batch_size)
    else:
        config.ClearField("dynamic_batching")
    if not config.instance_group:
        config.instance_group.add(kind=ModelInstanceGroup.KIND_AUTO)
    for group in config.instance_group:
        group.count = params.instance_count
    return config


def override(config: ModelConfig, assignment: str) -> ModelConfig:
    """A copy of ``config`` with one ``dotted.field=value`` set, in protobuf text-format syntax.

    ``instance_group.count=2`` sets the field on every element of a repeated message (one is added if there
    are none); ``dynamic_batching.preferred_batch_size=4,8`` fills a repeated number; a message field takes a
    text-format body, e.g. ``dynamic_batching={}``.
    """
    path, sep, value = assignment.partition("=")
    if not sep or not path.strip():
        raise AutotuneError(f"--set {assignment!r}: expected KEY=VALUE, e.g. instance_group.count=2")
    result = ModelConfig()
    result.CopyFrom(config)
    *parents, leaf = path.strip().split(".")
    try:
        for message in _walk(result, parents):
            descriptor = message.DESCRIPTOR.fields_by_name.get(leaf)
            if descriptor is None:
                raise ValueError(f"{message.DESCRIPTOR.name} has no field {leaf!r}")
            message.ClearField(leaf)
            if descriptor.message_type is not None:
                text = f"{leaf} {value.strip() or '{}'}"
            elif _is_repeated(message, leaf):
                text = f"{leaf}: [{value}]"
            else:
                text = f"{leaf}: {value}"
            text_format.Merge(text, message)
    except (ValueError, text_format.ParseError) as error:
        raise AutotuneError(f"--set {assignment!r}: {error}") from None
    return result


def _walk(message: Any, names: list[str]) -> list[Any]:
    """The messages that ``names`` leads to from ``message``, creating missing ones."""
    if not names:
        return [message]
    name, rest = names[0], names[1:]
    descriptor = message.DESCRIPTOR.fields_by_name.get(name)
    if descriptor is None or descriptor.message_type is None:
        raise ValueError(f"{message.DESCRIPTOR.name} has no message field {name!r}")
    if _is_repeated(message, name):
        children = getattr(message, name)
        if not children:
            children.add()
        return [found for child in children for found in _walk(child, rest)]
    child = getattr(message, name)
    child.SetInParent()
    return _walk(child, rest)


def _is_repeated(message: Any, name: str) -> bool:
    """Whether a field is repeated; read off its container, since protobuf renamed the descriptor's flag."""
    return hasattr(getattr(message, name), "extend")
