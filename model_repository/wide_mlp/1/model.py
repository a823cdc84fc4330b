"""A wide three-layer numpy MLP served by Triton's Python backend.

Every request in one ``execute`` call is stacked into a single matrix product, so the server's dynamic
batcher turns many small requests into one large, cheaper, call.
"""

import itertools

import numpy as np
import triton_python_backend_utils as pb_utils

LAYERS = (256, 2048, 2048, 16)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        rng = np.random.default_rng(0)
        self.weights = [
            rng.standard_normal((n_in, n_out), dtype=np.float32) / np.sqrt(n_in)
            for n_in, n_out in itertools.pairwise(LAYERS)
        ]

    def execute(self, requests: list) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        sizes = [len(x) for x in inputs]
        activations = np.concatenate(inputs)
        for weight in self.weights[:-1]:
            activations = np.maximum(activations @ weight, 0.0)
        outputs = np.split(activations @ self.weights[-1], np.cumsum(sizes)[:-1])
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out.astype(np.float32))])
            for out in outputs
        ]
