"""create + start + wait of a busybox ``true`` bundle: vmsandbox-runtime (process backend) vs bare runc.

Three series, interleaved run by run so that machine load affects them alike:

* ``runc``: ``runc create`` + ``runc start`` + waiting for the container's exit (this process is
  a child subreaper, so the orphaned container init comes back to it);
* ``sandbox``: ``Runtime.create`` of a pod sandbox (boots the agent: the process backend's "VM")
  + ``start`` + waiting for the relay pid, the way a runc caller waits;
* ``sandbox, netns``: the same with a network namespace of its own (made here, holding only
  loopback), as the node agent always gives one; the process backend's warm pool cannot serve it;
* ``sandbox, pool``: a pod sandbox again, with the process backend's warm pool
  (``VMSANDBOX_PROCESS_POOL=2``): boot adopts an idle agent and refills the pool in the background;
* ``pod container``: the same for a container joining an already running sandbox, which is the
  per-container cost once the VM is up.

Each series is measured for the commit before a change (``--against``, default ``main``, checked
out as a temporary git worktree) and for the new code, in alternating chunks of runs, and printed
old beside new. Target: the new ``sandbox`` overhead over runc, median <= 100 ms.

Usage: ``python bench/runtime_create.py [--runs 50] [--chunk 5] [--against main]``. Needs root,
runc and busybox-static.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import baseline_tree, describe, load, measure, use_tree

TREE = use_tree()
from vmsandbox.hypervisor.network import NetworkAttachment  # noqa: E402
from vmsandbox.hypervisor.process import ProcessDriver  # noqa: E402
from vmsandbox.runtime import Runtime  # noqa: E402

BUSYBOX = Path("/bin/busybox")
POOL_ENV = "VMSANDBOX_PROCESS_POOL"


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


def run_ours(rt: Runtime, bundle_dir: Path, cid: str, network: NetworkAttachment | None = None) -> float:
    t0 = time.perf_counter()
    state = rt.create(cid, bundle_dir, network=network)
    rt.start(cid)
    code = wait_pid(state.pid)
    elapsed = time.perf_counter() - t0
    rt.delete(cid)
    assert code == 0
    return elapsed


SERIES = ("runc", "sandbox", "sandbox, netns", "sandbox, pool", "pod container")


def measure_chunk(runs: int) -> dict[str, list[float]]:
    """``runs`` rounds of every series against the tree this process imports (``--measure``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: runc's container inits come back to us

    work = Path(tempfile.mkdtemp(prefix="vrb", dir="/tmp"))
    netns_name = f"vrb-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns_name], check=True)
    netns = NetworkAttachment(netns=Path(f"/run/netns/{netns_name}"))
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
        os.environ[POOL_ENV] = "2"
        pooled = Runtime(root=work / "pooled", hypervisor="process")
        pooled.driver()  # the pool size is read once, with the settings (old trees: with the driver)
        del os.environ[POOL_ENV]
        fns: dict[str, Callable[[int], float]] = {
            "runc": lambda i: run_runc(runc_state, plain, f"r{i}"),
            "sandbox": lambda i: run_ours(rt, plain, f"s{i}"),
            "sandbox, netns": lambda i: run_ours(rt, plain, f"n{i}", netns),
            "sandbox, pool": lambda i: run_ours(pooled, plain, f"w{i}"),
            "pod container": lambda i: run_ours(rt, member, f"p{i}"),
        }
        series: dict[str, list[float]] = {name: [] for name in fns}
        for fn in fns.values():  # warm-up, not recorded
            fn(-1)
        for i in range(runs):
            for name, fn in fns.items():
                series[name].append(fn(i) * 1000)
        rt.delete("bench-sandbox", force=True)
        ProcessDriver.drain_pool(work / "pooled" / ".vms")
        ProcessDriver.drain_pool(work / "root" / ".vms")
    finally:
        subprocess.run(["ip", "netns", "del", netns_name], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return series


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=5, help="runs per tree before switching")
    parser.add_argument("--against", default="main", help="old code: where HEAD forked from this ref")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_chunk(args.runs)))
        return

    script = Path(__file__).resolve()
    results: dict[str, dict[str, list[float]]] = {t: {name: [] for name in SERIES} for t in ("old", "new")}
    with baseline_tree(args.against) as old:
        trees = {"old": old, "new": TREE}
        done = 0
        while done < args.runs:
            chunk = min(args.chunk, args.runs - done)
            for label in ("old", "new"):
                series = measure(script, trees[label], ["--runs", str(chunk)])
                for name in SERIES:
                    results[label][name] += series[name]
            done += chunk
            print(f"{done}/{args.runs} runs", file=sys.stderr, flush=True)

    print(f"create + start + wait of busybox `true`, {args.runs} runs each; old = {args.against}; {load()}")
    print(f"{'ms':<28} {'old':<32} new")
    for name in SERIES:
        print(f"{name:<28} {describe(results['old'][name]):<32} {describe(results['new'][name])}")
    for name in SERIES[1:]:
        overhead = {
            label: statistics.median(results[label][name]) - statistics.median(results[label]["runc"])
            for label in results
        }
        old, new = f"median {overhead['old']:+8.1f}", f"median {overhead['new']:+8.1f}"
        print(f"{name + ' overhead vs runc':<28} {old:<32} {new}")
    print("target: the new sandbox overhead vs runc, median <= 100 ms")


if __name__ == "__main__":
    main()
