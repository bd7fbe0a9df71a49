"""Health endpoints: `/readyz` (the initial sync is complete) and `/healthz` (the process serves).

As Cilium's apiserver answers them (reference §9.4): `/readyz` is 200 `Ready` once every kind's canary is
written and 500 `NotReady` before, and is what a readinessProbe should use; `/healthz` is 200 `ok` whenever
the event loop answers, for a livenessProbe.
"""

from __future__ import annotations

from apiserver import publisher as publisher_module
from clustermesh import http_server


def routes(publisher: publisher_module.Publisher) -> dict[str, http_server.Route]:
    """The health routes over one publisher."""

    def readyz() -> http_server.Response:
        if publisher.ready.is_set():
            return http_server.Response(200, b"Ready")
        return http_server.Response(500, b"NotReady")

    def healthz() -> http_server.Response:
        return http_server.Response(200, b"ok")

    return {"/readyz": readyz, "/healthz": healthz}
