"""docker-compose.yml and the Dockerfile cannot be run here (no Docker engine), so they are checked against
what they must agree with: the settings, the Celery routes and devstack's API command. Where the Docker CLI
has compose, `docker compose config` validates the files too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

import celeryconfig
from common import contracts
from common.settings import Settings
from devstack.processes import api_argv

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
# Variables of Quarry containers that are not Quarry settings, each read by a library.
NOT_SETTINGS = {"HF_HOME"}  # huggingface_hub's cache: the `models` volume
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's own tags (`!reset` empties a key of the file below)."""


_ComposeLoader.add_constructor("!reset", lambda _loader, _node: None)


def _interpolate(value: Any) -> Any:
    """Compose's `${VAR:-default}` with every variable unset, so the defaults are what is checked."""
    if isinstance(value, str):
        escaped = value.replace("$$", "\0")
        return _VARIABLE.sub(lambda m: m.group(2) or "", escaped).replace("\0", "$")
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    return value


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)
    return _interpolate(loaded)  # type: ignore[no-any-return]


def _services() -> dict[str, dict[str, Any]]:
    return _load(COMPOSE)["services"]  # type: ignore[no-any-return]


def _quarry_services() -> dict[str, dict[str, Any]]:
    """Services that run Quarry's own image (API, workers, Flower)."""
    return {name: svc for name, svc in _services().items() if svc["image"].startswith("quarry:")}


def _workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _quarry_services().items() if "worker" in svc.get("command", [])}


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in service.get("environment", {}).items()}


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a container with this environment builds them."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_every_image_is_pinned() -> None:
    for name, service in _services().items():
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: pin a tag, not {service['image']!r}"
    base = next(line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("FROM"))
    assert base.startswith("python:3.11-slim"), base


def test_quarry_image_is_tagged_with_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {svc["image"] for svc in _quarry_services().values()} == {f"quarry:{version}"}


def test_health_checks() -> None:
    services = _services()
    for name in ("etcd", "minio", "milvus", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    # The image's HEALTHCHECK probes the API: every other role needs its own.
    for name, service in _quarry_services().items():
        assert service["healthcheck"]["test"], name
    for name, service in _workers().items():
        node = _flag(service["command"], "-n").split("@")[0]
        assert f"-d {node}@$HOSTNAME" in service["healthcheck"]["test"][1], name


def test_milvus_standalone_is_2_5_or_newer_and_waits_for_etcd_and_minio() -> None:
    milvus = _services()["milvus"]
    version = re.fullmatch(r"milvusdb/milvus:v(\d+)\.(\d+)\.(\d+)", milvus["image"])
    assert version is not None and tuple(map(int, version.groups())) >= (2, 5, 0)  # BM25 functions
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["depends_on"] == {
        "etcd": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
    }
    assert _env(milvus) | {"ETCD_ENDPOINTS": "etcd:2379", "MINIO_ADDRESS": "minio:9000"} == _env(milvus)


def test_quarry_waits_for_healthy_redis_and_milvus() -> None:
    for name, service in _quarry_services().items():
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}, name
        if name != "flower":
            assert service["depends_on"]["milvus"] == {"condition": "service_healthy"}, name
        assert _env(service)["REDIS_URL"] == "redis://redis:6379/0", name


def test_redis_never_evicts_and_persists_its_queue() -> None:
    command = _services()["redis"]["command"]
    assert _flag(command, "--maxmemory-policy") == "noeviction"
    assert _flag(command, "--appendonly") == "yes"


