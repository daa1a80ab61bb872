"""Real brokers and a real API server for every test that asks for them (see tests/harness/)."""
pytest_plugins = ["tests.harness.kafka_fixtures", "tests.harness.kube_fixtures"]
