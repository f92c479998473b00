"""The Ray driver of test_ray_serve.py, run as its own process.

Why a separate process: a Ray driver keeps gRPC threads (and, once it has called a deployment handle, Serve's
router event loop) alive after `serve.shutdown()` and `ray.shutdown()`. At interpreter exit they sometimes crash
CPython: CI saw pytest print "342 passed" and then die of SIGSEGV. Keeping the driver out of the pytest process
keeps that crash out of the suite's exit status, and the exit status of this process is checked on its own.

Protocol (one JSON object per line on stdout after PREFIX, since Ray prints there too; commands on stdin):
  start      -> {"url", "replica_states", "rec_pids", "driver_pid"} once every model answers
  "serve-shutdown\n" -> {"serve_stopped": true}
  EOF        -> ray.shutdown(), then {"ray_initialized": bool}, exit 0
"""
from __future__ import annotations

import json
import os
import sys

PREFIX = "ppdeploy-driver: "


def emit(obj: dict) -> None:
    print(PREFIX + json.dumps(obj), flush=True)


def main(port: int, app: str) -> None:
    import ray
    from ray import serve

    sys.path.insert(0, os.path.dirname(__file__))
    from test_ray_serve import configs  # the one list of models the tests check against

    from ppdeploy.serve import ray as ppray
    from ppdeploy.serve.http import ServerSettings

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PPDEPLOY_CACHE": os.environ["PPDEPLOY_CACHE"]}})
    options = ppray.RayOptions(replicas=2, num_cpus_per_replica=0.25, gateway_num_cpus=0.25)
    url = ppray.start(configs(), options, ServerSettings(host="127.0.0.1", port=port), app_name=app, timeout_s=300)
    status = serve.status().applications[app]
    states = {model: status.deployments[ppray.deployment_name(model)].replica_states for model in ("det", "rec")}
    handle = serve.get_deployment_handle(ppray.deployment_name("rec"), app_name=app)
    pids = sorted({handle.describe.remote().result()["pid"] for _ in range(24)})
    emit({"url": url, "replica_states": states, "rec_pids": pids, "driver_pid": os.getpid()})
    for line in sys.stdin:
        if line.strip() == "serve-shutdown":
            serve.shutdown()
            emit({"serve_stopped": True})
    ray.shutdown()
    emit({"ray_initialized": ray.is_initialized()})
    # Ray's leftover threads can crash a normal interpreter exit (see above); everything is shut down by now.
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
