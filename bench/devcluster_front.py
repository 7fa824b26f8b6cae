"""Cost of the devcluster front: request latency through it vs straight to the real apiserver.

Series, interleaved request by request so that machine load affects them alike:

* ``direct CR get``: GET of a custom resource from apiextensions-apiserver itself (https) — the baseline;
* ``front CR get``: the same GET through the front (plain proxy);
* ``front Node get``: GET of an emulated Node (path and apiVersion rewriting);
* ``front Node merge-patch`` / ``front Node strategic-patch``: a label patch; the strategic one
  is emulated by the front (read, merge, update).

Also the cluster start-up time (``LocalCluster`` start to ready, CRDs installed).
Usage: ``python bench/devcluster_front.py [--requests 200] [--starts 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import requests
import urllib3

from vmsandbox.devcluster import LocalCluster

CRDS = Path(__file__).resolve().parents[1] / "tests" / "devcluster" / "crds"
WIDGET = "/apis/example.com/v1/namespaces/default/widgets/bench"
NODE = "/api/v1/nodes/bench"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)

    starts = []
    for _ in range(args.starts - 1):
        began = time.perf_counter()
        with LocalCluster(crd_dir=CRDS):
            starts.append(time.perf_counter() - began)

    began = time.perf_counter()
    with LocalCluster(crd_dir=CRDS) as kube:
        starts.append(time.perf_counter() - began)
        widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "bench"}}
        kube.http(
            "POST", WIDGET.rsplit("/", 1)[0], json={**widget, "spec": {"color": "red"}}
        ).raise_for_status()
        kube.http("POST", "/api/v1/nodes", json={"metadata": {"name": "bench"}}).raise_for_status()
        direct = requests.Session()
        direct.headers["Authorization"] = "Bearer admin"
        counter = iter(range(10**9))

        def patch(content_type: str) -> Callable[[], requests.Response]:
            return lambda: kube.http(
                "PATCH",
                NODE,
                json={"metadata": {"labels": {"n": str(next(counter))}}},
                headers={"Content-Type": content_type},
            )

        series: dict[str, Callable[[], requests.Response]] = {
            "direct CR get": lambda: direct.get(kube.apiserver_url + WIDGET, timeout=30, verify=False),
            "front CR get": lambda: kube.http("GET", WIDGET),
            "front Node get": lambda: kube.http("GET", NODE),
            "front Node merge-patch": patch("application/merge-patch+json"),
            "front Node strategic-patch": patch("application/strategic-merge-patch+json"),
        }
        timings: dict[str, list[float]] = {name: [] for name in series}
        for _ in range(10):  # warm connections and caches
            for call in series.values():
                call().raise_for_status()
        for _ in range(args.requests):
            for name, call in series.items():
                began = time.perf_counter()
                call().raise_for_status()
                timings[name].append(time.perf_counter() - began)

    baseline = statistics.median(timings["direct CR get"])
    print(f"{'series':28} {'median ms':>10} {'p95 ms':>8} {'x direct':>9}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:28} {median * 1000:10.2f} {p95(values) * 1000:8.2f} {median / baseline:9.2f}")
    print(
        f"cluster start (n={len(starts)}): median {statistics.median(starts):.2f} s, max {max(starts):.2f} s"
    )


if __name__ == "__main__":
    main()
