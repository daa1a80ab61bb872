"""`shipper demo` and its tooling: a simulated node, an embedded broker, the account of what arrived.

Used by the `demo` command (imported lazily by cli), the benchmark and the tests; no module of the
shipping path imports anything from here.
"""
