"""pytest fixtures for real brokers; a plugin module (register with `pytest_plugins`).

Session brokers are shared by every test in the run: tests on them must not kill, pause or reconfigure
them, and should use topic names of their own. Fault tests take a `fresh_*` broker, started for the test
and stopped after it. Broker logs live under pytest's tmp dir; a failed test's report names them and shows
their tail.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from .kafka import BrokerProcess, KafkaBroker
from .tansu import TansuBroker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka, PLAINTEXT only, shared by the session."""
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture
def fresh_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka, PLAINTEXT only, for this test alone (kill it, pause it, restart it)."""
    with KafkaBroker(tmp_path_factory.mktemp("fresh-kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def secure_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka with PLAINTEXT, SSL, mutual-TLS, SASL_SSL (PLAIN, SCRAM-SHA-256/512) and OAUTHBEARER
    (unsecured JWTs, see oauth.py) listeners."""
    with KafkaBroker.secure(tmp_path_factory.mktemp("secure-kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    with TansuBroker(tmp_path_factory.mktemp("tansu")) as broker:
        yield broker


@pytest.fixture
def fresh_tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    with TansuBroker(tmp_path_factory.mktemp("fresh-tansu")) as broker:
        yield broker


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, BrokerProcess):
                report.sections.append((f"broker {name}", value.failure_report(repr(value))))
    return report
