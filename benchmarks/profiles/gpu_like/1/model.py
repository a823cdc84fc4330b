"""A stand-in for a GPU model: a batch holds one device (an exclusive file lock shared by every instance) for
LAUNCH_S + PER_REQUEST_S x batch, sleeping, so the CPU stays free as it would while a GPU computes."""

import fcntl
import os
import time

import triton_python_backend_utils as pb_utils

LAUNCH_S = 0.002
PER_REQUEST_S = 0.00025


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        # One device per server: the lock file is named for the server's process, the instances' common parent, and
        # kept in the model's directory, which goes with the benchmark's copy of the repository.
        path = os.path.join(args["model_repository"], f".device-{os.getppid()}.lock")
        self.device = open(path, "a")  # noqa: SIM115

    def execute(self, requests: list) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        fcntl.flock(self.device, fcntl.LOCK_EX)
        try:
            time.sleep(LAUNCH_S + PER_REQUEST_S * sum(len(x) for x in inputs))
        finally:
            fcntl.flock(self.device, fcntl.LOCK_UN)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", x)]) for x in inputs]

    def finalize(self) -> None:
        self.device.close()
