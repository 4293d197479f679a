"""Real OTLP receivers for the tests: HTTP/protobuf and gRPC servers on loopback.

They decode what the SDK's exporters send with opentelemetry-proto, exactly as a
collector would, and keep each request with its headers for assertions.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_REQUEST_TYPES = {
    "traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse),
    "logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse),
}


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class Export:
    signal: str
    headers: dict[str, str]
    request: Any


@dataclass
class ReceivedSpan:
    name: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    trace_id: str
    status_code: int


@dataclass
class ReceivedLog:
    event_name: str
    body: Any
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class ReceivedPoint:
    metric: str
    value: float
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class Receiver:
    """What a receiver got; shared by the HTTP and gRPC flavours."""

    exports: list[Export] = field(default_factory=list)
    status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Requests for a signal this receiver does not serve (a traces-only backend), per signal (HTTP only).
    refused: Counter[str] = field(default_factory=Counter)
    #: HTTP: a body larger than this is answered 413, as a proxy or collector with a body limit does.
    max_body: int | None = None
    #: HTTP: answer every request with this redirect (status, Location) instead of taking it.
    redirect: tuple[int, str] | None = None
    #: Requests refused as too large (HTTP 413 here; gRPC's own limit answers RESOURCE_EXHAUSTED before us).
    too_large: int = 0

    def record(self, signal: str, headers: dict[str, str], request: Any) -> None:
        with self.lock:
            self.exports.append(Export(signal, {k.lower(): v for k, v in headers.items()}, request))

    def of(self, signal: str) -> list[Export]:
        with self.lock:
            return [e for e in self.exports if e.signal == signal]

    def spans(self) -> list[ReceivedSpan]:
        out = []
        for export in self.of("traces"):
            for rs in export.request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append(
                            ReceivedSpan(span.name, attributes(span.attributes), resource, span.trace_id.hex(), span.status.code)
                        )
        return out

    def logs(self) -> list[ReceivedLog]:
        out = []
        for export in self.of("logs"):
            for rl in export.request.resource_logs:
                resource = attributes(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        body = any_value(record.body)
                        attrs = attributes(record.attributes)
                        # opentelemetry-proto before 1.35 has no event_name: that era's SDKs sent the attribute
                        event_name = getattr(record, "event_name", "") or attrs.get("event.name", "")
                        out.append(ReceivedLog(event_name, body, attrs, resource))
        return out

    def points(self) -> list[ReceivedPoint]:
        out = []
        for export in self.of("metrics"):
            for rm in export.request.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        data = metric.WhichOneof("data")
                        for point in getattr(metric, data).data_points:
                            if data in ("histogram", "exponential_histogram", "summary"):
                                value = point.sum
                            else:
                                value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
                            out.append(ReceivedPoint(metric.name, value, attributes(point.attributes), resource))
        return out

    def wait_for(self, predicate: Callable[[Receiver], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate(self)
            if result:
                return result
            time.sleep(0.05)
        raise AssertionError(f"receiver did not get what was expected within {timeout}s; got {len(self.exports)} exports")


class HttpReceiver(Receiver):
    """OTLP/HTTP (protobuf) on ``/v1/traces``, ``/v1/metrics``, ``/v1/logs``; other ``signals`` get ``refuse_status``."""

    def __init__(self, signals: Iterable[str] = tuple(_REQUEST_TYPES), refuse_status: int = 404) -> None:
        super().__init__()
        receiver = self
        served = set(signals)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                signal = self.path.rstrip("/").rsplit("/", 1)[-1]
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                wire_size = len(body)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if receiver.redirect is not None:
                    self.send_response(receiver.redirect[0])
                    self.send_header("Location", receiver.redirect[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if receiver.max_body is not None and wire_size > receiver.max_body:
                    with receiver.lock:
                        receiver.too_large += 1
                    self.send_response(413)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if signal not in served:
                    with receiver.lock:
                        receiver.refused[signal] += 1
                    self.send_response(refuse_status if signal in _REQUEST_TYPES else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request_type, response_type = _REQUEST_TYPES[signal]
                request = request_type()
                request.ParseFromString(body)
                receiver.record(signal, dict(self.headers.items()), request)
                payload = response_type().SerializeToString()
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcReceiver(Receiver):
    """OTLP/gRPC: the collector's three services (or only ``signals``) on one insecure port.

    A service left out is unknown to the server, which answers UNIMPLEMENTED, as a traces-only backend does.
    """

    def __init__(self, signals: Iterable[str] = tuple(_REQUEST_TYPES), max_message: int | None = None) -> None:
        """``max_message``: gRPC's own receive limit (``grpc.max_receive_message_length``; its default is 4 MiB)."""
        super().__init__()
        receiver = self
        served = set(signals)

        def servicer(signal: str, base: type, method: str) -> Any:
            _, response_type = _REQUEST_TYPES[signal]

            def export(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
                receiver.record(signal, dict(context.invocation_metadata()), request)
                return response_type()

            return type(f"{signal}Servicer", (base,), {method: export})()

        options = [] if max_message is None else [("grpc.max_receive_message_length", max_message)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
        if "traces" in served:
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
                servicer("traces", trace_service_pb2_grpc.TraceServiceServicer, "Export"), self.server
            )
        if "metrics" in served:
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
                servicer("metrics", metrics_service_pb2_grpc.MetricsServiceServicer, "Export"), self.server
            )
        if "logs" in served:
            logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
                servicer("logs", logs_service_pb2_grpc.LogsServiceServicer, "Export"), self.server
            )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)


def serve(kind: str, signals: Iterable[str] = tuple(_REQUEST_TYPES), refuse_status: int = 404) -> Iterator[Receiver]:
    receiver: HttpReceiver | GrpcReceiver = HttpReceiver(signals, refuse_status) if kind == "http" else GrpcReceiver(signals)
    try:
        yield receiver
    finally:
        receiver.close()
