"""docker-compose.yml cannot be started here (no Docker engine), so check it against the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_services_and_health_checks() -> None:
    services = _compose()["services"]
    assert {"milvus", "etcd", "minio", "redis", "api", "ingest-worker", "query-worker"} <= services.keys()
    for name in ("milvus", "etcd", "minio", "redis", "api"):
        assert "healthcheck" in services[name], name
    assert "noeviction" in services["redis"]["command"]


def test_environment_names_real_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        for key in service.get("environment", {}):
            if name in ("api", "ingest-worker", "query-worker"):
                assert key in fields, f"{name}: {key} is not a Quarry setting"


def test_workers_consume_their_own_queue() -> None:
    services = _compose()["services"]
    assert (
        services["ingest-worker"]["command"][services["ingest-worker"]["command"].index("-Q") + 1] == "ingest"
    )
    assert services["query-worker"]["command"][services["query-worker"]["command"].index("-Q") + 1] == "query"


def test_query_worker_pool_matches_the_batch_size() -> None:
    command = _compose()["services"]["query-worker"]["command"]
    assert command[command.index("-P") + 1] == "threads"
    assert int(command[command.index("-c") + 1]) == Settings().query_batch_size
