"""One Prometheus exposition of driftgate's core registry and, when asked, prometheus_client's
default registry, in whichever format the scraper negotiated (text 0.0.4 or OpenMetrics), and
gzipped when the scraper accepts it (Prometheus always does).

The core writes its own families (prometheus-cpp's serializer, with the GIL released), and
prometheus_client's encoder writes the default registry's; both formats are a sequence of
families, so the two parts are one exposition as long as no family name appears in both. A
default-registry family that clashes with a core family is left out (and logged once): the
core's series are the ones driftgate documents."""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType

from prometheus_client import REGISTRY, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.registry import Collector

from driftgate._core import MetricsRegistry

__all__ = ["CoreCollector", "Scrape", "accepts_gzip", "render", "scrape"]

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


def _parts(
    registry: MetricsRegistry, accept: str | None, include_default: bool
) -> tuple[list[bytes | memoryview], str]:
    """The exposition for a scrape that sent `accept`, in the pieces it was written in (the
    core's bytes as the core wrote them, not copied), and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    openmetrics = content_type.split(";")[0] == _OPENMETRICS
    core = registry.exposition_bytes(openmetrics)
    if not include_default:
        return [core], content_type
    default = encoder(_DefaultWithout(registry.family_names()))
    if openmetrics:
        # One `# EOF`, at the end: the default registry's part carries it.
        return [memoryview(core)[: -len(_EOF)], default], content_type
    return [core, default], content_type


def _joined(parts: list[bytes | memoryview]) -> bytes:
    only = parts[0]
    if len(parts) == 1 and isinstance(only, bytes):
        return only  # the core's own bytes, not copied
    return b"".join(parts)


def render(
    registry: MetricsRegistry, accept: str | None, include_default: bool = True
) -> tuple[bytes, str]:
    """(body, content type) for a scrape that sent `accept`."""
    parts, content_type = _parts(registry, accept, include_default)
    return _joined(parts), content_type


def _deflater() -> ModuleType:
    """ISA-L's zlib-compatible deflate (the `isal` package, which the fastapi extra installs):
    at level 1 it gzips an exposition about five times as fast as zlib does, to a smaller body.
    zlib where no `isal` wheel is installed."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


_DEFLATE = _deflater()

GZIP_LEVEL = 1
"""zlib's fastest level, and as fast in ISA-L as its level 0 for a smaller body: an exposition
repeats its names and labels on every line, so even it makes the body a tenth of its size or
less, in a small part of the time the core takes to write it."""

# One element of an Accept-Encoding list: a content coding (or `*`), then parameters.
_CODING = re.compile(r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*((?:;[^,]*)?)")
_QUALITY = re.compile(r";\s*q\s*=\s*([^;\s]*)", re.IGNORECASE)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header (RFC 9110 12.5.3) accepts gzip: named, or covered by
    `*` when not named, with a quality above 0 (`gzip;q=0` refuses it, and so does a quality
    that is not a number). Without the header nothing is gzipped, as prometheus_client's own
    server does."""
    named: float | None = None
    anything: float | None = None
    for element in (accept_encoding or "").split(","):
        match = _CODING.match(element)
        if match is None:
            continue
        quality = _QUALITY.search(match.group(2))
        try:
            q = float(quality.group(1)) if quality else 1.0
        except ValueError:
            q = 0.0  # a quality that is not a number accepts nothing
        coding = match.group(1).lower()
        if coding in ("gzip", "x-gzip"):
            named = max(named or 0.0, q)
        elif coding == "*":
            anything = q
    chosen = named if named is not None else anything
    return chosen is not None and chosen > 0


@dataclass(frozen=True)
class Scrape:
    """The answer to one scrape: the body as sent, and its headers."""

    body: bytes
    content_type: str
    gzipped: bool

    @property
    def headers(self) -> dict[str, str]:
        """Content-Encoding when gzipped, and Vary, since the body depends on both the Accept
        and the Accept-Encoding headers (the Content-Type header is the response's media type)."""
        vary = {"Vary": "Accept, Accept-Encoding"}
        return {**vary, "Content-Encoding": "gzip"} if self.gzipped else vary


def scrape(
    registry: MetricsRegistry,
    accept: str | None,
    accept_encoding: str | None = None,
    include_default: bool = True,
) -> Scrape:
    """What a scrape that sent `accept` and `accept_encoding` is answered: the exposition in
    the negotiated format, gzipped (at GZIP_LEVEL) when the scraper accepts gzip. The pieces are
    compressed as they are, without joining them first."""
    parts, content_type = _parts(registry, accept, include_default)
    if not accepts_gzip(accept_encoding):
        return Scrape(_joined(parts), content_type, False)
    # wbits 16 + 15: a gzip stream (a header, the deflate data, a CRC-32 and the length)
    gzip = _DEFLATE.compressobj(GZIP_LEVEL, _DEFLATE.DEFLATED, 16 + _DEFLATE.MAX_WBITS)
    chunks = [gzip.compress(part) for part in parts]
    chunks.append(gzip.flush())
    return Scrape(b"".join(chunks), content_type, True)
