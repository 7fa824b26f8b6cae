"""Warm starts: cold create->Running beside a booted-pool claim and a snapshot-pool claim.

Everything is real: the local control plane, a loopback registry with a busybox image, the node
agent as its own process and QEMU guests (TCG here; ``--hypervisor cloud-hypervisor`` runs the
stand-in instead, whose figures carry no target). The benchmark plays the operator: it creates
each sandbox already placed on the node (label, then ``status.nodeName``) and writes each pool's
``status.nodes``. A sample is the time from the create call to this process seeing ``Running``.

Per mode, ``--runs`` sandboxes one after the other (each deleted before the next):

* cold: no pool (the baseline, measured in the same run);
* booted: a pool of 1 booted member; before each claim the member is ready (the agent refills
  it in the background, not counted);
* snapshot: a snapshot pool; each claim restores a copy of the node's snapshot.

Also reported: the guest's container create inside a warm claim (``bootTimings.containerCreate``)
and its share of the claim, and the idle memory of each pool: the summed RSS of the processes
holding an idle booted member (the VMM) against those of an idle snapshot pool (none: only its
files, whose size is given too), for a pool of ``--pool-size`` members.

Targets: booted claim p50 <= 20% of cold p50; snapshot claim p50 <= 40% of cold p50; idle RSS of
the snapshot pool <= 5% of the booted pool of the same size.

    python bench/warm.py [--runs 10] [--pool-size 2] [--hypervisor qemu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from baseline import use_tree

REPO = use_tree()

from agentrig import NODE, agent_rig  # noqa: E402

from tests.leaks import pids_mentioning  # noqa: E402
from tests.node_agent.pools import create_pool, delete_pool, members, ready_count, share  # noqa: E402
from tests.node_agent.support import (  # noqa: E402
    AgentProcess,
    Cluster,
    wait_for,
)
from vmsandbox.hypervisor.config import HypervisorConfig  # noqa: E402

RESOURCES = {"vcpus": 1, "memoryMiB": 256}
NAMESPACE = "bench-warm"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                total += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total / 1024


def dir_mib(path: Path) -> tuple[float, float]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return (
        sum(p.stat().st_size for p in files) / 2**20,
        sum(p.stat().st_blocks * 512 for p in files) / 2**20,
    )


class Bench:
    def __init__(self, cluster: Cluster, agent: AgentProcess, image: str, hypervisor: str) -> None:
        self.cluster = cluster
        self.agent = agent
        self.image = image
        self.hypervisor = hypervisor
        self.count = 0

    def run_one(self, pool: str | None) -> dict[str, Any]:
        """Create one placed sandbox, wait for Running, delete it; its latency and status."""
        self.count += 1
        name = f"w{self.count:03d}"
        spec: dict[str, Any] = {
            "image": self.image,
            "command": ["sleep", "600"],
            "hypervisor": self.hypervisor,
            "resources": RESOURCES,
        }
        if pool is not None:
            spec["pool"] = pool
        t0 = time.monotonic()
        self.cluster.create_sandbox(name, spec, node=NODE)
        status = wait_for(
            f"{name} Running",
            lambda: (s := self.cluster.status(name)).get("phase") in ("Running", "Failed") and s,
            timeout=600,
            interval=0.01,
        )
        elapsed = (time.monotonic() - t0) * 1000
        assert status["phase"] == "Running", status
        self.cluster.delete(name)
        self.cluster.wait_gone(name, timeout=120)
        warm = next((c for c in status.get("conditions") or [] if c["type"] == "WarmStart"), {})
        return {"ms": elapsed, "timings": status.get("bootTimings") or {}, "warm": warm.get("status")}

    def series(self, runs: int, pool: str | None, before: Any = None) -> list[dict[str, Any]]:
        out = []
        for _ in range(runs):
            if before is not None:
                before()
            out.append(self.run_one(pool))
        return out


def summary(samples: list[dict[str, Any]]) -> dict[str, float]:
    ms = [s["ms"] for s in samples]
    create = [s["timings"].get("containerCreate") or 0.0 for s in samples]
    return {
        "p50": round(statistics.median(ms), 1),
        "p90": round(percentile(ms, 90), 1),
        "max": round(max(ms), 1),
        "container_create_p50": round(statistics.median(create), 1),
        "warm": sum(1 for s in samples if s["warm"] == "True"),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"runs": args.runs, "hypervisor": args.hypervisor, "pool_size": args.pool_size}
    env = {
        "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": f"{args.hypervisor},process",
        "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": args.hypervisor,
        "VMSANDBOX_AGENT_GUEST_IMAGE_DIR": str(HypervisorConfig.load().guest_image_dir),
        "VMSANDBOX_AGENT_ALLOW_TCG": "true",
        "VMSANDBOX_AGENT_LOG_LEVEL": "INFO",
        "VMSANDBOX_AGENT_POOL_SYNC_SECONDS": "0.5",
        "VMSANDBOX_AGENT_POLL_INTERVAL_SECONDS": "1",
    }
    with agent_rig("wmb", NAMESPACE, env) as rig:
        cluster, agent = rig.cluster, rig.agent
        bench = Bench(cluster, agent, rig.image, args.hypervisor)
        bench.run_one(None)  # warm-up: pulls the image into the agent's cache
        result["cold"] = summary(bench.series(args.runs, None))
        print(f"cold: {result['cold']}", flush=True)
        result["booted"] = booted(args, bench, cluster, agent)
        print(f"booted: {result['booted']}", flush=True)
        result["snapshot"] = snapshot(args, bench, cluster, agent)
        print(f"snapshot: {result['snapshot']}", flush=True)
    cold = result["cold"]["p50"]
    for mode, target in (("booted", 0.20), ("snapshot", 0.40)):
        entry = result[mode]
        entry["over_cold"] = round(entry["p50"] / cold, 3)
        entry["target_over_cold"] = target
        entry["container_create_share"] = round(entry["container_create_p50"] / entry["p50"], 3)
    booted_rss = result["booted"]["idle_rss_mib"]
    result["snapshot"]["idle_rss_over_booted"] = round(result["snapshot"]["idle_rss_mib"] / booted_rss, 4)
    return result


def booted(args: argparse.Namespace, bench: Bench, cluster: Cluster, agent: AgentProcess) -> dict[str, Any]:
    pool = "booted"
    create_pool(cluster, pool, {"resources": RESOURCES, "hypervisor": args.hypervisor}, args.pool_size)
    share(cluster, pool, NODE, args.pool_size)

    def all_ready() -> None:
        wait_for(
            "booted pool ready",
            lambda: ready_count(cluster, NODE, NAMESPACE, pool) == args.pool_size,
            timeout=900,
            interval=0.2,
        )
        time.sleep(2)  # let the refill's boot finish settling off the CPU

    all_ready()
    idle_rss = rss_mib(pids_mentioning(str(agent.runtime_root / ".vms")))  # only members run now
    out: dict[str, Any] = summary(bench.series(args.runs, pool, all_ready))
    out["idle_rss_mib"] = round(idle_rss, 1)
    delete_pool(cluster, pool)
    wait_for("booted members gone", lambda: not members(agent.runtime_root), timeout=120)
    return out


def snapshot(args: argparse.Namespace, bench: Bench, cluster: Cluster, agent: AgentProcess) -> dict[str, Any]:
    pool = "snap"
    create_pool(
        cluster,
        pool,
        {"resources": RESOURCES, "hypervisor": args.hypervisor},
        args.pool_size,
        mode="snapshot",
    )
    share(cluster, pool, NODE, args.pool_size)
    wait_for(
        "snapshot pool ready",
        lambda: ready_count(cluster, NODE, NAMESPACE, pool) == args.pool_size,
        timeout=900,
        interval=0.2,
    )
    snaps = agent.runtime_root / "snapshots"
    idle_pids = pids_mentioning(str(snaps))
    apparent, allocated = dir_mib(snaps)
    out: dict[str, Any] = summary(bench.series(args.runs, pool))
    out["idle_rss_mib"] = round(rss_mib(idle_pids), 1)
    out["idle_processes"] = len(idle_pids)
    out["snapshot_files_mib"] = round(apparent, 1)
    out["snapshot_allocated_mib"] = round(allocated, 1)
    delete_pool(cluster, pool)
    wait_for("snapshot gone", lambda: not snaps.exists(), timeout=120)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--hypervisor", default="qemu", choices=["qemu", "cloud-hypervisor"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    standin = REPO / "tests" / "cloud_hypervisor" / "standin"
    os.environ["PATH"] = f"{standin}{os.pathsep}{os.environ.get('PATH', '')}"
    result = measure(args)
    print(json.dumps(result, indent=2))
    for mode in ("booted", "snapshot"):
        entry = result[mode]
        verdict = "met" if entry["over_cold"] <= entry["target_over_cold"] else "MISSED"
        print(
            f"{mode}: claim p50 {entry['p50']:.0f} ms = {entry['over_cold']:.1%} of cold "
            f"{result['cold']['p50']:.0f} ms (target {entry['target_over_cold']:.0%}: {verdict}); "
            f"container create in the guest {entry['container_create_p50']:.0f} ms "
            f"({entry['container_create_share']:.0%} of the claim)"
        )
    ratio = result["snapshot"]["idle_rss_over_booted"]
    print(
        f"idle RSS, pool of {args.pool_size}: booted {result['booted']['idle_rss_mib']:.0f} MiB, "
        f"snapshot {result['snapshot']['idle_rss_mib']:.0f} MiB ({ratio:.1%}, target 5%) plus "
        f"{result['snapshot']['snapshot_allocated_mib']:.0f} MiB of snapshot files on disk"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
