"""The machine a benchmark ran on, in one line: CPU model, core count, and the instruction-set flags that
decide float32 / bfloat16 matmul speed (every benchmark prints it beside its numbers)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def describe() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, flags: {' '.join(f for f in FLAGS if f in flags) or 'none'}"
