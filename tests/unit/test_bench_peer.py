"""The bench's peer (devkit/peer/debezium.py): what Connect and the sink are given."""

from __future__ import annotations

import json
from pathlib import Path

from devkit.cli.bench import Round, _peer_report, _warm_ratio
from devkit.peer import debezium as peer
from devkit.records import commands_of
from devkit.synthetic import generate_lines
from worker.core.config import Settings

DIM = 8


def test_a_command_is_its_own_payload_under_a_schema_of_its_fields() -> None:
    lines = list(generate_lines(5, users=2, seed=3, dim=DIM))
    encoded = peer.encode(commands_of(lines), DIM)
    for line, record in zip(lines, encoded, strict=True):
        envelope = json.loads(record.text)
        assert envelope["payload"] == json.loads(line)
        fields = {f["field"]: f for f in envelope["schema"]["fields"]}
        assert set(fields) == set(json.loads(line)) | {"title"}
        vector = fields["embedding"]
        # What the sink needs to write vector(D) rather than a double precision array.
        assert vector["name"] == "io.debezium.data.DoubleVector"
        assert vector["items"]["type"] == "double"
        assert vector["parameters"]["__debezium.source.column.length"] == str(DIM)
        assert fields["command_id"]["name"] == "io.debezium.data.Uuid"
        assert fields["title"]["optional"] is True
        assert record.key == str(json.loads(line)["user_id"]).encode()


def test_distinct_ids_counts_the_rows_an_upsert_leaves() -> None:
    lines = list(generate_lines(3, users=1, seed=1, dim=DIM))
    commands = commands_of([*lines, lines[0]])
    assert peer.distinct_ids(commands) == 3


def test_the_connector_upserts_by_command_id_into_the_table_the_bench_made() -> None:
    props = peer.connector_properties(
        "capture-peer-1", "cmds", "postgresql://bench:p%40ss@127.0.0.1:5433/cw_bench_x", tasks=6
    )
    assert props["name"] == "capture-peer-1"
    assert props["connection.url"] == "jdbc:postgresql://127.0.0.1:5433/cw_bench_x"
    assert (props["connection.username"], props["connection.password"]) == ("bench", "p@ss")
    assert props["insert.mode"] == "upsert"
    assert props["primary.key.mode"] == "record_value"
    assert props["primary.key.fields"] == "command_id"
    assert props["schema.evolution"] == "none"  # the table is the bench's, same shape as ours
    assert props["collection.name.format"] == peer.TABLE
    assert props["tasks.max"] == "6"
    assert any(peer.TABLE in statement for statement in peer.table_ddl(DIM, index=False))
    hnsw = peer.table_ddl(DIM, index=True)[-1]
    assert "USING hnsw (embedding vector_cosine_ops)" in hnsw


def test_every_connect_has_a_connector_and_so_a_consumer_group_of_its_own(
    tmp_path: Path,
) -> None:
    first = peer.ConnectStandalone(Path("libs"), tmp_path, [1])
    second = peer.ConnectDistributed(Path("libs"), tmp_path, [1, 2])
    assert first.name != second.name


def test_a_cluster_member_keeps_its_state_in_topics_and_answers_on_its_own_port(
    tmp_path: Path,
) -> None:
    settings = Settings.model_validate({"KAFKA_BOOTSTRAP_SERVERS": "a:9092"})
    standalone = peer.worker_properties(settings, work_dir=tmp_path, rest_port=1, fetch_bytes=9)
    props = peer.cluster_properties(standalone, "g", "cw-bench-x.peer1-connect", 8084)
    assert "offset.storage.file.filename" not in props
    assert props["group.id"] == "g"
    assert {props[f"{kind}.storage.topic"] for kind in ("config", "offset", "status")} == {
        "cw-bench-x.peer1-connect-configs",
        "cw-bench-x.peer1-connect-offsets",
        "cw-bench-x.peer1-connect-status",
    }
    assert props["listeners"] == "http://127.0.0.1:8084"
    assert props["rest.advertised.port"] == "8084"
    # The rest as standalone: the sink's consumer takes a whole batch per poll.
    assert props["consumer.max.partition.fetch.bytes"] == "9"


def test_the_worker_properties_carry_the_cluster_credentials_to_the_sink_consumer(
    tmp_path: Path,
) -> None:
    settings = Settings.model_validate(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "a:9092,b:9092",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "pw",
        }
    )
    props = peer.worker_properties(settings, work_dir=tmp_path, rest_port=8083, fetch_bytes=9)
    assert props["bootstrap.servers"] == "a:9092,b:9092"
    for prefix in ("", "consumer."):
        assert props[f"{prefix}security.protocol"] == "SASL_PLAINTEXT"
        assert props[f"{prefix}sasl.mechanism"] == "SCRAM-SHA-256"
        assert "ScramLoginModule" in props[f"{prefix}sasl.jaas.config"]
        assert 'password="pw"' in props[f"{prefix}sasl.jaas.config"]
    assert props["consumer.max.partition.fetch.bytes"] == "9"
    assert props["plugin.discovery"] == "service_load"
    assert props["offset.storage.file.filename"].startswith(str(tmp_path))


def test_the_report_gives_each_rounds_ratio_beside_the_median() -> None:
    rounds = [
        Round(b_sql_per_s=10.0, e2e_per_s=e2e, same_state=True, worker_peak_rss=0,
              peer_per_s={6: warm, 1: 4.0}, peer_cold_per_s={6: 2.0, 1: 2.0},
              peer_peak_rss={6: rss * 2**20, 1: 2**30})
        for e2e, warm, rss in ((6.0, 4.0, 900), (4.0, 4.0, 1300), (8.0, 4.0, 1100))
    ]  # fmt: skip
    report = _peer_report(rounds, [6, 1], 2)
    assert report["jvms"] == 2 and "distributed, 2 JVMs" in report["name"]
    assert report["peak_rss_mib"] == {"6": 1300.0, "1": 1024.0}  # the largest round's
    assert report["e2e/peer_by_round"] == {"6": [1.5, 1.0, 2.0], "1": [1.5, 1.0, 2.0]}
    assert report["e2e/peer"] == {"6": 1.5, "1": 1.5}
    line = _warm_ratio("6", report["e2e/peer"]["6"], report["e2e/peer_by_round"]["6"])
    assert line == "[bold]1.50[/] (6 tasks; rounds 1.50, 1.00, 2.00)"
    # One round: its ratio is the median, not repeated.
    assert _warm_ratio("1", 1.5, [1.5]) == "[bold]1.50[/] (1 task)"