GPU0 = [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
GPU1 = [{"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]}]


def _gpus(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service["deploy"]["resources"]["reservations"]["devices"]  # type: ignore[no-any-return]


def _gate_volume(service: dict[str, Any]) -> str:
    """The volume holding the service's DEVICE_GATE file."""
    gate_dir = str(Path(_env(service)["DEVICE_GATE"]).parent)
    return next(v.split(":")[0] for v in service["volumes"] if v.endswith(f":{gate_dir}"))


def test_ask_worker_batches_on_threads_on_gpu_0() -> None:
    worker = _services()["ask-worker"]
    assert _gpus(worker) == GPU0 and _env(worker)["DEVICE"] == "cuda"
    command = worker["command"]
    # One process whose task threads feed its micro-batcher: never solo (one question at a time) or prefork.
    assert _flag(command, "-P") == "threads"
    assert int(_flag(command, "-c")) == Settings().ask_batch_size == int(_env(worker)["ASK_BATCH_SIZE"])


def test_ingest_worker_embeds_on_the_same_gpu_in_a_prefork_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _services()
    worker, query = services["ingest-worker"], services["ask-worker"]
    assert _gpus(worker) == GPU0 and _env(worker)["DEVICE"] == "cuda"
    assert "-P" not in worker["command"]  # prefork: hard time limits, a killed batch redelivered at once
    assert _flag(worker["command"], "-Q") == contracts.INGEST_QUEUE
    settings = _settings_from(_env(worker), monkeypatch)
    assert int(_flag(worker["command"], "-c")) == settings.ingest_processes(gpu=True) == 1  # one model copy
    # The pair takes turns by one lock file in a volume only the two of them mount.
    assert _env(worker)["DEVICE_GATE"] == _env(query)["DEVICE_GATE"]
    assert _gate_volume(worker) == _gate_volume(query) == "gate-gpu0"
    assert settings.question_gate and settings.torch_threads is None


def test_each_further_gpu_is_the_same_pair_pinned_with_its_own_gate() -> None:
    services = _services()
    for name in ("ingest-worker", "ask-worker"):
        first, second = services[name], services[f"{name}-gpu1"]
        assert second["profiles"] == ["gpu1"]
        assert second["command"] == first["command"] and second["environment"] == first["environment"]
        assert _gpus(second) == GPU1 and _gate_volume(second) == "gate-gpu1"


def test_parse_worker_runs_on_the_cpu_without_a_model() -> None:
    worker = _services()["parse-worker"]
    assert "deploy" not in worker and _env(worker)["DEVICE"] == "cpu"
    assert _flag(worker["command"], "-Q") == contracts.PARSE_QUEUE
    routed = {task for task, queue in contracts.TASK_QUEUES.items() if queue == contracts.PARSE_QUEUE}
    assert routed == {contracts.INGEST_TASK}  # the coordinator: parsing and fan-out, never a model


def test_every_variable_is_a_setting_that_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name, service in _quarry_services().items():
        env = _env(service)
        unknown = set(env) - fields - NOT_SETTINGS
        assert not unknown, f"{name}: {sorted(unknown)} are not Quarry settings"
        with monkeypatch.context() as patch:
            settings = _settings_from(env, patch)
        for key, value in env.items():
            if key.lower() in Settings.model_fields and key not in {"API_KEYS"}:
                actual = getattr(settings, key.lower())
                if isinstance(actual, SecretStr):
                    actual = actual.get_secret_value()
                if isinstance(actual, list):  # JSON in the environment
                    assert actual == json.loads(value), f"{name}: {key}"
                else:
                    assert str(actual).lower() == value.lower(), f"{name}: {key}"


def test_models_agree_between_api_and_workers() -> None:
    keys = ("EMBEDDING_MODEL", "RERANKER_BACKEND", "RERANKER_MODEL", "TASK_EVENTS")
    seen = {tuple(_env(svc)[key] for key in keys) for svc in _quarry_services().values()}
    assert seen == {("BAAI/bge-small-en-v1.5", "cross-encoder", "BAAI/bge-reranker-v2-m3", "true")}


def test_every_routed_queue_has_a_consumer() -> None:
    config = celeryconfig.from_settings(Settings())
    routed = {route["queue"] for route in config["task_routes"].values()} | {config["task_default_queue"]}
    consumed = {
        queue
        for name, service in _workers().items()
        if "profiles" not in service
        for queue in _flag(service["command"], "-Q").split(",")
    }
    assert routed == consumed


def test_flower_watches_task_events() -> None:
    flower = _services()["flower"]
    assert flower["command"][:4] == ["celery", "-A", "workers.app", "flower"]
    assert "--port=5555" in flower["command"] and flower["ports"] == ["127.0.0.1:5555:5555"]
    on = celeryconfig.from_settings(Settings(task_events=True))
    off = celeryconfig.from_settings(Settings())
    assert on["worker_send_task_events"] and on["task_send_sent_event"]
    assert not off["worker_send_task_events"] and not off["task_send_sent_event"]


def test_the_api_and_the_workers_share_no_volume_uploads_go_to_minio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any of them may run on another host: uploads and batch files go to a bucket of the stack's MinIO
    (with MinIO's own keys), and only the model workers mount the model cache."""
    compose = _load(COMPOSE)
    assert "uploads" not in compose["volumes"]
    services = compose["services"]
    mounted = lambda name: {v.split(":")[0] for v in services[name].get("volumes", [])}  # noqa: E731
    assert mounted("api") == set()
    minio = services["minio"]["environment"]
    for name in ("api", *_workers()):
        settings = _settings_from(_env(services[name]), monkeypatch)
        assert settings.upload_store == "s3" and settings.s3_endpoint_url == "http://minio:9000", name
        assert settings.s3_access_key_id is not None and settings.s3_secret_access_key is not None
        keys = (
            settings.s3_access_key_id.get_secret_value(),
            settings.s3_secret_access_key.get_secret_value(),
        )
        assert keys == (minio["MINIO_ACCESS_KEY"], minio["MINIO_SECRET_KEY"]), name
        assert "minio" in services[name]["depends_on"], name
        assert not mounted(name) & mounted("api"), name
        queues = _flag(services[name]["command"], "-Q") if name != "api" else ""
        if queues in ("ingest", "ask"):
            assert f"models:{_env(services[name])['HF_HOME']}" in services[name]["volumes"], name
        else:
            assert "models" not in mounted(name), name  # no model: no cache


def test_prometheus_directory_is_an_empty_tmpfs_for_the_api_only() -> None:
    services = _quarry_services()
    api = services.pop("api")
    assert api["tmpfs"] == [_env(api)["PROMETHEUS_MULTIPROC_DIR"]]
    assert all("PROMETHEUS_MULTIPROC_DIR" not in _env(svc) for svc in services.values())


def test_cpu_override_runs_two_ingest_processes_sharing_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    base, override = _services()["ingest-worker"], _load(CPU_OVERRIDE)["services"]["ingest-worker"]
    settings = _settings_from(_env(base) | _env(override), monkeypatch)
    assert int(_flag(override["command"], "-c")) == settings.ingest_processes(gpu=False) == 2
    # The same worker otherwise: only its pool size differs from the GPU's.
    changed = [i for i, (a, b) in enumerate(zip(base["command"], override["command"], strict=True)) if a != b]
    assert [base["command"][i - 1] for i in changed] == ["-c"]


def test_cpu_override_moves_both_model_workers_to_the_cpu() -> None:
    override = _load(CPU_OVERRIDE)["services"]
    for name in ("ingest-worker", "ask-worker"):
        worker = override[name]
        assert worker["deploy"] is None, name  # `!reset`: no GPU reservation
        assert worker["environment"]["DEVICE"] == "cpu", name
        assert "TORCH_THREADS" not in worker["environment"], name  # both get every core and take turns
        # The API picks each question's reranker: it must default to the one the worker is set up for.
        assert override["api"]["environment"]["RERANKER_BACKEND"] == worker["environment"]["RERANKER_BACKEND"]
    # Containers are weighed against each other before any nice value counts: bulk gets nice 10's weight.
    assert override["ingest-worker"]["cpu_shares"] == 110 and "cpu_shares" not in override["ask-worker"]


def _in_image(arg: str) -> str:
    """devstack's argument as the image spells it: the checkout is /app there."""
    path = Path(arg)
    if not (path.is_absolute() and path.is_relative_to(ROOT)):
        return arg
    return f"/app/{path.relative_to(ROOT).as_posix()}"


def test_dockerfile_runs_the_api_as_devstack_does() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    assert "WORKDIR /app" in lines
    assert cmd == ["python", *(_in_image(arg) for arg in api_argv("0.0.0.0", 8000)[1:])]
    user = next(line.split()[1] for line in lines if line.startswith("USER "))
    assert user not in {"root", "0"}
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert "pip install -r requirements.txt" in DOCKERFILE.read_text(encoding="utf-8")


def _compose_cli() -> str | None:
    """Why `docker compose` cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else f"`docker compose version` failed: {probe.stderr.strip()}"


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, CPU_OVERRIDE]], ids=["gpu", "cpu"])
def test_docker_compose_config_accepts_the_files(files: list[Path]) -> None:
    reason = _compose_cli()
    if reason is not None:
        pytest.skip(f"docker compose is not available ({reason}); the YAML checks above still ran")
    args = [arg for path in files for arg in ("-f", str(path))]
    result = subprocess.run(
        ["docker", "compose", *args, "config", "-q"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_image_lets_its_user_write_the_gate_volume() -> None:
    """A named volume inherits the ownership of the image's directory: the gate's must be the user's."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    gate_dir = str(Path(_env(_services()["ingest-worker"])["DEVICE_GATE"]).parent)
    assert re.search(rf"mkdir -p [^\n]*{gate_dir}", text)
    assert re.search(rf"chown quarry:quarry [^\n]*{gate_dir}", text)
