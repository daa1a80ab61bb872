from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness.kube import render_chart

FULL_VALUES = Path(__file__).with_name("values-full.yaml")


@pytest.fixture(scope="session")
def full_objects() -> list[dict[str, Any]]:
    """The chart with every optional part on (ServiceMonitor, PrometheusRule, Service, Secrets, ...)."""
    return render_chart(values_files=[FULL_VALUES])
