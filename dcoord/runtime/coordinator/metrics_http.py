"""The metrics endpoint's HTTP server: prometheus_client's WSGI app, optionally behind a bearer token.

Why our own server and not ``prometheus_client.start_http_server``: that one cannot ask for credentials,
and the metrics name the job, its loss, its workers and what was refused. The token is compared in
constant time; a request without it gets 401 and no metric.
"""

from __future__ import annotations

import hmac
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


def _guarded(app, token: str):
    expected = f"Bearer {token}".encode()

    def guarded(environ, start_response):
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Bearer realm="dcoord metrics"')])
            return [b"dcoord metrics need 'Authorization: Bearer <token>'\n"]
        return app(environ, start_response)

    return guarded


def serve_registry(registry, host: str, port: int, token: str | None = None) -> WSGIServer:
    """Serve ``registry`` on ``host:port`` from a daemon thread (``token``: required bearer token)."""
    from prometheus_client import make_wsgi_app

    app = make_wsgi_app(registry)
    if token:
        app = _guarded(app, token)
    server = make_server(host.strip("[]"), port, app, _Server6 if ":" in host else _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="dcoord-metrics", daemon=True).start()
    return server
