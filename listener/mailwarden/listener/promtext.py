"""Counters, gauges and histograms with labels, written in the Prometheus text format 0.0.4
(https://prometheus.io/docs/instrumenting/exposition_formats/).

The listener needs only these, in one event-loop thread, and importing prometheus_client costs
a listener pod about 2.6 MiB of RSS (it brings http.server, wsgiref, urllib and email with it;
docs/decisions/0001-listener-pod-footprint.md). The names and calls are prometheus_client's
(`Counter(name, help, labelnames, registry=...)`, `.labels(...)`, `.inc()`, `.set()`,
`.set_function()`, `.observe()`, `.remove(...)`, `registry.get_sample_value(...)`), so the
metric definitions read the same and a test can parse the output with prometheus_client's
parser. Not thread-safe: updates come from the event loop only.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"
INF = math.inf


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class Family(NamedTuple):
    """One metric as collected (prometheus_client's Metric: name, type, help, samples)."""

    name: str
    documentation: str
    type: str
    samples: list[Sample]


def _number(value: float) -> str:
    """As the Go client writes floats: +Inf, -Inf, NaN, otherwise Python's repr."""
    if value == INF:
        return "+Inf"
    if value == -INF:
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(float(value))
    point = text.find(".")
    if value > 0 and point > 6:
        # Go (and so prometheus_client) writes 1.2345e+07 where Python writes 12345000.0.
        digits = (text[:point] + text[point + 1 :]).rstrip("0")
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{mantissa}e+{point - 1:02d}"
    return text


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n")


class CollectorRegistry:
    def __init__(self) -> None:
        self._metrics: list[_Metric[Any]] = []

    def register(self, metric: _Metric[Any]) -> None:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"duplicate metric {metric.name}")
        self._metrics.append(metric)

    def collect(self) -> Iterator[Family]:
        for metric in self._metrics:
            yield Family(metric.name, metric.documentation, metric.kind, list(metric.samples()))

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample (as prometheus_client's registry answers it), or None."""
        want = labels or {}
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == want:
                    return sample.value
        return None


def generate_latest(registry: CollectorRegistry) -> bytes:
    out: list[str] = []
    for family in registry.collect():
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        out.append(f"# HELP {exposed} {_escape_help(family.documentation)}\n")
        out.append(f"# TYPE {exposed} {family.type}\n")
        for name, labels, value in family.samples:
            if labels:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
                out.append(f"{name}{{{text}}} {_number(value)}\n")
            else:
                out.append(f"{name} {_number(value)}\n")
    return "".join(out).encode()


C = TypeVar("C")


class _Metric(Generic[C]):
    kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        if not self.labelnames:
            self._children[()] = self._child()
        if registry is not None:
            registry.register(self)

    def _child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._child()
        return child

    def remove(self, *values: str) -> None:
        del self._children[tuple(str(v) for v in values)]

    def _unlabelled(self) -> C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels()")
        return self._children[()]

    def samples(self) -> Iterator[Sample]:
        for key, child in list(self._children.items()):
            labels = dict(zip(self.labelnames, key, strict=True))
            yield from self._child_samples(child, labels)

    def _child_samples(self, child: C, labels: dict[str, str]) -> Iterator[Sample]:
        raise NotImplementedError


class _Value:
    __slots__ = ("_function", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._function: Callable[[], float] | None = None

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        """The value is function() at each scrape (prometheus_client's Gauge.set_function)."""
        self._function = function

    def get(self) -> float:
        return float(self._function()) if self._function is not None else self.value


class Counter(_Metric[_Value]):
    kind = "counter"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        # As prometheus_client: the family is named without `_total`, the sample with it.
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry=registry)

    def _child(self) -> _Value:
        return _Value()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def _child_samples(self, child: _Value, labels: dict[str, str]) -> Iterator[Sample]:
        yield Sample(f"{self.name}_total", labels, child.get())


class Gauge(_Metric[_Value]):
    kind = "gauge"

    def _child(self) -> _Value:
        return _Value()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self._unlabelled().set_function(function)

    def _child_samples(self, child: _Value, labels: dict[str, str]) -> Iterator[Sample]:
        yield Sample(self.name, labels, child.get())


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class Histogram(_Metric[_Buckets]):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != INF:
            bounds.append(INF)
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry=registry)

    def _child(self) -> _Buckets:
        return _Buckets(self.bounds)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def _child_samples(self, child: _Buckets, labels: dict[str, str]) -> Iterator[Sample]:
        total = 0
        for bound, count in zip(child.bounds, child.counts, strict=True):
            total += count
            yield Sample(f"{self.name}_bucket", {**labels, "le": _number(bound)}, float(total))
        yield Sample(f"{self.name}_count", labels, float(total))
        yield Sample(f"{self.name}_sum", labels, child.sum)
