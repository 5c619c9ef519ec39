"""The machine a benchmark ran on, recorded with every result."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path


def machine(*packages: str) -> dict:
    """CPU model, cores, memory, GPU, load average, and the versions of `packages`."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    info = {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            # Read after the runs: other work on the machine slows them.
            "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()]}
    for name in packages:
        info[name] = importlib.import_module(name).__version__
    if "torch" in packages:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info
