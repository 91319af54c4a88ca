"""Device/dtype choice, with CUDA availability and the CPU's bf16 flag faked."""

from __future__ import annotations

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
    assert config == DeviceConfig("cuda", torch.float16, 1000, 7)


def test_explicit_cuda_with_a_gpu_takes_its_budget_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_hardware(monkeypatch, cuda=True, bf16=True)
    monkeypatch.setenv("CUDA_TOKEN_BUDGET", "4096")
    monkeypatch.setenv("EMBED_TOKEN_BUDGET", "512")  # the CPU budget: not used on a GPU
    settings = Settings(device="cuda")
    assert choose_device(settings) == DeviceConfig("cuda", torch.float16, 4096, settings.embed_max_batch)


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


def test_configure_threads_sets_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=False, bf16=False)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    configure_threads(Settings(torch_threads=3))
    assert calls == [3]


def test_configure_threads_leaves_cuda_workers_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=True, bf16=False)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    configure_threads(Settings(torch_threads=3))
    assert calls == []
