"""Opt-in OpenTelemetry tracing, as etcd 3.5 offers it (--experimental-enable-distributed-tracing).

Off (the default) nothing here is imported and no layer is added: the request path is exactly
what it is without this module. On, there is one span per RPC (SERVER kind, named
`etcdserverpb.KV/Range`, with rpc.* attributes and the gRPC status code; a W3C `traceparent`
in the request metadata makes it a child of the caller's span) and one span per synced batch
write ("backend commit", with the number of storage writes), exported over OTLP/gRPC. Sampling
is etcd's: parent-based, and N per million of our own root spans (0: none).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from metastore_core import errors
from metastore_core.config import SAMPLES_PER_MILLION, Config
from metastore_core.server.methods import Behaviour, Call, Layer, MethodInfo
from metastore_core.server.status import Code, code_of

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("metastore.tracing")
INSTALL_HINT = "tracing needs the tracing extra: pip install 'metastore[tracing]'"


def _metadata_getter() -> Any:
    """The propagator's view of a call's metadata (the `traceparent` and `baggage` keys)."""
    from opentelemetry.propagators.textmap import Getter

    class Metadata(Getter[Call]):
        def get(self, carrier: Call, key: str) -> list[str] | None:
            value = carrier.metadata(key)
            return None if value is None else [value]

        def keys(self, carrier: Call) -> list[str]:
            return []

    return Metadata()


class Tracing:
    """A tracer provider and the layer and commit hook that feed it."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        self.provider = provider
        self.tracer = provider.get_tracer("metastore")
        self._extract = propagate.extract
        self._server, self._status, self._error = SpanKind.SERVER, Status, StatusCode.ERROR
        self._getter = _metadata_getter()
        self._attach, self._detach, self._in_context = context.attach, context.detach, set_span_in_context

    @classmethod
    def from_config(cls, config: Config, exporter: SpanExporter | None = None) -> Tracing | None:
        """None when tracing is off; else a provider exporting to exporter (tests), or over OTLP."""
        if not config.experimental_enable_distributed_tracing:
            return None
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
        except ImportError:
            raise ValueError(INSTALL_HINT) from None
        attrs = {"service.name": config.experimental_distributed_tracing_service_name}
        if config.experimental_distributed_tracing_instance_id:
            attrs["service.instance.id"] = config.experimental_distributed_tracing_instance_id
        rate = config.experimental_distributed_tracing_sampling_rate
        root = TraceIdRatioBased(rate / SAMPLES_PER_MILLION) if rate else ALWAYS_OFF
        provider = TracerProvider(resource=Resource.create(attrs), sampler=ParentBased(root))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ValueError(INSTALL_HINT) from None
            address = config.experimental_distributed_tracing_address
            # a short export timeout: an unreachable collector must not hold up a graceful stop
            otlp = OTLPSpanExporter(endpoint=address, insecure=True, timeout=2)
            provider.add_span_processor(BatchSpanProcessor(otlp, export_timeout_millis=2000))
        log.info("distributed tracing on", extra={"address": config.experimental_distributed_tracing_address})
        return cls(provider)

    # ------------------------------------------------------------------ spans
    def _start(self, info: MethodInfo, call: Call) -> Any:
        return self.tracer.start_span(
            f"{info.service}/{info.name}",
            context=self._extract(call, getter=self._getter),
            kind=self._server,
            attributes={"rpc.system": "grpc", "rpc.service": info.service, "rpc.method": info.name},
        )

    def _end(self, span: Any, exc: BaseException | None) -> None:
        code = Code.OK
        if isinstance(exc, errors.MetastoreError):
            code = code_of(exc)
        elif exc is not None:
            code = Code.CANCELLED if not isinstance(exc, Exception) else Code.INTERNAL
        span.set_attribute("rpc.grpc.status_code", int(code))
        if code != Code.OK:
            span.set_status(self._status(self._error, str(exc) or code.name))
        span.end()

    def layer(self) -> Layer:
        """The outermost layer: a span around everything else a call goes through."""

        def wrap(info: MethodInfo, fn: Behaviour) -> Behaviour:
            if not info.server_streaming:

                async def unary(request: Any, call: Call) -> Any:
                    span = self._start(info, call)
                    # current for the call's task: a batch written inline is this call's child
                    token = self._attach(self._in_context(span))
                    try:
                        result = await fn(request, call)
                    except BaseException as exc:
                        self._end(span, exc)
                        raise
                    finally:
                        self._detach(token)
                    self._end(span, None)
                    return result

                return unary

            async def streaming(request: Any, call: Call) -> AsyncIterator[Any]:
                span = self._start(info, call)
                try:
                    async with aclosing(fn(request, call)) as items:
                        async for item in items:
                            yield item
                except BaseException as exc:
                    self._end(span, exc)
                    raise
                self._end(span, None)

            return streaming

        return wrap

    def commit(self, start: float, end: float, entries: int) -> None:
        """A span for one synced batch write (monotonic start and end), on the writing thread: the
        writer thread's spans are roots; one written inline is the current call's child."""
        now_ns = time.time_ns()
        began = now_ns - int((end - start) * 1e9) - int((time.monotonic() - end) * 1e9)
        span = self.tracer.start_span("backend commit", start_time=began, attributes={"entries": entries})
        span.end(end_time=began + int((end - start) * 1e9))

    def shutdown(self) -> None:
        """Export what is buffered, then stop (shutdown's close-resources phase)."""
        self.provider.shutdown()
