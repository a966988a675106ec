"""Prometheus exposition from in-memory snapshots: components yield families, merged here."""

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PHASES = ("l1", "l2", "l3")


class Histogram:
    """Cumulative-bucket histogram of seconds, rendered through a HistogramMetricFamily."""

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds_s = bounds_s
        self.counts = [0] * len(bounds_s)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, value_s: float) -> None:
        """Count one observation (s)."""
        self.count += 1
        self.sum_s += value_s
        for index, bound in enumerate(self.bounds_s):
            if value_s <= bound:
                self.counts[index] += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (upper bound, count) pairs ending with +Inf."""
        return [
            *((f"{b:g}", float(c)) for b, c in zip(self.bounds_s, self.counts, strict=True)),
            ("+Inf", float(self.count)),
        ]


class MetricSource(Protocol):
    """Anything that can describe its current state as metric families (no I/O, no waiting)."""

    def collect_metrics(self) -> Iterable[Metric]:
        """Families for the current snapshot; the same family may come from several sources."""
        ...


class MergingCollector:
    """One prometheus_client collector over many sources; same-named families are merged.

    Merging keeps each family contiguous with one HELP/TYPE even when several meters of one
    type export it.
    """

    def __init__(self) -> None:
        self._sources: list[Callable[[], Iterable[Metric]]] = []

    def add(self, source: MetricSource | Callable[[], Iterable[Metric]]) -> None:
        """Register a source (an object with `collect_metrics` or a plain callable)."""
        collect: Callable[[], Iterable[Metric]] = getattr(source, "collect_metrics", None) or source  # type: ignore[assignment]
        self._sources.append(collect)

    def collect(self) -> Iterable[Metric]:
        """prometheus_client hook: every source's families, merged by name."""
        merged: dict[str, Metric] = {}
        for collect in self._sources:
            for family in collect():
                existing = merged.get(family.name)
                if existing is None:
                    merged[family.name] = family
                else:
                    existing.samples.extend(family.samples)
        return merged.values()


class Exposition:
    """The /metrics body, rendered on demand from the registered sources."""

    def __init__(self) -> None:
        self.collector = MergingCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # process_*: RSS, open fds, CPU (Linux)
        self.last_render_s = 0.0
        """How long the previous render took (s); exported by the next one."""

    def add(self, source: MetricSource | Callable[[], Iterable[Metric]]) -> None:
        """Register a metric source."""
        self.collector.add(source)

    def render(self) -> bytes:
        """Text exposition format 0.0.4 of the current snapshots."""
        started = time.perf_counter()
        body: bytes = generate_latest(self.registry)
        self.last_render_s = time.perf_counter() - started
        return body
