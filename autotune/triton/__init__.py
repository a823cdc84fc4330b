"""The Triton server: model configurations through Triton's protobuf, one model on a running server, the embedded
``tritonserver`` process, and the gRPC clients that talk to it."""
