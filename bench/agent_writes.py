"""The node agent's API writes per sandbox from Scheduled to Running, counted from the request log.

Everything is real except the VMM (the Cloud Hypervisor stand-in, as in ``bench/agent.py``): the
local control plane (``vmsandbox.devcluster``) logs every request it serves, the test plays the
operator (label, then ``status.nodeName``/``phase: Scheduled``), and the agent runs as its own
process. Sandboxes go one at a time, so every write logged between the schedule and Running
(plus one second) belongs to that sandbox; the two the test made itself are left out.

Reported per sandbox (p50 and max over the runs): writes to the sandbox object (status updates
and finalizer patches, each counted), the ones among them the server refused (conflicts), and
Event writes. Old (the merge base with ``--against``)
and new code in the same run. Target: at most 3 agent writes to the sandbox.

    python bench/agent_writes.py [--sandboxes 5] [--against main]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import load, use_tree

TREE = use_tree()
from agentrig import agent_rig, old_and_new, parse_args  # noqa: E402

WRITES = ("create", "update", "patch", "delete")
#: The test's own writes between the mark and Running: the label patch and the status patch.
HARNESS_WRITES = 2


def count_writes(records: list[Any], name: str) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for record in records:
        if record.verb not in WRITES:
            continue
        if record.resource == "vmsandboxes" and record.name == name:
            counts[f"{record.verb} {record.subresource or 'object'}"] += 1
            counts["sandbox"] += 1
            if record.status >= 300:
                counts[f"{record.verb} {record.subresource or 'object'} HTTP {record.status}"] += 1
                counts["refused"] += 1
        elif record.resource == "events":
            counts["events"] += 1
    counts["sandbox"] -= HARNESS_WRITES
    counts["patch object"] -= 1
    counts["patch status"] -= 1
    return {k: v for k, v in counts.items() if v}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sandboxes", type=int, default=5)
    args = parse_args(parser)
    if args.measure:
        print(json.dumps(measure_tree(args.sandboxes)))
        return 0
    results = old_and_new(Path(__file__).resolve(), TREE, args.against, ["--sandboxes", str(args.sandboxes)])
    print(f"node agent writes, Scheduled -> Running, {args.sandboxes} sandboxes one at a time; {load()}")
    print(f"{'per sandbox':<28} {'old':<22} new")
    for key in ("sandbox", "refused", "events"):
        cells = [
            f"p50 {results[t][key]['p50']:4.1f}  max {results[t][key]['max']:3d}" for t in ("old", "new")
        ]
        print(f"{key + ' writes':<28} {cells[0]:<22} {cells[1]}")
    for label in ("old", "new"):
        print(f"{label} breakdown (last sandbox): {results[label]['last']}")
    print("target: at most 3 agent writes to the sandbox from Scheduled to Running")
    return 0


def measure_tree(sandboxes: int) -> dict[str, Any]:
    per: list[dict[str, int]] = []
    with agent_rig("naw", "bench-writes") as rig:
        kube, cluster, node, image = rig.kube, rig.cluster, rig.node, rig.image
        spec = {"image": image, "command": ["sleep", "3600"], "hypervisor": "cloud-hypervisor"}
        for index in range(sandboxes + 1):  # the first pulls the image and is not counted
            name = f"w-{index}"
            cluster.create_sandbox(name, spec)
            time.sleep(0.5)
            mark = len(kube.requests_made())
            cluster.schedule(name, node, schedule_ms=0.0)
            cluster.wait_phase(name, "Running", timeout=120)
            time.sleep(1.0)
            if index:
                per.append(count_writes(kube.requests_made(since=mark), name))
                print(f"{name}: {per[-1]}", file=sys.stderr, flush=True)
        names = [f"w-{i}" for i in range(sandboxes + 1)]
        for name in names:
            cluster.delete(name)
        for name in names:
            cluster.wait_gone(name, timeout=60)
        rig.wait_root_empty(timeout=120)
    result: dict[str, Any] = {"last": per[-1]}
    for key in ("sandbox", "refused", "events"):
        values = [p.get(key, 0) for p in per]
        result[key] = {"p50": statistics.median(values), "max": max(values)}
    return result


if __name__ == "__main__":
    sys.exit(main())
