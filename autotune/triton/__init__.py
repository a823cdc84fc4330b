"""The Triton server: model configurations through Triton's protobuf, one model on a running server, and the
embedded ``tritonserver`` process."""
