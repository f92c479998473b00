"""`ppdeploy serve`: a dynamic-batching server speaking the KServe v2 / Triton HTTP protocol.

Modules, one job each (all importable without starting anything; heavy libraries load lazily):
  config   the model-repository schema: load_repository(dir) -> list[ModelConfig], ModelConfig.to_yaml()
  batcher  DynamicBatcher (asyncio, per model) and BatchedRunner (a synchronous Runner over a batcher)
  kserve   protocol codec: parse_infer_request / encode_infer_response, model metadata and config JSON
  metrics  ServerMetrics / ModelMetrics: Prometheus text (Triton names) and Triton statistics JSON
  models   ModelHost: loads configs into engines + batchers (load_engine) and task pipelines (build_task)
  app      build_app(configs, ServerSettings) -> the ASGI app (routes, API key, body limit, access log)
  server   serve(configs, settings): uvicorn with graceful SIGTERM drain
  loadtest open-loop Poisson load against a running server, and the two serving benchmarks
"""
