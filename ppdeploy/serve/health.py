"""Client side of readiness: wait until a server answers 200 on /v2/health/ready.

Shared by everything that starts a server and must not use it before its models are loaded (the benchmark's
server subprocess, the Ray Serve launcher, load-test scripts).
"""
from __future__ import annotations

import time
from typing import Callable


def wait_until_ready(url: str, timeout_s: float, *, check_alive: Callable[[], None] | None = None,
                     poll_s: float = 0.5) -> bool:
    """Poll `url`/v2/health/ready until it answers 200 (True) or `timeout_s` passes (False).

    `check_alive` runs before every poll and should raise when the server can no longer become ready (its process
    exited), so a crash is reported at once instead of after the whole timeout."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check_alive is not None:
            check_alive()
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:  # not listening yet, or mid-restart: keep polling
            pass
        time.sleep(poll_s)
    return False
