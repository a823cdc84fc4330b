"""The server settings that autotune tunes, as one plain value: what a trial ran with and what a config holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerParams:
    """The settings autotune tunes that need a model reload (client concurrency is not one of them)."""

    dynamic_batching: bool
    max_batch_size: int
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    instance_count: int = 1

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any]) -> ServerParams:
        """The inverse of ``as_dict``, as a trial's ``config`` user attribute holds it."""
        return cls(**{**recorded, "preferred_batch_size": tuple(recorded.get("preferred_batch_size", ()))})

    def as_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "dynamic_batching": self.dynamic_batching,
            "max_batch_size": self.max_batch_size,
            "instance_count": self.instance_count,
        }
        if self.dynamic_batching:
            fields["max_queue_delay_microseconds"] = self.max_queue_delay_microseconds
            fields["preferred_batch_size"] = list(self.preferred_batch_size)
        return fields

    @property
    def fill_level(self) -> int:
        """Requests in flight from which a dynamic batcher can dispatch full batches without waiting out its delay."""
        if not self.dynamic_batching:
            return 1
        return max(self.preferred_batch_size or (self.max_batch_size,))
