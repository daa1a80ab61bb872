"""Enrichment: Kubernetes metadata for the record's resource, and the per-line body stage
(redaction, correlation ids, severity).

- `build_provider(settings, metrics)`: the metadata provider the ingest stage asks (`MetadataProvider`
  with enrich.kubernetes, else `PathOnlyProvider`);
- `make_body_processor(config, metrics)`: the body stage alone (records.BodyProcessor).

One file per concern: body (the per-line stage), correlation, redact, watch (list+watch threads),
cache (pods and namespaces), owner (owner workload from names and labels), provider.
"""
from __future__ import annotations

from ..config import Settings
from ..metrics import Metrics
from .body import BodyProcessor, make_body_processor
from .provider import MetadataProvider, PathOnlyProvider

__all__ = ["BodyProcessor", "MetadataProvider", "PathOnlyProvider", "build_provider", "make_body_processor"]


def build_provider(settings: Settings, metrics: Metrics | None = None) -> MetadataProvider | PathOnlyProvider:
    if settings.enrich.kubernetes:
        return MetadataProvider(settings, metrics)
    return PathOnlyProvider(settings, metrics)
