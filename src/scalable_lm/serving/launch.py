"""``slm serve``'s process: the ASGI app under uvicorn until SIGTERM or Ctrl-C, with the two things uvicorn does not
do as a server in front of a model needs (both written here because uvicorn has no option for them):

- a clean return after the graceful shutdown (uvicorn re-raises the signal, so the process would die by SIGTERM);
- a connection that opens and never starts a request (or trickles its headers) is closed after ``read_timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from scalable_lm.serving.middleware import READ_TIMEOUT

MAX_CONNECTIONS = 1024  # --max-connections: more open connections/requests get 503 (uvicorn's limit_concurrency)
KEEP_ALIVE = 5  # --keep-alive: seconds an idle keep-alive connection stays open (uvicorn's default)


def serve_app(app, host: str, port: int, log_level: str = "info", max_connections: int = MAX_CONNECTIONS,
              keep_alive: int = KEEP_ALIVE, read_timeout: float = READ_TIMEOUT, graceful: float = 120) -> None:
    """Run ``app`` on ``host:port`` until SIGTERM or Ctrl-C: new connections are refused, in-flight requests finish
    (at most ``graceful`` seconds), then this returns normally. A second Ctrl-C forces the exit."""
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to a vLLM engine otherwise
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_protocol(read_timeout),
                            limit_concurrency=max_connections, timeout_keep_alive=keep_alive,
                            timeout_graceful_shutdown=int(graceful))
    _server_class()(config).run()


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def _protocol(read_timeout: float):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        # uvicorn times out an idle keep-alive connection only after a response, and any byte received stops
        # that timer: here a connection must have started a request within read_timeout of opening or of its
        # last response.
        def connection_made(self, transport):
            super().connection_made(transport)
            self._guard()

        def on_response_complete(self):
            super().on_response_complete()
            self._guard()

        def _guard(self):
            cycle = self.cycle

            def check():
                idle = self.cycle is cycle and (cycle is None or cycle.response_complete)
                if idle and not self.transport.is_closing():
                    self.transport.close()
            self.loop.call_later(read_timeout, check)

    return Protocol
