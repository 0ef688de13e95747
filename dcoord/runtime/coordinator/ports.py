"""Is a port free to listen on? Asked before anything of a job is made (run directory, server, workers), so
a taken port fails with one line and nothing to undo: the gRPC port (host.py), the health port and the
metrics endpoint all ask here."""

from __future__ import annotations

import errno
import socket


def bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now (a plain socket, as gRPC binds it), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return None  # not resolvable here: the server's own bind reports it
    family, _, _, _, addr = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            s.bind(addr)
    except OSError as exc:
        return {errno.EADDRINUSE: f"port {port} is already in use (another coordinator, or another program)",
                errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
                errno.EACCES: f"port {port} needs privileges"}.get(exc.errno, exc.strerror or str(exc))
    return None
