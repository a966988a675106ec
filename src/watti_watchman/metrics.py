"""Prometheus exposition (text format 0.0.4) rendered from prepared families.

Components yield prometheus_client families from `collect_metrics()` (their own state, as
prepared `Family` snapshots or prometheus_client's `Histogram`); a meter's quantity table is
rendered from families prepared once per meter and re-formatted only when its values change.
Header lines and series prefixes are built once and cached, so a scrape costs little more than
formatting the numbers. Same-named families from several sources become one block (one
HELP/TYPE). The output is byte-for-byte what prometheus_client's `generate_latest` writes for
the same families, except that `_created` samples are left out.
"""

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Literal, Protocol

import prometheus_client
from prometheus_client import ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from watti_watchman.clock import Clock, monotonic
from watti_watchman.meters.base import Meter

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PROCESS_MAX_AGE_S = 1.0
"""process_* families are read from /proc again after a scrape is answered once they are this old
(s); scrapes in between reuse them."""
PROCESS_STALE_S = 5.0
"""A render reads process_* itself when they are older than this (s): scrapes rarer than that."""
MAX_CACHED_SERIES = 20_000
"""The series prefix cache is emptied beyond this many entries (label values that keep changing)."""

Kind = Literal["gauge", "counter"]
Block = tuple[str, str, Sequence[str]]
"""One family's contribution: (exposed name, HELP/TYPE header, sample lines)."""
Emit = Callable[[], Iterable[Block]]


def format_value(value: float) -> str:
    """A sample value exactly as prometheus_client writes it (`repr`, Go style beyond 1e6)."""
    number = float(value)
    if -1e6 < number < 1e6:
        return repr(number)
    return str(floatToGoString(number))  # type: ignore[no-untyped-call]


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def header(exposed_name: str, documentation: str, kind: str) -> str:
    """The `# HELP` and `# TYPE` lines of one family."""
    return f"# HELP {exposed_name} {_escape_help(documentation)}\n# TYPE {exposed_name} {kind}\n"


def series_prefix(sample_name: str, labels: Iterable[tuple[str, str]]) -> str:
    """`name{a="x",b="y"} ` (labels sorted by name, values escaped) — a sample line without its value."""
    pairs = sorted(labels)
    if not pairs:
        return f"{sample_name} "
    inner = ",".join(f'{key}="{_escape_label(value)}"' for key, value in pairs)
    return f"{sample_name}{{{inner}}} "


class Prepared(Metric):
    """A family rendered from prepared series prefixes: `exposed` name, `header` and `lines()`."""

    exposed: str
    header: str

    def lines(self) -> list[str]:
        """The current sample lines of the text format."""
        raise NotImplementedError


class Family(Prepared):
    """A snapshot gauge or counter family prepared once: a component keeps it and, at each
    scrape, yields it with its current samples (`set`); the exposition then only formats numbers.

    Name without `_total` for counters, as with prometheus_client's families.
    """

    def __init__(self, kind: Kind, name: str, documentation: str, labels: Sequence[str] = ("name",)) -> None:
        super().__init__(name, documentation, kind)
        self.labelnames = tuple(labels)
        self.exposed = name + "_total" if kind == "counter" else name
        self.header = header(self.exposed, documentation, kind)
        self._prefixes: dict[tuple[str, ...], str] = {}
        self._current: list[tuple[tuple[str, ...], float]] = []
        self._rendered: tuple[list[tuple[tuple[str, ...], float]], list[str]] = ([], [])
        """The samples of the previous `lines()` and their lines (reused while the samples are equal)."""

    @property
    def samples(self) -> list[Sample]:
        """The current samples as prometheus_client `Sample`s (for readers other than the exposition)."""
        return [
            Sample(self.exposed, dict(zip(self.labelnames, labels, strict=True)), value)
            for labels, value in self._current
        ]

    @samples.setter
    def samples(self, _: object) -> None:
        """Ignored: samples come from `set`."""

    def set(self, samples: Iterable[tuple[Sequence[str], float]]) -> "Family":
        """Replace the current samples with (label values, value) pairs; returns the family."""
        self._current = [(tuple(labels), float(value)) for labels, value in samples]
        return self

    def one(self, value: float, *labels: str) -> "Family":
        """Replace the current samples with one series."""
        self._current = [(labels, float(value))]
        return self

    def lines(self) -> list[str]:
        """The current sample lines of the text format (formatted again only when a sample changed)."""
        previous, previous_lines = self._rendered
        if self._current == previous:
            return previous_lines
        prefixes = self._prefixes
        lines = []
        for labels, value in self._current:
            prefix = prefixes.get(labels)
            if prefix is None:
                if len(prefixes) >= MAX_CACHED_SERIES:
                    prefixes.clear()
                pairs = zip(self.labelnames, labels, strict=True)
                prefix = prefixes[labels] = series_prefix(self.exposed, pairs)
            lines.append(f"{prefix}{format_value(value)}\n")
        self._rendered = (self._current, lines)
        return lines


