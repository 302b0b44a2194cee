"""How many CPUs this process may use: its affinity mask, narrowed by its container's CPU quota.

A container started with ``docker run --cpus 2`` (or a Kubernetes CPU limit) on a 32-core workstation sees all 32
cores in its affinity mask; the limit is a cgroup quota, time per period, that the kernel enforces by stopping
the whole container once it is spent. Sized by the mask, onnxruntime's 32 spinning threads spend two CPUs' quota
in a sixteenth of each period and stall for the rest. Measured here (packaged model, 2-core machine, a 1-CPU
quota): 2 threads 9.8 ms per image, 155 images/s at batch 32 and 120 images/s over a folder, against 1 thread's
2.2 ms, 384 and 306. So the quota counts as CPUs, rounded down (as uber-go/automaxprocs does), at least one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask (taskset, cpusets) or, when smaller, its cgroup's CPU
    quota (docker ``--cpus``, Kubernetes limits)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return cpus if quota is None else max(1, min(cpus, math.floor(quota)))


def cgroup_cpu_quota(proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
                     root: str | os.PathLike[str] = "/sys/fs/cgroup") -> float | None:
    """The smallest CPU quota, in CPUs, on this process's cgroup or any cgroup above it; None where there is none
    or it cannot be read (no cgroups: macOS, Windows). Reads cgroup v2's ``cpu.max`` and v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:  # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            quotas += [_v2_quota(folder) for folder in _folders(Path(root), path)]
        elif "cpu" in controllers.split(","):
            quotas += [_v1_quota(folder) for folder in _folders(Path(root) / controllers, path)]
    quotas = [quota for quota in quotas if quota is not None]
    return min(quotas) if quotas else None


def _folders(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and every folder above it up to the mount. Inside a container the mount is the
    container's own cgroup while ``path`` may still name it as the host sees it; the mount itself is read too."""
    folder = mount / path.strip("/")
    return [folder, *folder.parents[:len(folder.relative_to(mount).parts)]] if path.strip("/") else [mount]


def _v2_quota(folder: Path) -> float | None:
    fields = _read(folder / "cpu.max").split()  # "max 100000" or "200000 100000"
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(folder: Path) -> float | None:
    return _ratio(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))  # quota -1: none


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
