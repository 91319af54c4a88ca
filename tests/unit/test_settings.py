from __future__ import annotations

import pytest
from pydantic import ValidationError

import celeryconfig
from common import contracts
from common.settings import OFFLINE_EMBEDDING_MODEL, RENAMED, Settings


def test_defaults_run_offline_on_the_bundled_model() -> None:
    settings = Settings()
    assert settings.embedding_model == OFFLINE_EMBEDDING_MODEL
    assert settings.reranker_backend == "maxsim"
    assert settings.broker == settings.redis_url == settings.result_backend
    assert settings.uploads == settings.data_dir / "uploads"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILVUS_URI", "http://milvus:19530")
    monkeypatch.setenv("HNSW_M", "32")
    monkeypatch.setenv("BROKER_URL", "amqp://guest@localhost//")
    settings = Settings()
    assert settings.milvus_uri == "http://milvus:19530"
    assert settings.hnsw_m == 32
    assert settings.broker == "amqp://guest@localhost//"


@pytest.mark.parametrize(
    "overrides",
    [
        {"chunk_tokens": 100, "chunk_overlap_tokens": 100},
        {"task_soft_time_limit_s": 100, "task_time_limit_s": 50},
        {"default_top_k": 50, "max_top_k": 10},
        {"embedding_model": "  "},
        {"reranker_backend": "magic"},
    ],
)
def test_inconsistent_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)  # type: ignore[arg-type]


def test_every_model_worker_gets_every_core_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest and ask workers take turns on the device (workers.gate), so each may use all of it."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings(ingest_concurrency=1, ask_concurrency=3).threads_per_worker == 2
    assert Settings(torch_threads=1).threads_per_worker == 1  # the split of the earlier design


def test_ingest_processes_share_a_cpu_and_one_holds_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    settings = Settings()
    assert settings.ingest_processes(gpu=False) == 2 and settings.ingest_processes(gpu=True) == 1
    assert settings.threads_per_process(2) == 4 and settings.threads_per_process(16) == 1  # never 0
    assert Settings(ingest_concurrency=3).ingest_processes(gpu=True) == 3  # set: as set
    assert Settings(torch_threads=3).threads_per_process(2) == 3  # set: per process, as documented


def test_celery_config_follows_settings() -> None:
    config = celeryconfig.from_settings(Settings(task_time_limit_s=600, task_soft_time_limit_s=500))
    assert config["task_acks_late"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["accept_content"] == ["json"]
    assert config["broker_transport_options"]["visibility_timeout"] > config["task_time_limit"] == 600
    assert config["task_routes"][contracts.INGEST_TASK]["queue"] == "parse"
    assert config["task_routes"][contracts.INGEST_BATCH_TASK]["queue"] == "ingest"
    assert config["task_routes"][contracts.ASK_TASK]["queue"] == "ask"


def test_a_renamed_setting_is_still_read_under_its_old_name_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("QUERY_BATCH_SIZE", "5")
    monkeypatch.setenv("MAX_QUERY_QUEUE", "7")
    with caplog.at_level("WARNING", logger="common.settings"):
        settings = Settings(_env_file=None)
    assert (settings.ask_batch_size, settings.max_ask_queue) == (5, 7)
    assert "QUERY_BATCH_SIZE is deprecated: set ASK_BATCH_SIZE (read for now)" in caplog.text
    monkeypatch.setenv("ASK_BATCH_SIZE", "9")  # the new name wins, and the warning says the old is ignored
    caplog.clear()
    with caplog.at_level("WARNING", logger="common.settings"):
        assert Settings(_env_file=None).ask_batch_size == 9
    assert "QUERY_BATCH_SIZE is deprecated: set ASK_BATCH_SIZE (ignored: it is set too)" in caplog.text


def test_every_renamed_setting_exists_under_its_new_name() -> None:
    assert set(RENAMED) <= set(Settings.model_fields)
    assert not set(RENAMED.values()) & set(Settings.model_fields)
    assert Settings(ask_concurrency=3, _env_file=None).ask_concurrency == 3  # code and tests use the new name
