"""Prometheus metrics of `sola serve` (prometheus-client, one registry per app): edits, rollbacks, asks and the routed
share, live edits, request latency."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service) -> None:
        self.registry = CollectorRegistry()
        self.asks = Counter("sola_asks", "questions answered (ask and completions)", registry=self.registry)
        self.routed = Counter("sola_asks_routed", "questions an edit answered", registry=self.registry)
        self.edits = Counter("sola_edits", "edits committed by this server", registry=self.registry)
        self.rollbacks = Counter("sola_rollbacks", "rollbacks committed by this server", registry=self.registry)
        self.live = Gauge("sola_live_edits", "live edits in the store", registry=self.registry)
        self.live.set_function(lambda: len(service.reader.slots))
        self.latency = Histogram("sola_request_seconds", "request latency by endpoint", ["path", "status"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        service.on_change(self._changed)

    def _changed(self, kind: str, result) -> None:
        if kind == "edit":
            self.edits.inc(len(result))
        else:
            self.rollbacks.inc()

    def asked(self, routed: bool) -> None:
        self.asks.inc()
        if routed:
            self.routed.inc()

    def request(self, path: str, status: int, seconds: float) -> None:
        # jobs and edits by id are one series each, not one per id
        for prefix in ("/v1/edits/", "/v1/jobs/", "/static/"):
            if path.startswith(prefix):
                path = prefix + "{id}"
        self.latency.labels(path, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
