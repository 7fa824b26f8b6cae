"""What pools cost the operator's scheduling decision, and the pool controller's pass.

With pools, a placement adds booted members' room to the usage and, for a claim, looks for
nodes with a ready member (the agents' reports, claims in flight, the shape); the plan itself
(each pool's shares) is computed by the pool controller once per pass, not per decision.
Both run here, in the same process on the same cluster view, so the baseline is measured in
the same run:

* baseline: ``scheduling.decide`` for a plain sandbox, no pools;
* plain with pools: what the operator runs for a sandbox without ``spec.pool`` when pools exist;
* claim: the same for a sandbox claiming a pool (warm nodes, shape check, credit);
* plan: the pool controller's plan alone (once per pass: on changes, at most every
  ``sweepSeconds`` otherwise).

The view: ``--nodes`` nodes (default 100, 32 vCPUs and 64 GiB each), ``--placed`` sandboxes already
placed (default 1000), ``--pools`` pools (default 20: three quarters booted, the rest snapshot,
64 replicas each) with agents reporting ready members. Pure functions, no API server: this is the
CPU a decision costs, which is what a burst of claims queues behind.
Target (set here): a pool-aware decision's p50 within 5 ms at the defaults.

    python bench/pool_scheduling.py [--nodes 100] [--pools 20] [--placed 1000] [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.operator.factories import sandbox, view
from vmsandbox.api.network import NetworkMode
from vmsandbox.api.pool import PoolReport, VMSandboxPool, parse_pool
from vmsandbox.operator.claims import place
from vmsandbox.operator.config import Strategy
from vmsandbox.operator.nodes import NodeView
from vmsandbox.operator.pools import plan
from vmsandbox.operator.scheduling import Demand, decide

NOW = datetime.now(UTC)
WINDOW = 40.0


def _pools(n: int) -> list[VMSandboxPool]:
    out = []
    for i in range(n):
        mode = "booted" if i % 4 else "snapshot"
        out.append(
            parse_pool(
                {
                    "metadata": {"name": f"p{i}", "namespace": "bench", "uid": f"u{i}", "generation": 1},
                    "spec": {
                        "replicas": 64,
                        "mode": mode,
                        "template": {"resources": {"vcpus": 1, "memoryMiB": 128 + 64 * (i % 3)}},
                    },
                }
            )
        )
    return out


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": statistics.median(ordered) * 1000, "p95": at(0.95), "p99": at(0.99)}


def _time(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    fn()  # warm caches and imports
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--placed", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    nodes: list[NodeView] = [view(f"n{i:03}", vcpus=32, memory=65536) for i in range(args.nodes)]
    usage = {n.name: Demand(0, 0) for n in nodes}
    for i in range(args.placed):
        name = nodes[i % len(nodes)].name
        usage[name] = usage[name] + Demand(1, 256)
    pools = _pools(args.pools)
    by_ref = {p.ref: p for p in pools}
    reports = {
        n.name: {p.ref: PoolReport(uid=str(p.metadata.uid), ready=1) for p in pools} for n in nodes[::3]
    }
    plain = sandbox("plain", namespace="bench", vcpus=1, memory=256)
    claim = sandbox("claim", namespace="bench", vcpus=1, memory=128, pool="p4")
    kw: dict[str, Any] = {"now": NOW, "alive_window": WINDOW}

    def baseline() -> None:
        decide(plain, nodes, usage, strategy=Strategy.SPREAD, **kw)

    # The operator decides with the plan of the pool controller's latest pass.
    members = plan(pools, nodes, usage, **kw).members

    def with_pools(sb: Any) -> Callable[[], None]:
        def run() -> None:
            place(
                sb,
                nodes,
                usage,
                members,
                by_ref,
                reports,
                [],
                strategy=Strategy.SPREAD,
                default_mode=NetworkMode.RESTRICTED,
                **kw,
            )

        return run

    results = {
        "baseline (no pools)": _time(baseline, args.runs),
        "plain sandbox, pools present": _time(with_pools(plain), args.runs),
        "claim": _time(with_pools(claim), args.runs),
        "plan alone": _time(lambda: plan(pools, nodes, usage, **kw), args.runs),
    }
    shape = f"{args.nodes} nodes, {args.pools} pools x 64 replicas, {args.placed} sandboxes placed"
    print(f"{shape}, {args.runs} runs")
    print(f"{'decision':32} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, figures in results.items():
        print(f"{name:32} {figures['p50']:8.2f} {figures['p95']:8.2f} {figures['p99']:8.2f}")
    claim_p50 = results["claim"]["p50"]
    print(f"target: pool-aware decision p50 <= 5 ms: claim p50 {claim_p50:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
