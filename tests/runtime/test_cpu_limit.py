"""A container's CPU quota counts as the CPUs medclf sizes its threads by, not the host's cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medclf.runtime.cpu_limit import cgroup_cpu_quota


def _tree(tmp_path: Path, cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup and a /sys/fs/cgroup made of real files, as a kernel would show them."""
    proc = tmp_path / "cgroup"
    proc.write_text(cgroup)
    root = tmp_path / "sys"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return proc, root


def test_a_cgroup_v2_quota_is_read_in_cpus(tmp_path):
    proc, root = _tree(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(proc, root) == 1.5


def test_no_quota_is_none(tmp_path):
    proc, root = _tree(tmp_path, "0::/user.slice\n", {"user.slice/cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(proc, root) is None


def test_a_quota_set_on_a_parent_cgroup_counts(tmp_path):
    """Kubernetes sets the pod's limit on the pod's cgroup; the container's own cgroup below it says max."""
    proc, root = _tree(tmp_path, "0::/kubepods/pod1/ctr\n", {"kubepods/pod1/ctr/cpu.max": "max 100000",
                                                             "kubepods/pod1/cpu.max": "200000 100000"})
    assert cgroup_cpu_quota(proc, root) == 2.0


def test_a_cgroup_v1_quota_is_read_where_the_container_mounts_its_own_cgroup(tmp_path):
    """Docker on cgroup v1: /proc/self/cgroup names the host's path, the mount holds the container's files."""
    proc, root = _tree(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
                       {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_quota(proc, root) == 3.0


def test_v1_without_a_quota_is_none(tmp_path):
    proc, root = _tree(tmp_path, "4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1",
                                                      "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_quota(proc, root) is None


def test_no_cgroups_at_all_is_none(tmp_path):
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path) is None


CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller, where this machine can make a cgroup


def _quota_cgroup(tmp_name: str) -> Path:
    if not (CPU_CGROUP / "cpu.cfs_quota_us").exists() or not os.access(CPU_CGROUP, os.W_OK):
        pytest.skip("needs a writable cgroup v1 cpu controller (root on a cgroup v1 machine) to make a real quota")
    folder = CPU_CGROUP / tmp_name
    try:
        folder.mkdir(exist_ok=True)
        (folder / "cpu.cfs_quota_us").write_text(str(int((folder / "cpu.cfs_period_us").read_text())))  # 1 CPU
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup with a CPU quota here: {exc}")
    return folder


def test_a_process_under_a_real_one_cpu_quota_uses_one_thread():
    folder = _quota_cgroup(f"medclf-test-{os.getpid()}")
    try:
        script = (f"import os; open({str(folder / 'cgroup.procs')!r}, 'w').write(str(os.getpid())); "
                  "from medclf.runtime.classifier import default_threads; print(default_threads())")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    finally:
        folder.rmdir()
    assert out.stdout.strip() == "1"  # this 2-core machine's affinity mask says 2
