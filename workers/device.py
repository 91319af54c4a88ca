"""Where and in which precision the models run, decided once per worker process from Settings."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from common.settings import Settings
from workers.gate import core_sharers

log = logging.getLogger(__name__)

_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
HALF_PAD_MULTIPLE = 16  # measured on an AMX Xeon: 1.09-1.12x the speed of exact widths (docs/benchmarks.md)


@dataclass(frozen=True)
class DeviceConfig:
    """Device, weight dtype and batching limits for one worker's models."""

    device: str
    dtype: torch.dtype
    token_budget: int  # padded tokens (padded width x batch size) per forward pass
    max_batch: int
    pad_multiple: int = 1  # a pass's width is rounded up to a multiple of this (`padded_width`)

    def padded_width(self, longest: int, limit: int) -> int:
        """The width a pass whose longest text has `longest` tokens is padded to: rounded up to a multiple
        of `pad_multiple`, but never past the model's `limit`. Few widths mean few shapes, and each new
        shape costs oneDNN a kernel build in bf16; AMX multiplies whole 16-row tiles (docs/benchmarks.md)."""
        step = self.pad_multiple
        return max(longest, min(-(-longest // step) * step, limit))


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU executes bf16 natively; emulated bf16 is slower than fp32, so we need the flag."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_CPU_FLAGS.intersection(line.split(":", 1)[-1].split()))
    return False


def cuda_available() -> bool:
    """Indirection so tests can pretend a GPU exists."""
    return torch.cuda.is_available()


def choose_device(settings: Settings) -> DeviceConfig:
    """CUDA in fp16 when available and allowed; otherwise CPU in bf16 (native only) or fp32."""
    if settings.device == "cuda" and not cuda_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA device")
    if settings.device in ("auto", "cuda") and cuda_available():
        return DeviceConfig(
            "cuda",
            torch.float16,
            settings.cuda_token_budget,
            settings.embed_max_batch,
            _pad_multiple(settings, True),
        )
    dtype = torch.bfloat16 if settings.cpu_bf16 and cpu_has_native_bf16() else torch.float32
    return DeviceConfig(
        "cpu",
        dtype,
        settings.embed_token_budget,
        settings.embed_max_batch,
        _pad_multiple(settings, dtype != torch.float32),
    )


def _pad_multiple(settings: Settings, half: bool) -> int:
    """EMBED_PAD_MULTIPLE, or when unset 16 tokens in bf16/fp16 (the tile height) and none in fp32."""
    if settings.embed_pad_multiple is not None:
        return settings.embed_pad_multiple
    return HALF_PAD_MULTIPLE if half else 1


def configure_threads(settings: Settings) -> None:
    """Cap intra-op threads so concurrent worker processes don't oversubscribe the cores (call after fork).

    NumPy's BLAS (OpenBLAS) gets one thread in every model worker: its threads busy-wait ~0.1 s after each
    multiply (the reranker's MaxSim, exact search), stealing the cores from the next forward pass. Measured
    on 2 cores: a question's embedding right after a reranked one took 23 ms instead of 10 (p75 104 ms)."""
    threadpool_limits(limits=1, user_api="blas")
    if choose_device(settings).device != "cpu":
        return
    sharers = core_sharers()
    threads = settings.threads_per_process(sharers)
    torch.set_num_threads(threads)
    log.info(
        "torch intra-op threads set to %d (%d process(es) share the cores; nice %d)",
        threads,
        sharers,
        os.nice(0),
    )
