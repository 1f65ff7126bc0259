"""The local stack's settings: a three-node cluster's ports and properties, PostgreSQL versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.stack import StackError, resolve_config
from devkit.stack.kafka import KafkaConfig, KafkaPaths, render_properties


def test_three_nodes_take_interleaved_ports_and_list_every_bootstrap(tmp_path: Path) -> None:
    cfg = resolve_config(
        state_dir=tmp_path, kafka_port=41000, kafka_brokers=3, postgres_port=41100, environ={}
    )
    assert cfg.kafka.controller_port == 41001
    assert cfg.kafka.bootstrap == "127.0.0.1:41000,127.0.0.1:41002,127.0.0.1:41004"
    assert sorted(cfg.kafka.all_ports) == [41000, 41001, 41002, 41003, 41004, 41005]
    assert cfg.client_env()["KAFKA_BOOTSTRAP_SERVERS"] == cfg.kafka.bootstrap


def test_ports_of_nodes_must_not_collide(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="different ports"):
        resolve_config(
            state_dir=tmp_path,
            kafka_port=41000,
            kafka_controller_port=41002,  # node 2's client port
            kafka_brokers=3,
            postgres_port=41100,
            environ={},
        )
    with pytest.raises(StackError, match="1 or 3"):
        resolve_config(state_dir=tmp_path, kafka_brokers=2, environ={})


def test_a_cluster_replicates_three_ways_and_needs_two_in_sync(tmp_path: Path) -> None:
    cfg = KafkaConfig(port=41000, controller_port=41001, brokers=3)
    props = dict(
        line.split("=", 1)
        for line in render_properties(cfg, KafkaPaths.under(tmp_path, 2), 2).splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:41001,2@127.0.0.1:41003,3@127.0.0.1:41005"
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:41002,CONTROLLER://127.0.0.1:41003"
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "node-2" / "data")
    single = render_properties(KafkaConfig(), KafkaPaths.under(tmp_path), 1)
    assert "default.replication.factor=1" in single and "min.insync.replicas=1" in single


def test_postgres_version_is_chosen_and_checked(tmp_path: Path) -> None:
    assert resolve_config(state_dir=tmp_path, environ={}).postgres.version == "18"
    env = {"CAPTURE_STACK_POSTGRES_VERSION": "16"}
    assert resolve_config(state_dir=tmp_path, environ=env).postgres.version == "16"
    with pytest.raises(StackError, match="PostgreSQL 15 is not available"):
        resolve_config(state_dir=tmp_path, postgres_version="15", environ={})


def test_a_list_of_bootstrap_servers_reaches_the_clients_as_a_list() -> None:
    # FastStream takes one string as one server: "a:1,b:2" must not become host "a:1,b".
    from worker.core.config import Settings  # noqa: PLC0415
    from worker.infrastructure.kafka_client import connection_options  # noqa: PLC0415

    settings = Settings(kafka_bootstrap_servers=" 127.0.0.1:1, 127.0.0.1:3,127.0.0.1:5 ")
    assert settings.kafka_bootstrap_list == ["127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:5"]
    assert connection_options(settings)["bootstrap_servers"] == settings.kafka_bootstrap_list
