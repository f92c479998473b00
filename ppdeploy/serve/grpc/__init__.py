"""The KServe v2 / Triton gRPC protocol (`GRPCInferenceService`) beside the HTTP app, on the same `ModelHost`.

  codec    ModelInferRequest/Response <-> numpy (raw and typed contents, shared-memory inputs and outputs)
  service  the servicer: health, metadata, config, infer, repository index, statistics, system shared memory
  server   start_grpc_server(host, metrics, settings, port) and stop(server, grace_s)

grpc and the protobuf modules (shipped in tritonclient[grpc]) load on first use.
"""
from ppdeploy.serve.grpc.server import start_grpc_server, stop

__all__ = ["start_grpc_server", "stop"]
