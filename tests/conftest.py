"""Real brokers, a real API server and Go reference tools for every test that asks for them (see tests/harness/)."""
pytest_plugins = ["tests.harness.kafka_fixtures", "tests.harness.kube_fixtures", "tests.harness.c2sp"]
