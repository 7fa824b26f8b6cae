"""create + start + wait of a busybox ``true`` bundle: vmsandbox-runtime (process backend) vs bare runc.

Three series, interleaved run by run so that machine load affects them alike:

* ``runc``: ``runc create`` + ``runc start`` + waiting for the container's exit (this process is
  a child subreaper, so the orphaned container init comes back to it);
* ``sandbox``: ``Runtime.create`` of a pod sandbox (boots the agent: the process backend's "VM")
  + ``start`` + waiting for the relay pid, the way a runc caller waits;
* ``sandbox, pool``: a pod sandbox again, with the process backend's warm pool
  (``VMSANDBOX_PROCESS_POOL=2``): boot adopts an idle agent and refills the pool in the background;
* ``pod container``: the same for a container joining an already running sandbox, which is the
  per-container cost once the VM is up.

Usage: ``python bench/runtime_create.py [--runs 50]``. Needs root, runc and busybox-static.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vmsandbox.hypervisor.process import POOL_ENV, ProcessDriver
from vmsandbox.runtime import Runtime

BUSYBOX = Path("/bin/busybox")


def bundle(dest: Path, args: list[str], annotations: dict[str, str] | None = None) -> Path:
    rootfs = dest / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sh", "true", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    config = {
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
    }
    if annotations:
        config["annotations"] = annotations
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def wait_pid(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_runc(state: Path, bundle_dir: Path, cid: str) -> float:
    pid_file = state / f"{cid}.pid"
    t0 = time.perf_counter()
    create = ["create", "--bundle", str(bundle_dir), "--pid-file", str(pid_file), cid]
    subprocess.run(
        ["runc", "--root", str(state), *create],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["runc", "--root", str(state), "start", cid], check=True)
    code = wait_pid(int(pid_file.read_text()))
    elapsed = time.perf_counter() - t0
    subprocess.run(["runc", "--root", str(state), "delete", cid], check=True)
    assert code == 0
    return elapsed


def run_ours(rt: Runtime, bundle_dir: Path, cid: str) -> float:
    t0 = time.perf_counter()
    state = rt.create(cid, bundle_dir)
    rt.start(cid)
    code = wait_pid(state.pid)
    elapsed = time.perf_counter() - t0
    rt.delete(cid)
    assert code == 0
    return elapsed


def summary(name: str, samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    median = statistics.median(ms)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(f"{name:<15} median {median:8.1f} ms   p95 {p95:8.1f} ms   (n={len(ms)})")
    return median, p95


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: runc's container inits come back to us

    work = Path(tempfile.mkdtemp(prefix="vrb", dir="/tmp"))
    try:
        runc_state = work / "runc"
        plain = bundle(work / "true", ["true"])
        rt = Runtime(root=work / "root", hypervisor="process")
        sandbox = bundle(work / "sandbox", ["sleep", "100000"])
        rt.create("bench-sandbox", sandbox)
        rt.start("bench-sandbox")
        member = bundle(
            work / "member",
            ["true"],
            {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.sandbox-id": "bench-sandbox",
            },
        )
        pooled = Runtime(root=work / "pooled", hypervisor="process")
        os.environ[POOL_ENV] = "2"
        pooled.driver()  # the driver reads the pool size once, when it is made
        del os.environ[POOL_ENV]
        runs: dict[str, Callable[[int], float]] = {
            "runc": lambda i: run_runc(runc_state, plain, f"r{i}"),
            "sandbox": lambda i: run_ours(rt, plain, f"s{i}"),
            "sandbox, pool": lambda i: run_ours(pooled, plain, f"w{i}"),
            "pod container": lambda i: run_ours(rt, member, f"p{i}"),
        }
        series: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up, not recorded
            fn(-1)
        for i in range(args.runs):
            for name, fn in runs.items():
                series[name].append(fn(i))
        rt.delete("bench-sandbox", force=True)
        ProcessDriver.drain_pool(work / "pooled" / ".vms")

        load = os.getloadavg()[0]
        print(f"create + start + wait of busybox `true`, {args.runs} runs each, load average {load:.1f}")
        base, base_p95 = summary("runc", series["runc"])
        for name in ("sandbox", "sandbox, pool", "pod container"):
            median, p95 = summary(name, series[name])
            print(
                f"{'':<15} overhead vs runc: median +{median - base:.1f} ms, p95 +{p95 - base_p95:.1f} ms, "
                f"ratio {median / base:.2f}x"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
