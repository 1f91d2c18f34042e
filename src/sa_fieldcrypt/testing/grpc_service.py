"""What the in-process fakes of Google services share: a real gRPC server on 127.0.0.1.

:class:`LocalGrpcService` serves one service's methods, records every call, injects
failures, survives a stop and start on the same port (an outage), and hands out channels
that the real Google clients talk through. The Secret Manager fake
(:mod:`~sa_fieldcrypt.testing.secret_manager`) and the Cloud KMS fake
(:mod:`~sa_fieldcrypt.testing.kms`) are built on it. Needs the ``gcp`` extra.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any, Self

try:
    import grpc
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "the fakes of Google services need the gcp extra: pip install 'sa-fieldcrypt[gcp]'"
    ) from exc

__all__ = ["FakeStatusError", "LocalGrpcService", "Method"]

#: One method of a service: what it does with a request, the request type (a proto-plus
#: message class) and how a response is serialized.
Method = tuple[Callable[[Any], Any], Any, Callable[[Any], bytes]]

# Each client gets its own connection (gRPC otherwise shares one per target, and with it a
# reconnect backoff left by an earlier outage), and reconnects quickly after a restart.
_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class FakeStatusError(Exception):
    """A call to a fake failed with a gRPC status (the helpers raise it directly).

    Attributes:
        code: the gRPC status code the service answers with.
        details: the status message.
    """

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class LocalGrpcService:
    """A gRPC service served in process on 127.0.0.1; subclasses say what it does.

    A subclass sets :attr:`service` (the full gRPC service name) and implements
    :meth:`methods`; its methods raise :class:`FakeStatusError` to answer with a status.
    Every call runs under :attr:`lock` (a reentrant lock), so the state is thread-safe.
    Use it as a context manager, or call :meth:`start` and :meth:`close`.
    """

    #: The gRPC service name, e.g. ``"google.cloud.kms.v1.KeyManagementService"``.
    service = ""

    def __init__(self) -> None:
        #: Every method called over gRPC, in order, e.g. ``"Decrypt"``.
        self.calls: list[str] = []
        #: Held while a call runs or the state is set up; reentrant.
        self.lock = threading.RLock()
        self._faults: dict[str, list[tuple[grpc.StatusCode, str]]] = {}
        self._delays: dict[str, list[float]] = {}
        self._server: grpc.Server | None = None
        self._port = 0
        self._channels: list[grpc.Channel] = []

    def methods(self) -> Mapping[str, Method]:
        """The service's methods by name: what each does, its request type, its serializer."""
        raise NotImplementedError

    def start(self) -> Self:
        """Serve on 127.0.0.1 (a free port the first time, the same port after a stop)."""
        with self.lock:
            if self._server is not None:
                return self
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            server.add_generic_rpc_handlers((self._handler(),))
            port = server.add_insecure_port(f"127.0.0.1:{self._port}")
            if port == 0:
                raise RuntimeError(
                    f"{type(self).__name__}: cannot listen on 127.0.0.1:{self._port}"
                )
            server.start()
            self._server, self._port = server, port
            return self

    def stop(self) -> None:
        """Stop serving, as in an outage; the state is kept for a later :meth:`start`."""
        with self.lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait()

    def close(self) -> None:
        """Close the channels of every client made by :meth:`channel`, and stop serving."""
        with self.lock:
            channels, self._channels = self._channels, []
        # Channels first: a server that stops under open channels makes gRPC log a GOAWAY.
        for channel in channels:
            channel.close()
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def target(self) -> str:
        """The ``host:port`` the fake serves on."""
        if not self._port:
            raise RuntimeError(f"{type(self).__name__}: not started")
        return f"127.0.0.1:{self._port}"

    def channel(self) -> grpc.Channel:
        """Return a new insecure channel to the fake, closed by :meth:`close`."""
        channel = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        with self.lock:
            self._channels.append(channel)
        return channel

    def fail_next(
        self, method: str, code: grpc.StatusCode, *, times: int = 1, details: str = "injected"
    ) -> None:
        """Make the next ``times`` calls of ``method`` (e.g. ``"Decrypt"``) fail with ``code``."""
        with self.lock:
            self._faults.setdefault(method, []).extend([(code, details)] * times)

    def delay_next(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` answer ``seconds`` late, as a slow service.

        The call waits before it is served (without holding the fake's lock), so a client
        deadline shorter than the delay ends it with DEADLINE_EXCEEDED.
        """
        with self.lock:
            self._delays.setdefault(method, []).extend([float(seconds)] * times)

    def call_count(self, method: str) -> int:
        """How many times ``method`` was called over gRPC."""
        with self.lock:
            return self.calls.count(method)

    def _handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._serve(name, behaviour),
                request_deserializer=request_type.deserialize,
                response_serializer=serialize,
            )
            for name, (behaviour, request_type, serialize) in self.methods().items()
        }
        return grpc.method_handlers_generic_handler(self.service, handlers)

    def _serve(
        self, method: str, behaviour: Callable[[Any], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            with self.lock:
                delays = self._delays.get(method)
                delay = delays.pop(0) if delays else 0.0
            if delay:
                time.sleep(delay)
            with self.lock:
                self.calls.append(method)
                faults = self._faults.get(method)
                fault = faults.pop(0) if faults else None
                if fault is None:
                    try:
                        return behaviour(request)
                    except FakeStatusError as exc:
                        fault = (exc.code, exc.details)
            context.abort(*fault)
            raise AssertionError("unreachable: abort raises")  # pragma: no cover

        return serve
