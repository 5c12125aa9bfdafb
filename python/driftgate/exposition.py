"""One Prometheus exposition of driftgate's core registry and, when asked, prometheus_client's
default registry, in whichever format the scraper negotiated (text 0.0.4 or OpenMetrics)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from driftgate._core import MetricsRegistry

__all__ = ["CoreCollector", "render"]


class CoreCollector(Collector):
    """Presents a driftgate MetricsRegistry to prometheus_client, family by family, so both
    registries serialise through one encoder into one valid payload."""

    def __init__(self, registry: MetricsRegistry):
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for name, help_text, kind, samples in self._registry.collect():
            # prometheus_client names a counter family without its `_total`; its samples keep it.
            if kind == "counter":
                name = name.removesuffix("_total")
            family = Metric(name, help_text, kind)
            for sample_name, labels, value in samples:
                if "le" in labels:
                    labels = {**labels, "le": _bound(labels["le"])}
                family.add_sample(sample_name, labels, value)
            yield family


def _bound(upper: float) -> str:
    return "+Inf" if math.isinf(upper) else repr(float(upper))


class _Combined(CollectorRegistry):
    """The core collector plus, optionally, everything in prometheus_client's default registry."""

    def __init__(self, core: CoreCollector, include_default: bool):
        super().__init__(auto_describe=False)
        self._core = core
        self._include_default = include_default

    def collect(self) -> Iterator[Metric]:
        yield from self._core.collect()
        if self._include_default:
            yield from REGISTRY.collect()


def render(
    registry: MetricsRegistry, accept: str | None, include_default: bool = True
) -> tuple[bytes, str]:
    """(body, content type) for a scrape that sent `accept`."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_Combined(CoreCollector(registry), include_default)), content_type
