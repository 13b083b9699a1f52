"""The multi-dc stack (issue 10): two Kafkas with their own cluster ids and the same topic,
a local ClickHouse per datacenter, one central, and a separate proxy for each link."""

from __future__ import annotations

import json
from pathlib import Path

import clickhouse_connect
import pytest

from teststack import stack as stk

pytestmark = pytest.mark.stack


def select_one(ch: stk.ClickHouseEndpoints, proxied: bool = True) -> int:
    client = clickhouse_connect.get_client(
        dsn=ch.proxied_url if proxied else ch.url, username=ch.username, password=ch.password,
        connect_timeout=2, send_receive_timeout=5, query_retries=0)
    try:
        return int(client.command("SELECT 1"))
    finally:
        client.close()


def test_endpoints_describe_each_datacenter(multi_dc_stack: stk.MultiDCEndpoints) -> None:
    mep = multi_dc_stack
    data = json.loads((Path(mep.stack_dir) / "endpoints.json").read_text())
    assert data["topology"] == "multi-dc" and set(data["datacenters"]) == {"a", "b"}
    a, b = mep.datacenters["a"], mep.datacenters["b"]
    assert a.kafka.topic == b.kafka.topic  # the same topic name everywhere
    assert a.kafka.bootstrap != b.kafka.bootstrap
    assert (a.kafka.proxy, b.kafka.proxy) == ("kafka-a", "kafka-b")
    assert a.clickhouse["local"].url != b.clickhouse["local"].url
    assert a.clickhouse["central"].url == b.clickhouse["central"].url == mep.central.url
    assert (a.clickhouse["central"].proxy, b.clickhouse["central"].proxy) == (
        "clickhouse-central-a", "clickhouse-central-b")
    assert a.clickhouse["central"].proxied_url != b.clickhouse["central"].proxied_url
    assert stk.load_endpoints(mep.stack_dir) == mep
    with pytest.raises(stk.StackError, match=r"multi-dc stack: use MultiDCEndpoints\.load"):
        stk.Endpoints.load(mep.stack_dir)
    proxies = mep.toxiproxy.client().proxies()
    assert set(proxies) >= {"kafka-a", "kafka-b", "clickhouse-local-a", "clickhouse-local-b",
                            "clickhouse-central-a", "clickhouse-central-b"}


def test_each_kafka_has_its_own_cluster_id(multi_dc_stack: stk.MultiDCEndpoints) -> None:
    """The outlet's tokens name the cluster: two datacenters must not share an id (the
    stack's cached KRaft format would otherwise give every broker the same one)."""
    ids = {dc: stk._admin(ep.kafka.bootstrap_proxied).list_topics(timeout=10).cluster_id
           for dc, ep in multi_dc_stack.datacenters.items()}
    assert all(ids.values()) and ids["a"] != ids["b"]


def test_one_datacenters_link_to_central_is_cut_alone(
    multi_dc_stack: stk.MultiDCEndpoints,
) -> None:
    a, b = multi_dc_stack.datacenters["a"], multi_dc_stack.datacenters["b"]
    toxi = multi_dc_stack.toxiproxy.client()
    toxi.disable("clickhouse-central-a")
    try:
        with pytest.raises(Exception):  # noqa: B017 - refused, whatever the client calls it
            select_one(a.clickhouse["central"])
        assert select_one(b.clickhouse["central"]) == 1  # b's link is up
        assert select_one(a.clickhouse["local"]) == 1  # a's local link is up
        assert select_one(a.clickhouse["central"], proxied=False) == 1  # central itself too
    finally:
        toxi.enable("clickhouse-central-a")
    assert select_one(a.clickhouse["central"]) == 1
