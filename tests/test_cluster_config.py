"""``[cluster]``: validated at start like every section; without it nothing changes."""
import pytest

from nextim_twisted import config

GOOD = {"auth": {"token_secret": "s" * 16}, "admin": {"api_key": "k" * 16}}
PG = {"storage": {"backend": "postgres", "dsn": "host=127.0.0.1 dbname=test"}}


def test_absent_section_is_single_node():
    c = config.from_dict(GOOD)
    assert c.cluster.enabled is False and c.cluster.node_id is None


def test_defaults_when_clustered():
    c = config.from_dict({**GOOD, **PG, "cluster": {"node_id": "n1"}})
    assert c.cluster.enabled is True
    assert (c.cluster.redis_url, c.cluster.redis_prefix, c.cluster.node_timeout) == (
        "redis://127.0.0.1:6379/0", "nextim", 15)


def test_node_id_option_turns_cluster_on():
    c = config.from_dict({**GOOD, **PG}, overrides={"cluster.node_id": "b7"})
    assert c.cluster.enabled and c.cluster.node_id == "b7"


def test_sqlite_is_refused_with_the_reason():
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({**GOOD, "cluster": {"node_id": "n1"}})
    assert str(err.value).startswith("[cluster]: needs [storage] backend = \"postgres\"")


@pytest.mark.parametrize("cluster, key", [
    ({}, "[cluster] node_id"),
    ({"node_id": "N1"}, "[cluster] node_id"),
    ({"node_id": "n" * 17}, "[cluster] node_id"),
    ({"node_id": "n-1"}, "[cluster] node_id"),
    ({"node_id": "n1", "redis_url": "http://x"}, "[cluster] redis_url"),
    ({"node_id": "n1", "redis_prefix": "a b"}, "[cluster] redis_prefix"),
    ({"node_id": "n1", "node_timeout": 0}, "[cluster] node_timeout"),
    ({"node_id": "n1", "nodes": 2}, "[cluster] nodes"),
])
def test_bad_values_name_the_key(cluster, key):
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({**GOOD, **PG, "cluster": cluster})
    assert str(err.value).startswith(key)
