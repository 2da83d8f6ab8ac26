"""The ASGI app (Starlette) of `slimbert serve` and the uvicorn server that runs it.

Routes, as TF Serving's REST API has them (`<name>` is the served model's name, `<v>` its
version; the model name in a URL is only compared with it, never used as a path):

    GET  /v1/models/<name>[/versions/<v>]              status
    GET  /v1/models/<name>[/versions/<v>]/metadata     signatures
    POST /v1/models/<name>[/versions/<v>]:predict      see serve.rest
    POST /v1/models/<name>[/versions/<v>]:classify
    GET  /healthz                                      200 serving, 503 shutting down

`serve` also runs TF Serving's gRPC API (serve.grpc_api) on `grpc_port`, in the same
event loop over the same batchers; it starts once they run and stops before they close.

Errors are `{"error": message}`: 400 bad request, 404 unknown model, version or path, 405
wrong method, 408 body not all received `read_timeout` seconds after the headers (the
connection is then closed), 413 body over `max_body_bytes` (refused from its
Content-Length, or as soon as a chunked body passes it), 500 a bug, 503 shutting down.

Example:
    >>> app = create_app("runs/default/export", backend="cpu")
    >>> serve(app, "127.0.0.1", 8501, grpc_port=8500)  # until SIGINT/SIGTERM; in-flight
    ...                                                 # requests and calls finish
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import SlimbertError
from serve.batcher import Batcher, ShuttingDown
from serve.model import TEXT_SIGNATURE, ServedModel
from serve.rest import (
    ApiError,
    Limits,
    classify_response,
    parse_classify,
    parse_json,
    parse_predict,
    predict_response,
)

if TYPE_CHECKING:
    from serve.grpc_api import GrpcServer

log = logging.getLogger(__name__)

# TF Serving's URL patterns (after /v1/models/): a name has no "/" or ":".
_VERB_URL = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                       r":(?P<verb>predict|classify|regress)")
_STATUS_URL = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                         r"(?P<metadata>/metadata)?")
GRACEFUL_SHUTDOWN_SECONDS = 30  # most time in-flight requests get after SIGTERM


class ModelApi:
    """The endpoints over one served model, with a batcher per signature.

    Args:
        model: the loaded model.
        name: the model name clients use in URLs.
        max_batch, batch_wait_ms: see `serve.batcher.Batcher`.
        max_instances: most instances per request.
    """

    def __init__(self, model: ServedModel, name: str, max_batch: int, batch_wait_ms: float,
                 max_instances: int) -> None:
        self.model = model
        self.name = name
        self.version = model.target.version
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.limits = Limits(model.signatures, max_instances, model.target.max_seq_length,
                             model.vocab_size)
        self.closing = False  # set when a signal starts the shutdown
        self.batchers: dict[str, Batcher] = {}
        self.grpc: GrpcServer | None = None  # bound by `serve` when it runs gRPC too

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Batchers for the server's life; at shutdown they finish what is queued."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimbert-model") as pool:
            self.batchers = {
                signature: Batcher(functools.partial(self.model.run, signature,
                                                     batch_size=self.max_batch),
                                   self.max_batch, self.batch_wait_ms / 1000, pool)
                for signature in self.model.signatures}
            for batcher in self.batchers.values():
                batcher.start()
            if self.grpc is not None:
                await self.grpc.start()
            yield
            self.closing = True
            if self.grpc is not None:  # its in-flight calls still need the batchers
                await self.grpc.stop(GRACEFUL_SHUTDOWN_SECONDS)
            await asyncio.gather(*(b.close() for b in self.batchers.values()))

    # --- endpoints ---

    async def health(self, request: Request) -> JSONResponse:
        if self.closing:
            raise ApiError(503, "the server is shutting down")
        target = self.model.target
        return JSONResponse({
            "status": "ok", "model": self.name, "version": str(self.version),
            "backend": target.target, "path": str(target.path), "verified": target.passed,
            "runtime": self.model.predictor.runtime, "max_batch": self.max_batch,
            "batch_wait_ms": self.batch_wait_ms,
            "batches": {signature: {"batches": b.batches, "instances": b.instances,
                                    "waiting": b.waiting}
                        for signature, b in self.batchers.items()}})

    async def models(self, request: Request) -> JSONResponse:
        """Everything under /v1/models/, dispatched like TF Serving's REST handler."""
        rest = request.path_params["path"]
        if match := _VERB_URL.fullmatch(rest):
            self._check_route(request, "POST", match["name"], match["version"])
            return await self._verb(request, match["verb"])
        if match := _STATUS_URL.fullmatch(rest):
            self._check_route(request, "GET", match["name"], match["version"])
            return JSONResponse(self._metadata() if match["metadata"] else self._status())
        raise ApiError(404, f"Malformed request: {request.method} /v1/models/{rest}")

    def _check_route(self, request: Request, method: str, name: str,
                     version: str | None) -> None:
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            raise ApiError(405, f"{request.method} is not allowed here; use {method}",
                           {"Allow": method})
        if name != self.name or (version is not None and int(version) != self.version):
            spec = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise ApiError(404, f"Servable not found for request: {spec}")

    def _status(self) -> dict:
        return {"model_version_status": [{
            "version": str(self.version), "state": "UNLOADING" if self.closing else "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}

    def _metadata(self) -> dict:
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": str(self.version)},
                "metadata": {"signature_def": {
                    "signature_def": self.model.signature_defs()}}}

    async def _verb(self, request: Request, verb: str) -> JSONResponse:
        if verb == "regress":
            raise ApiError(400, f"model {self.name} is a classifier: it has no regression "
                                "signature (use :predict or :classify)")
        payload = parse_json(await request.body())
        if verb == "classify":
            texts = parse_classify(payload, self.limits)
            return JSONResponse(classify_response(await self._run(TEXT_SIGNATURE, texts),
                                                  self.model.labels))
        parsed = parse_predict(payload, self.limits)
        probabilities = await self._run(parsed.signature, parsed.instances)
        return JSONResponse(predict_response(parsed, probabilities, self.model.labels))

    async def _run(self, signature: str, instances: list) -> np.ndarray:
        try:
            return await self.batchers[signature].submit(instances)
        except ShuttingDown as err:
            raise ApiError(503, str(err)) from None
        except Exception as err:
            # The model failed on this request alone (the batcher reran its batch request by
            # request): a 500 answered here, not by Starlette's last-resort handler, which
            # would also drop the client's keep-alive connection.
            log.error("the model failed on a request of %d instances", len(instances),
                      exc_info=err)
            raise ApiError(500, f"the model failed on this request: {type(err).__name__}: "
                                f"{err}") from None


def _error(status: int, message: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    # A message may quote the request (a signature name, say) and so hold a lone surrogate,
    # which UTF-8 cannot encode: it is written as its \uXXXX text instead of failing the
    # error response itself.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message}, status, headers=headers)


def _error_response(exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, without reading it all:
    at once if Content-Length says so, else (chunked bodies) as soon as the bytes
    received pass it.

    (Starlette's own `max_body_size` answers a too-large Content-Length in plain text.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is larger than {self.max_bytes} bytes (the "
                             "server's --max-body-bytes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _error_response(self._too_large())(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()  # inside the endpoint: answered by its handler
            return message

        await self.app(scope, counted, send)


class ReadTimeout:
    """ASGI middleware: 408, and the connection closed, for a request whose body has not
    all arrived `seconds` after its headers: a client that stops sending mid-body (or
    trickles it) would otherwise hold its connection and request for as long as it likes.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        complete = False

        async def timed() -> Message:
            nonlocal complete
            if complete:  # the body is in: later receives only wait for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise ApiError(  # inside the endpoint: answered by its handler
                    408, f"the request body did not arrive within {self.seconds:g} s (the "
                         "server's --read-timeout)", {"Connection": "close"}) from None
            complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        await self.app(scope, timed, send)


def create_app(export_dir: str | Path, backend: str = "savedmodel", name: str | None = None,
               max_batch: int = 32, batch_wait_ms: float = 0.0,
               max_body_bytes: int = 1 << 20, max_instances: int = 256, force: bool = False,
               threads: int | None = None, read_timeout: float = 30.0) -> Starlette:
    """The server's app: loads `backend` of `export_dir` (checked against the export gate
    unless `force`) and warms it up.

    Args:
        export_dir: `<run-dir>/export`.
        backend: `savedmodel`, `savedmodel-ids` or a TFLite target (`cpu`, `gpu`, `int8`,
            `qat`, `pruned-qat`, `student-cpu`, `student-gpu`, `student-int8`,
            `student-qat`, `text`).
        name: the model name in URLs (default: the export's `export.name`).
        max_batch: most instances per model batch (1: no batching).
        batch_wait_ms: how long a request waits for others to batch with (0: batches
            form only from requests that arrive while the model is busy).
        max_body_bytes: larger request bodies get 413.
        max_instances: most instances per request.
        force: serve a target that failed the export gate.
        threads: TFLite interpreter threads (None: the runtime's default).
        read_timeout: seconds a request's body may take to arrive after its headers;
            then it gets 408 and its connection is closed.

    Raises:
        SlimbertError: not an export, backend not exported, failed the gate, or
            `read_timeout` is not positive.
    """
    if not read_timeout > 0:
        raise SlimbertError(f"--read-timeout must be more than 0 seconds, found {read_timeout}")
    model = ServedModel.load(Path(export_dir), backend, force=force, num_threads=threads)
    model.warm_up()
    api = ModelApi(model, name or model.target.name, max_batch, batch_wait_ms, max_instances)
    routes = [Route("/healthz", api.health, methods=["GET"]),
              Route("/v1/models/{path:path}", api.models, methods=["GET", "POST"])]
    app = Starlette(routes=routes, lifespan=api.lifespan,
                    middleware=[Middleware(BodyLimit, max_bytes=max_body_bytes),
                                Middleware(ReadTimeout, seconds=read_timeout)],
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error,
                                        Exception: _internal_error})
    app.state.api = api
    app.state.max_body_bytes = max_body_bytes
    return app


# --- running it ---

class _Server(uvicorn.Server):
    """uvicorn's server, telling the API when a signal starts the graceful shutdown, and
    binding the gRPC port in its event loop before the app starts."""

    def __init__(self, config: uvicorn.Config, api: ModelApi) -> None:
        super().__init__(config)
        self.api = api

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if self.api.grpc is not None:
            self.api.grpc.bind()  # a port in use fails here, before the model is served
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.api.closing:
            log.info("%s: finishing in-flight requests, then stopping",
                     signal.Signals(sig).name)
        self.api.closing = True
        if self.api.grpc is not None:  # no new calls from now on, as no new connections
            self.api.grpc.stop_soon(GRACEFUL_SHUTDOWN_SECONDS)
        super().handle_exit(sig, frame)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections of
        # a socket that says it is TCP; without it, Nagle's algorithm holds the body that
        # h11 writes after the headers until the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        raise SlimbertError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


@contextmanager
def _signals_handled() -> Iterator[None]:
    """uvicorn re-raises the signal that stopped it once it is done; with the default
    handlers that would kill the process (SIGTERM) or raise KeyboardInterrupt (SIGINT)
    after a clean shutdown. Absorb that replay, so a graceful stop exits 0."""
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 8501, grpc_port: int = 0,
          access_log: bool = False) -> None:
    """Serve `app` on host:port, and TF Serving's gRPC API on host:grpc_port (0: none),
    until SIGINT or SIGTERM, then stop taking connections and calls, let in-flight
    requests and calls finish (at most `GRACEFUL_SHUTDOWN_SECONDS`) and return.

    Raises:
        SlimbertError: an address cannot be bound.
    """
    api: ModelApi = app.state.api
    sock = _listen(host, port)
    if grpc_port:
        from serve.grpc_api import GrpcServer

        api.grpc = GrpcServer(api, host, grpc_port, app.state.max_body_bytes)
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_config=None,
                            access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    target = api.model.target
    log.info("serving %s version %d (%s, %s) on http://%s:%d/v1/models/%s", api.name,
             api.version, target.target, target.path, host, config.port, api.name)
    with _signals_handled():
        _Server(config, api).run(sockets=[sock])


__all__ = ["ModelApi", "create_app", "serve"]
