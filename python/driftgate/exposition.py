"""One Prometheus exposition of driftgate's core registry and, when asked, prometheus_client's
default registry, in whichever format the scraper negotiated (text 0.0.4 or OpenMetrics).

The core writes its own families (prometheus-cpp's serializer, with the GIL released), and
prometheus_client's encoder writes the default registry's; both formats are a sequence of
families, so the two parts are one exposition as long as no family name appears in both. A
default-registry family that clashes with a core family is left out (and logged once): the
core's series are the ones driftgate documents."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.registry import Collector

from driftgate._core import MetricsRegistry

__all__ = ["CoreCollector", "render"]

logger = logging.getLogger("driftgate")

_OPENMETRICS = OPENMETRICS_TYPE.split(";")[0]
_EOF = b"# EOF\n"
_reported_clashes: set[str] = set()  # logged once per process


class CoreCollector(Collector):
    """Presents a driftgate MetricsRegistry to prometheus_client, family by family, for
    applications that serve it from a prometheus_client registry of their own. The router
    does not use it: converting every sample into Python objects costs several times what
    the core's own exposition does."""

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


class _DefaultWithout(Collector):
    """prometheus_client's default registry without the families the core exposes itself;
    the encoders need only `collect()`, so no registry of its own is built per scrape."""

    def __init__(self, core_names: Iterable[str]):
        # prometheus_client names counters without `_total`; compare both spellings.
        self._taken = {n for name in core_names for n in (name, name.removesuffix("_total"))}

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name in self._taken:
                if family.name not in _reported_clashes:
                    _reported_clashes.add(family.name)
                    logger.warning(
                        "metrics: prometheus_client's default registry has a family %r that "
                        "driftgate's core registry also has; only the core's is exposed",
                        family.name,
                    )
                continue
            yield family


def render(
    registry: MetricsRegistry, accept: str | None, include_default: bool = True
) -> tuple[bytes, str]:
    """(body, content type) for a scrape that sent `accept`."""
    encoder, content_type = choose_encoder(accept or "")
    openmetrics = content_type.split(";")[0] == _OPENMETRICS
    core = registry.exposition_bytes(openmetrics)
    if not include_default:
        return core, content_type
    default = encoder(_DefaultWithout(registry.family_names()))
    if openmetrics:
        # One `# EOF`, at the end: the default registry's part carries it.
        return b"".join((memoryview(core)[: -len(_EOF)], default)), content_type
    return core + default, content_type
