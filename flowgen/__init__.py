"""Synthetic GoFlow2 flows: model, wire encoding, unique ids, garbage corpus, producer.

Depends only on `outlet` (its protobuf schema); `teststack`, `chaos`, `loadtest` and the
tests build on it.
"""