class Families:
    """A component's prepared families by name, created on first use and kept between scrapes."""

    def __init__(self) -> None:
        self._known: dict[str, Family] = {}

    def _get(self, kind: Kind, name: str, documentation: str, labels: Sequence[str]) -> Family:
        family = self._known.get(name)
        if family is None:
            family = self._known[name] = Family(kind, name, documentation, labels)
        return family

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ("name",)) -> Family:
        """The gauge family `name` (set its samples with `one` or `set`)."""
        return self._get("gauge", name, documentation, labels)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ("name",)) -> Family:
        """The counter family `name` (without `_total`)."""
        return self._get("counter", name, documentation, labels)


class Histogram(Prepared):
    """prometheus_client's own Histogram (buckets, count, sum) of one component (label `name`),
    rendered from prepared series prefixes; seconds."""

    def __init__(self, name: str, documentation: str, component: str, bounds_s: Sequence[float]) -> None:
        super().__init__(name, documentation, "histogram")
        self.family = prometheus_client.Histogram(
            name, documentation, ["name"], buckets=tuple(bounds_s), registry=None
        )
        """The prometheus_client metric (its `collect()` is the reference rendering)."""
        self._series = self.family.labels(component)
        self._component = component
        self.exposed = name
        self.header = header(name, documentation, "histogram")
        component_label = ("name", component)
        self._bucket_prefixes = [
            series_prefix(name + "_bucket", [component_label, ("le", str(floatToGoString(bound)))])  # type: ignore[no-untyped-call]
            for bound in self._series._upper_bounds
        ]
        self._count_prefix = series_prefix(name + "_count", [component_label])
        self._sum_prefix = series_prefix(name + "_sum", [component_label])
        self._observations = 0
        self._rendered: tuple[int, list[str]] = (-1, [])
        """The observation count of the previous `lines()` and its lines."""

    def observe(self, value_s: float) -> None:
        """Count one observation (s)."""
        self._series.observe(value_s)
        self._observations += 1

    def collect(self) -> Iterable[Metric]:
        """This family, for a component's `collect_metrics`."""
        return (self,)

    def _current(self) -> Iterator[tuple[str, Mapping[str, str], float]]:
        """(suffix, extra labels, value) of `_bucket` (cumulative), `_count`, `_sum`."""
        for sample in self._series._child_samples():  # the one child's samples, without collect()'s wrapping
            if sample.name != "_created":
                yield sample.name, sample.labels, sample.value

    @property
    def samples(self) -> list[Sample]:
        """The current samples as prometheus_client `Sample`s."""
        return [
            Sample(self.name + suffix, {"name": self._component, **labels}, value)
            for suffix, labels, value in self._current()
        ]

    @samples.setter
    def samples(self, _: object) -> None:
        """Ignored: samples come from the histogram."""

    def lines(self) -> list[str]:
        """The current sample lines of the text format (formatted again only after new observations)."""
        observations, previous_lines = self._rendered
        if observations == self._observations:
            return previous_lines
        # The child's own counters, read as its `_child_samples` does, without building a Sample
        # (and formatting the bound) per bucket at every scrape.
        series = self._series
        cumulative = 0.0
        lines = []
        for prefix, bucket in zip(self._bucket_prefixes, series._buckets, strict=True):
            cumulative += bucket.get()
            lines.append(f"{prefix}{format_value(cumulative)}\n")
        lines.append(f"{self._count_prefix}{format_value(cumulative)}\n")
        lines.append(f"{self._sum_prefix}{format_value(series._sum.get())}\n")
        self._rendered = (self._observations, lines)
        return lines


class MetricSource(Protocol):
    """Anything that can describe its current state as metric families (no I/O, no waiting)."""

    def collect_metrics(self) -> Iterable[Metric]:
        """Families for the current snapshot; the same family may come from several sources."""
        ...


