"""Control of one model on a running Triton server: reconfigure it in place, verify, restore, read statistics.

The server must run in explicit model-control mode: ``load_model(name, config=...)`` then replaces the model's
configuration without a restart, and ``load_model(name)`` brings back its ``config.pbtxt``.
"""

from __future__ import annotations

from collections.abc import Callable

from tritonclient.grpc.model_config_pb2 import ModelInstanceGroup
from tritonclient.utils import InferenceServerException

from autotune.errors import AutotuneError, TrialFailed
from autotune.interruptions import interruptible
from autotune.triton import model_config
from autotune.triton.client import connect
from autotune.triton.model_config import ModelConfig

# A query (liveness, config, statistics) that a server does not answer within this long finds it hung: a stopped
# process answers nothing, and without a deadline autotune would wait for ever.
QUERY_TIMEOUT_S = 10.0


class ConfigRejected(TrialFailed):
    """Triton refused to load a configuration; the model may stay unavailable until the next load."""


def repository_models(url: str) -> list[str]:
    """Names of the models in the repository of the server at ``url``."""
    client = connect(url)
    try:
        index = client.get_model_repository_index(as_json=True, client_timeout=QUERY_TIMEOUT_S)
        return sorted(entry["name"] for entry in index.get("models", []))
    except InferenceServerException as error:
        raise AutotuneError(f"cannot reach a Triton server at {url}: {_reason(error)}") from None
    finally:
        client.close()


class ModelServer:
    """One model on one server. ``original`` is what the server ran before autotune touched it."""

    def __init__(
        self, url: str, model: str, load_timeout_s: float = 300.0, explain: Callable[[], str] | None = None
    ) -> None:
        """``explain`` returns the server's own account of its last error, where autotune can read its log."""
        self.url = url
        self.model = model
        self._explain = explain
        self.load_timeout_s = load_timeout_s
        self._client = connect(url)
        try:
            live = self._client.is_server_live(client_timeout=QUERY_TIMEOUT_S)
        except InferenceServerException as error:
            raise AutotuneError(f"cannot reach a Triton server at {url}: {_reason(error)}") from None
        if not live:
            raise AutotuneError(f"the Triton server at {url} is not live")
        self.was_loaded = self._client.is_model_ready(model, client_timeout=QUERY_TIMEOUT_S)
        if not self.was_loaded:
            names = repository_models(url)
            if model not in names:
                raise AutotuneError(
                    f"unknown model {model!r}; the server's repository has: {', '.join(names) or 'no models'}"
                )
            self._load(None)
        self.original = self.running_config()
        self._current: ModelConfig | None = self.original

    def server_info(self) -> dict[str, str]:
        """What the study records about the server: version, address, and where the model's instances run."""
        metadata = self._client.get_server_metadata(as_json=True, client_timeout=QUERY_TIMEOUT_S)
        kinds = sorted({ModelInstanceGroup.Kind.Name(group.kind) for group in self.original.instance_group})
        return {"server_version": metadata.get("version", ""), "server_url": self.url,
                "instance_kind": ",".join(kinds) or "KIND_AUTO"}

    def running_config(self) -> ModelConfig:
        reply = self._client.get_model_config(self.model, as_json=True, client_timeout=QUERY_TIMEOUT_S)
        return model_config.from_json(reply["config"])

    def apply(self, config: ModelConfig) -> bool:
        """Load ``config`` in place and check that the server now runs it; says whether it had to reload, since an
        identical loaded config is reused."""
        if self._current is not None and _checked(self._current) == _checked(config):
            return False
        self._current = None
        self._load(model_config.to_json(config))
        running = self.running_config()
        if _checked(running) != _checked(config):
            raise ConfigRejected(f"Triton kept a different configuration for {self.model} than the one sent")
        self._current = running
        return True

    def restore(self) -> None:
        """Put the model back as it was: its repository config reloaded, or unloaded if it was not loaded.

        A model that autotune found loaded and never reconfigured is left alone. A server that no longer answers
        is found so within ``QUERY_TIMEOUT_S`` instead of a load's timeout.
        """
        if self.was_loaded and self._current is self.original:
            return
        self._client.is_server_live(client_timeout=QUERY_TIMEOUT_S)
        if not self.was_loaded:
            self._client.unload_model(self.model, client_timeout=self.load_timeout_s)
            return
        self._load(None)
        if _checked(self.running_config()) != _checked(self.original):
            self._load(model_config.to_json(self.original))
        self._current = self.original

    def statistics(self) -> dict[str, float]:
        """Cumulative server-side counters: requests, executed batches, queue and compute time (ns)."""
        stats = self._client.get_inference_statistics(self.model, as_json=True,
                                                       client_timeout=QUERY_TIMEOUT_S)["model_stats"]
        totals = {"success_count": 0.0, "execution_count": 0.0, "queue_ns": 0.0, "compute_input_ns": 0.0,
                  "compute_infer_ns": 0.0, "compute_output_ns": 0.0}
        for version in stats:
            inference = version.get("inference_stats", {})
            totals["success_count"] += float(inference.get("success", {}).get("count", 0))
            totals["execution_count"] += float(version.get("execution_count", 0))
            for name in ("queue", "compute_input", "compute_infer", "compute_output"):
                totals[f"{name}_ns"] += float(inference.get(name, {}).get("ns", 0))
        return totals

    def close(self) -> None:
        self._client.close()

    def _load(self, config_json: str | None) -> None:
        """Load the model, with ``config_json`` or its repository's own config (None); a server that stops answering
        meanwhile is found so within ``QUERY_TIMEOUT_S`` or so, not at the load's timeout."""
        try:
            # config None: the repository's own config.pbtxt, as tritonclient sends no config parameter then
            interruptible(lambda: self._client.load_model(self.model, config=config_json,
                                                          client_timeout=self.load_timeout_s),
                          check=self._answering)
        except _Hung as hung:
            raise hung.error from None
        except InferenceServerException as error:
            if error.status() == "StatusCode.UNAVAILABLE":
                raise  # the server is gone, which no other configuration mends
            reason = _reason(error)
            if "explicit model load / unload is not allowed" in reason:
                raise AutotuneError(
                    f"the Triton server at {self.url} does not allow model reloads; "
                    "start it with --model-control-mode=explicit"
                ) from None
            detail = self._explain() if self._explain is not None else ""
            if detail and detail not in reason:
                reason = f"{reason}: {detail}"
            raise ConfigRejected(f"Triton refused the configuration of {self.model}: {reason}") from None


    def _answering(self) -> None:
        """Raises ``_Hung`` where the server does not answer a query within ``QUERY_TIMEOUT_S``."""
        try:
            self._client.is_server_live(client_timeout=QUERY_TIMEOUT_S)
        except InferenceServerException as error:
            raise _Hung(error) from None


