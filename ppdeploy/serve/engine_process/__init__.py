"""A model instance's engine in its own process, so engine calls never wait on an HTTP process's GIL.

`load_model_in_process(source, backend=..., **load_model_kwargs)` starts a private child that runs
`ppdeploy.deploy.load.load_model` as the server would in-process; `SharedEngine.start(...)` starts one that any
number of HTTP worker processes reach with `connect_engine(address, label=...)`, and merges their concurrent
calls into one engine call. Both give an `EngineProcessDeployment` whose `.runner` validates in the caller and
runs the engine in the child. Tensors travel in shared-memory arenas, never through the socket; only small
framed JSON control messages do (nothing is unpickled). A shared engine listens in a private 0700 run directory
and refuses peers of another uid (SO_PEERCRED). Off by default (`engine_process: true` in a config, or `ppdeploy serve --engine-process`).

Modules: protocol (framing, message checks), arena (memfd arenas), errors (error transport), client (the caller's runner),
supervisor (starting and restarting engine processes), child (the child's loop), merge (the merge scheduler).
"""
from ppdeploy.serve.engine_process.client import (
                                                  EngineProcessDeployment,
                                                  EngineProcessRunner,
                                                  connect_engine,
                                                  load_model_in_process,
)
from ppdeploy.serve.engine_process.errors import (
                                                  EngineProcessDied,
                                                  EngineProcessUnreachable,
)
from ppdeploy.serve.engine_process.supervisor import SharedEngine, child_env, exit_text

__all__ = ["EngineProcessDeployment", "EngineProcessDied", "EngineProcessRunner", "EngineProcessUnreachable",
           "SharedEngine", "child_env", "connect_engine", "exit_text", "load_model_in_process"]
