"""Serve a dashboard app with uvicorn on the caller's event loop, beside other servers.

The host process (``crest serve``, or a test) runs the gRPC server, the manager and this on
one loop, so uvicorn must neither own the loop nor the process's signals::

    server = DashboardServer(create_dashboard(manager, token), host, port)
    task = asyncio.create_task(server.serve())
    ...
    server.stop()          # from the loop or any thread
    await task
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

import uvicorn
from fastapi import FastAPI

from crest.service.dashboard.app import close_streams


class _GuestServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process that hosts it."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DashboardServer:
    """uvicorn on a socket bound at construction, so :attr:`port` is known at once.

    Args:
        app: from :func:`crest.service.dashboard.create_dashboard`.
        host: address to listen on.
        port: 0 picks a free port.
        grace_s: seconds that open responses may take after :meth:`stop` before they are
            cancelled.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, grace_s: int = 5
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self._socket = socket.create_server((host, port), family=family)
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the host process configures logging
            access_log=False,
            timeout_graceful_shutdown=grace_s,
        )
        self._server = _GuestServer(config)

    @property
    def started(self) -> bool:
        return self._server.started

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def browser_url(self) -> str:
        """The overview page as a person opens it: with ``?token=`` when the app requires one
        (the pages pass it on to their API and event-stream calls)."""
        token = getattr(self.app.state, "token", None)
        return f"{self.url}/" + (f"?{urlencode({'token': token})}" if token else "")

    async def serve(self) -> None:
        """Serve until :meth:`stop`; run it on the manager's event loop."""
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self._socket.close()

    def stop(self) -> None:
        """Ask the server to end its event streams and shut down (safe from any thread:
        both are flags that the loop polls)."""
        close_streams(self.app)
        self._server.should_exit = True
