"""The native test stack: Kafka, Toxiproxy, our ClickHouse server, outlet processes.

Process supervision, TLS material, endpoints, verification queries. Depends on `outlet`
and `flowgen`; `chaos`, `loadtest` and the tests build on it. Nothing in `outlet` imports it.
"""