class _Hung(Exception):
    """The server stopped answering while a model loaded: ``error`` is the query's, not the load's."""

    def __init__(self, error: InferenceServerException) -> None:
        super().__init__(str(error))
        self.error = error


_STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
# The keys ``server_times`` may return.
SERVER_TIMES = ("server_batches", "server_avg_batch_size", *(f"server_{stage}_ms" for stage in _STAGES))


def server_times(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the server did between two ``statistics()`` readings: batches, average batch size, and the mean
    queue and compute times per request in milliseconds (the last three only when requests succeeded)."""
    delta = {key: after[key] - before[key] for key in after}
    executions, requests = delta["execution_count"], delta["success_count"]
    times: dict[str, float] = {"server_batches": int(executions)}
    if executions and requests:
        times["server_avg_batch_size"] = round(requests / executions, 3)
        for stage in _STAGES:
            times[f"server_{stage}_ms"] = round(delta[f"{stage}_ns"] / requests / 1e6, 4)
    return times


def _checked(config: ModelConfig) -> tuple[object, ...]:
    """The tuned fields of a config, comparable between what was asked and what the server reports.

    Instance kinds are left out: the server resolves ``KIND_AUTO`` and fills in GPU lists by itself.
    """
    return model_config.params_of(config), tuple(group.count for group in config.instance_group)


def _reason(error: InferenceServerException) -> str:
    """The first line of Triton's message; its Python-backend tracebacks come with escaped newlines."""
    message = (error.message() or str(error)).strip()
    return message.replace("\\n", "\n").splitlines()[0].strip() if message else "no reason given"
