"""A model whose batched work fights over the cores: per request a dense layer, per batch an all-pairs mixing step
whose cost grows with the square of the batch, computed by NumPy on every core it can find."""

import numpy as np
import triton_python_backend_utils as pb_utils

WIDTH = 512


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        rng = np.random.default_rng(0)
        self.dense = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.sqrt(WIDTH)
        self.mix = rng.standard_normal((WIDTH * 8, WIDTH), dtype=np.float32) / np.sqrt(WIDTH)
        self.out = rng.standard_normal((WIDTH, 16), dtype=np.float32) / np.sqrt(WIDTH)

    def execute(self, requests: list) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        sizes = [len(x) for x in inputs]
        x = np.maximum(np.concatenate(inputs) @ self.dense, 0.0)
        for _ in range(len(x)):  # the all-pairs step: work for every pair of requests in the batch
            wide = np.tanh(x @ self.mix.T)
            x = x + 0.01 * (wide @ self.mix) / len(x)
        outputs = np.split(x @ self.out, np.cumsum(sizes)[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out.astype(np.float32))]) for out in outputs]
