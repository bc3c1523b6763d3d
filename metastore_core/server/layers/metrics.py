"""Prometheus figures: request counts and latency by method and code, plus daemon gauges.

Counting happens on the event loop in plain integers (no locks, no label
lookups per call); a collector turns them into metric families only when
/metrics is scraped. Label values follow go-grpc-prometheus, which etcd's
dashboards and alerts match on: grpc_type in unary/client_stream/
server_stream/bidi_stream and grpc_code as Go names (OK, ResourceExhausted); calls that came
through the JSON gateway are counted in the same families as http_unary, http_server_stream and
http_bidi_stream, so etcd's error-rate alerts see them and its unary latency alerts do not.
Every method x code series exists from start-up, as etcd's InitializeMetrics
does, so rate() works before the first error.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from metastore_core.member.figures import Durations
from metastore_core.server.methods import MethodInfo
from metastore_core.server.status import GO_NAMES, Code

disable_created_metrics()

# prometheus DefBuckets, as go-grpc-prometheus uses for handling time.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def grpc_type(info: MethodInfo) -> str:
    """go-grpc-prometheus's type; calls through the JSON gateway get it with an `http_` prefix."""
    if info.client_streaming:
        kind = "bidi_stream" if info.server_streaming else "client_stream"
    else:
        kind = "server_stream" if info.server_streaming else "unary"
    return "http_" + kind if info.http else kind


class MethodMetrics:
    """Counters of one method; `done` is the only per-call work."""

    __slots__ = ("bucket_counts", "count", "handled", "info", "started", "sum", "type")

    def __init__(self, info: MethodInfo) -> None:
        self.info = info
        self.type = grpc_type(info)
        self.started = 0
        self.handled = [0] * len(GO_NAMES)
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def done(self, code: Code, seconds: float) -> None:
        self.handled[code] += 1
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1


class Traffic:
    """etcd_network_client_grpc_{sent,received}_bytes_total: message bytes on the client port,
    counted where grpc hands them to us (the (de)serializers in rpc.py)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0


@dataclass
class Gauge:
    """A figure read at scrape time: a gauge, a counter, or untyped (a name kept exactly as etcd
    spells it, where Prometheus' type would change it)."""

    name: str
    doc: str
    read: Callable[[], float]
    kind: str = "gauge"
    labels: dict[str, str] | None = None

    def family(self, value: float) -> Metric:
        if self.kind == "counter":  # the family drops _total, its sample gets it back
            counter = CounterMetricFamily(self.name.removesuffix("_total"), self.doc)
            counter.add_metric([], value)
            return counter
        if self.kind == "untyped":
            untyped = Metric(self.name, self.doc, "untyped")
            untyped.add_sample(self.name, {}, value)
            return untyped
        if self.labels:
            gauge = GaugeMetricFamily(self.name, self.doc, labels=list(self.labels))
            gauge.add_metric(list(self.labels.values()), value)
            return gauge
        return GaugeMetricFamily(self.name, self.doc, value=value)


Families = Callable[[], Iterable[Metric]]  # several series at once, built at scrape time


class RequestMetrics(Collector):
    """All per-method request metrics and the daemon's figures, as one collector."""

    def __init__(self) -> None:
        self.methods: list[MethodMetrics] = []
        self.gauges: list[Gauge] = []
        self.histograms: list[tuple[str, str, Durations]] = []
        self.families: list[Families] = []
        self.traffic = Traffic()

    def method(self, info: MethodInfo) -> MethodMetrics:
        m = MethodMetrics(info)
        self.methods.append(m)
        return m

    def gauge(self, name: str, doc: str, read: Callable[[], float], **labels: str) -> None:
        self.gauges.append(Gauge(name, doc, read, labels=labels or None))

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, doc, read, "counter"))

    def untyped(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, doc, read, "untyped"))

    def histogram(self, name: str, doc: str, durations: Durations) -> None:
        self.histograms.append((name, doc, durations))

    def family(self, build: Families) -> None:
        self.families.append(build)

    def collect(self) -> Iterator[Metric]:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily(
            "grpc_server_started", "Total number of RPCs started on the server.", labels=labels
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=[*labels, "grpc_code"],
        )
        hist = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels=labels,
        )
        for m in self.methods:
            base = [m.type, m.info.service, m.info.name]
            started.add_metric(base, float(m.started))
            for i, name in enumerate(GO_NAMES):
                handled.add_metric([*base, name], float(m.handled[i]))
            cumulative = []
            acc = 0
            for bound, n in zip((*BUCKETS, float("inf")), m.bucket_counts, strict=True):
                acc += n
                cumulative.append((_le(bound), float(acc)))
            hist.add_metric(base, cumulative, m.sum)
        yield started
        yield handled
        yield hist
        for name, doc, d in self.histograms:
            family = HistogramMetricFamily(name, doc)
            family.add_metric([], [(_le(b), float(n)) for b, n in d.cumulative()], d.sum)
            yield family
        for g in self.gauges:
            try:
                value = float(g.read())
            except Exception:
                continue
            yield g.family(value)
        for build in self.families:
            yield from build()


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def make_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """A registry with the process collector (process_resident_memory_bytes, fds) and ours."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    for c in collectors:
        registry.register(c)
    return registry
