"""`ppdeploy serve`: a dynamic-batching server speaking the KServe v2 / Triton HTTP protocol.

Modules, one job each (all importable without starting anything; heavy libraries load lazily):
  kserve          protocol codec: parse_infer_request / encode_infer_response, model metadata and config JSON
  merge           run_merged: one runner call for several requests, split back, a failing request run alone
  batcher         DynamicBatcher (asyncio, per model) and BatchedRunner (a synchronous Runner over a batcher)
  metrics         ServerMetrics / ModelMetrics: Prometheus text (Triton names) and Triton statistics JSON
  models          ModelHost: loads configs into engines + batchers (load_engine) and task pipelines
  shm             Triton's system shared-memory extension (HTTP and gRPC)
  app             build_app(configs, ServerSettings) -> the ASGI app (routes, API key, body limit, access log)
  grpc            the KServe v2 / Triton gRPC protocol beside the HTTP app
  logs            configure_logging: the JSON access log and the server's log
  server          serve(configs, settings): uvicorn with graceful SIGTERM drain
  workers         --workers N: HTTP worker processes behind one port, their supervisor
  engine_process  a model instance's engine in its own process (private, or shared by the workers)
  health          wait_until_ready(url): poll a server's readiness
  ray             the same app on Ray Serve (optional extra)
The model configs come from ppdeploy.repository (schema: config, which to serve: resolve).
"""
