"""Device/dtype choice, with CUDA availability and the CPU's bf16 flag faked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.settings import Settings
from workers import device
from workers.device import DeviceConfig, choose_device, configure_threads, cpu_has_native_bf16


def fake_hardware(monkeypatch: pytest.MonkeyPatch, *, cuda: bool, bf16: bool) -> None:
    monkeypatch.setattr(device, "cuda_available", lambda: cuda)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: bf16)


def test_auto_prefers_cuda_in_fp16_with_the_cuda_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=True, bf16=True)
    config = choose_device(Settings(device="auto", cuda_token_budget=1000, embed_max_batch=7))
    assert config == DeviceConfig("cuda", torch.float16, 1000, 7, pad_multiple=16)


def test_explicit_cuda_with_a_gpu_takes_its_budget_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_hardware(monkeypatch, cuda=True, bf16=True)
    monkeypatch.setenv("CUDA_TOKEN_BUDGET", "4096")
    monkeypatch.setenv("EMBED_TOKEN_BUDGET", "512")  # the CPU budget: not used on a GPU
    settings = Settings(device="cuda")
    assert choose_device(settings) == DeviceConfig("cuda", torch.float16, 4096, settings.embed_max_batch, 16)


@pytest.mark.parametrize(
    ("cuda", "bf16", "explicit", "expected"),
    [
        (False, True, None, 16),  # bf16: whole 16-row tiles, few shapes
        (False, False, None, 1),  # fp32: exact widths
        (True, False, None, 16),  # fp16 on a GPU
        (False, True, 1, 1),  # EMBED_PAD_MULTIPLE wins
        (False, False, 8, 8),
    ],
)
def test_pad_multiple_follows_the_dtype_unless_set(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, bf16: bool, explicit: int | None, expected: int
) -> None:
    fake_hardware(monkeypatch, cuda=cuda, bf16=bf16)
    assert choose_device(Settings(embed_pad_multiple=explicit)).pad_multiple == expected


@pytest.mark.parametrize(
    ("longest", "step", "limit", "width"),
    [
        (17, 16, 256, 32),
        (16, 16, 256, 16),
        (1, 16, 256, 16),
        (250, 16, 256, 256),  # rounded up
        (250, 16, 252, 252),  # but never past the model's limit
        (300, 16, 256, 300),  # nor below the longest (not reached: texts are truncated to the limit)
        (17, 1, 256, 17),
    ],
)
def test_padded_width(longest: int, step: int, limit: int, width: int) -> None:
    config = DeviceConfig("cpu", torch.bfloat16, 2048, 128, pad_multiple=step)
    assert config.padded_width(longest, limit) == width


def test_cpu_forced_even_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=True, bf16=False)
    config = choose_device(Settings(device="cpu", embed_token_budget=500))
    assert (config.device, config.dtype, config.token_budget) == ("cpu", torch.float32, 500)


@pytest.mark.parametrize(
    ("cpu_bf16", "native", "expected"),
    [(True, True, torch.bfloat16), (True, False, torch.float32), (False, True, torch.float32)],
)
def test_cpu_dtype_needs_setting_and_native_support(
    monkeypatch: pytest.MonkeyPatch, cpu_bf16: bool, native: bool, expected: torch.dtype
) -> None:
    fake_hardware(monkeypatch, cuda=False, bf16=native)
    config = choose_device(Settings(device="auto", cpu_bf16=cpu_bf16))
    assert config.device == "cpu"
    assert config.dtype == expected


def test_cuda_requested_but_missing_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=False, bf16=False)
    with pytest.raises(RuntimeError, match="cuda"):
        choose_device(Settings(device="cuda"))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True), ("fpu avx2 avx512f", False)],
)
def test_bf16_flag_parsing(tmp_path: Path, flags: str, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(cpuinfo) is expected


def test_bf16_flag_missing_file_means_no(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(tmp_path / "absent") is False


def _record_blas_limits(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """configure_threads' BLAS cap, recorded instead of applied to the test process."""
    limits: list[dict[str, object]] = []
    monkeypatch.setattr(device, "threadpool_limits", lambda **kw: limits.append(kw))
    return limits


def test_configure_threads_sets_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=False, bf16=False)
    limits = _record_blas_limits(monkeypatch)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    configure_threads(Settings(torch_threads=3))
    assert calls == [3]
    assert limits == [{"limits": 1, "user_api": "blas"}]


def test_an_ingest_workers_children_split_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=False, bf16=False)
    _record_blas_limits(monkeypatch)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(device, "core_sharers", lambda: 2)  # what worker_init decided for `-Q ingest -c 2`
    configure_threads(Settings())
    monkeypatch.setattr(device, "core_sharers", lambda: 1)  # an ask worker
    configure_threads(Settings())
    assert calls == [2, 4]


def test_configure_threads_leaves_cuda_workers_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=True, bf16=False)
    limits = _record_blas_limits(monkeypatch)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    configure_threads(Settings(torch_threads=3))
    assert calls == []
    assert limits == [{"limits": 1, "user_api": "blas"}]  # NumPy's BLAS threads would still spin on the CPU


def test_configure_threads_leaves_numpy_one_blas_thread() -> None:
    """In a process of its own (the cap is process-wide): OpenBLAS starts with a thread per core, then 1."""
    script = (
        "import json; from threadpoolctl import threadpool_info\n"
        "import numpy\n"
        "from common.settings import Settings; from workers.device import configure_threads\n"
        "blas = lambda: [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']\n"
        "before = blas(); configure_threads(Settings(device='cpu', torch_threads=2))\n"
        "print(json.dumps([before, blas()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before, "NumPy has no BLAS threadpool to cap"
    if max(before) == 1:
        pytest.skip("one core: OpenBLAS already runs one thread")
    assert after == [1] * len(before)