class _TableExport:
    """A meter's quantity table as families prepared once; lines re-formatted only for new values."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        rows: dict[str, tuple[str, str, list[tuple[str, str, float]]]] = {}
        for quantity in meter.quantities:
            if quantity.metric is None:
                continue
            counter = quantity.metric_type == "counter"
            exposed = quantity.metric + "_total" if counter else quantity.metric
            family = rows.setdefault(
                exposed, (exposed, header(exposed, quantity.metric_help, quantity.metric_type), [])
            )
            prefix = series_prefix(exposed, [("name", meter.name), *quantity.metric_labels])
            family[2].append((quantity.key, prefix, quantity.metric_scale))
        self._families = tuple(rows.values())
        self._seq = -1
        self._blocks: list[Block] = []

    def emit(self) -> Iterable[Block]:
        """The table's families while the meter is fresh, else nothing."""
        newest = self.meter.values.snapshot()
        if newest is None or not self.meter.is_fresh():
            return ()
        if newest.seq != self._seq:
            values = newest.value
            self._blocks = [
                (
                    name,
                    head,
                    [
                        f"{prefix}{format_value(values[key] * scale)}\n"
                        for key, prefix, scale in rows
                        if key in values
                    ],
                )
                for name, head, rows in self._families
            ]
            self._seq = newest.seq
        return self._blocks


class Exposition:
    """The /metrics body, rendered on demand from the registered sources."""

    def __init__(self, *, process: bool = True, clock: Clock = monotonic) -> None:
        """`process`: append prometheus_client's process_* families (RSS, open fds, CPU; Linux),
        read from /proc when built, by `refresh` and by a render that finds them older than
        PROCESS_STALE_S (`clock`: monotonic seconds)."""
        self._emitters: list[Emit] = []
        self._headers: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._prefixes: dict[tuple[object, ...], str] = {}
        self._collector = ProcessCollector(registry=None) if process else None
        self._clock = clock
        self._process_at_s = 0.0
        self._process_blocks: list[Block] = []
        self._process_emit: tuple[Emit, ...] = (self._process,) if process else ()
        self.last_render_s = 0.0
        """How long the previous render took (s); exported by the next one."""
        self._read_process()

    def _read_process(self) -> None:
        if self._collector is not None:
            self._process_blocks = list(self._blocks(self._collector.collect()))
            self._process_at_s = self._clock()

    def refresh(self) -> None:
        """Read the process_* families from /proc again if PROCESS_MAX_AGE_S old (called once a
        scrape is answered, so that frequent scrapes never wait for /proc; the next one shows them)."""
        if self._clock() - self._process_at_s >= PROCESS_MAX_AGE_S:
            self._read_process()

    def _process(self) -> list[Block]:
        if self._clock() - self._process_at_s > PROCESS_STALE_S:
            self._read_process()
        return self._process_blocks

    def add(self, source: MetricSource | Callable[[], Iterable[Metric]]) -> None:
        """Register a metric source; a meter's quantity table is exported with it."""
        collect: Callable[[], Iterable[Metric]] = getattr(source, "collect_metrics", None) or source  # type: ignore[assignment]
        self._emitters.append(lambda: self._blocks(collect()))
        if isinstance(source, Meter):
            self._emitters.append(_TableExport(source).emit)

    def _blocks(self, families: Iterable[Metric]) -> Iterator[Block]:
        for family in families:
            if isinstance(family, Prepared):
                yield family.exposed, family.header, family.lines()
                continue
            key = (family.name, family.type, family.documentation)
            known = self._headers.get(key)
            if known is None:
                exposed = family.name + "_total" if family.type == "counter" else family.name
                known = self._headers[key] = (exposed, header(exposed, family.documentation, family.type))
            yield known[0], known[1], self._lines(family)

    def _lines(self, family: Metric) -> list[str]:
        created = family.name + "_created"
        prefixes = self._prefixes
        lines = []
        for sample in family.samples:
            if sample.name == created:
                continue
            key = (sample.name, *sample.labels.items())
            prefix = prefixes.get(key)
            if prefix is None:
                if len(prefixes) >= MAX_CACHED_SERIES:
                    prefixes.clear()
                prefix = prefixes[key] = series_prefix(sample.name, sample.labels.items())
            lines.append(f"{prefix}{format_value(sample.value)}\n")
        return lines

    def render(self) -> bytes:
        """Text exposition format 0.0.4 of the current snapshots."""
        started = time.perf_counter()
        merged: dict[str, list[str]] = {}
        for emit in (*self._emitters, *self._process_emit):
            for name, head, lines in emit():
                block = merged.get(name)
                if block is None:
                    merged[name] = [head, *lines]
                else:
                    block.extend(lines)
        body = "".join(chain.from_iterable(merged.values())).encode()
        self.last_render_s = time.perf_counter() - started
        return body
