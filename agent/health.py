"""The agent's health endpoints (`--health-listen`): `/healthz` (the process serves) and `/readyz` (it may get traffic).

`/healthz` is 200 `ok` whenever the event loop answers: a livenessProbe. `/readyz` is 200 `Ready` once the agent
can serve its node — its own servers listen, the local source delivered its initial state, and the initial peer
configuration was read — and 500 `NotReady` before: a readinessProbe. It deliberately ignores whether peers are
connected or synced: a peer that is down must not take the agent's DNS endpoint off its node, since the agent
keeps answering from last-known state and from the other peers (that condition is what status, metrics and the
gRPC health service report). main.py decides what "ready" covers; this module only serves the answer.
"""

from __future__ import annotations

from collections.abc import Callable

from clustermesh import http_server


def routes(ready: Callable[[], bool]) -> dict[str, http_server.Route]:
    """The health routes; `ready()` is called at every `/readyz` request, in the event loop."""

    def readyz() -> http_server.Response:
        if ready():
            return http_server.Response(200, b"Ready")
        return http_server.Response(500, b"NotReady")

    def healthz() -> http_server.Response:
        return http_server.Response(200, b"ok")

    return {"/readyz": readyz, "/healthz": healthz}
