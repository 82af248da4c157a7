"""Device and numeric precision: which hardware runs the model, and in which dtype."""

from __future__ import annotations

import contextlib

import torch

from .config import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but CUDA is not available here; use device: auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device: 'mps' was asked for but MPS is not available here; use device: auto or cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {name!r} was asked for but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 and AMX; Arm's BF16 extension


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's features that compute bfloat16 natively, from /proc/cpuinfo (empty where unknown).
    Without them PyTorch emulates bf16 matmuls, several times slower than float32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[-1].split())
    return [f for f in BF16_CPU_FLAGS if f in flags]


def choose_dtype(name: str, device: torch.device, cpuinfo: str | None = None) -> tuple[torch.dtype, str]:
    """The compute dtype for autocast, and why. 'auto' = bfloat16 on a GPU that supports it and on a CPU
    with native bf16 (cpu_bf16_flags), else float32."""
    if name == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16, "auto: this GPU supports bfloat16"
            return torch.float32, "auto: this GPU has no bfloat16"
        if device.type == "cpu":
            flags = cpu_bf16_flags(cpuinfo)
            if flags:
                return torch.bfloat16, f"auto: this CPU computes bfloat16 natively ({', '.join(flags)})"
            return torch.float32, "auto: this CPU has no native bfloat16 (no avx512_bf16, amx_bf16 or bf16 flag)"
        return torch.float32, f"auto: float32 on {device.type}"
    if name == "float16" and device.type == "cpu":
        raise ConfigError("dtype: 'float16' is not supported on the CPU; use float32 or bfloat16")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name], "as configured"



def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
