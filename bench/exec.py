"""Exec and cp benchmark: one Running sandbox (process backend; QEMU too), every path measured in one run.

Paths, each ``true`` run N times (default 200) in the same container, timed from the call to the
exit status in hand:

* ``runc exec`` (the floor): the guest's own runc, run in the guest agent's namespaces
  (``nsenter``), exactly what the guest agent runs for an exec;
* ``guest``: the runtime library straight to the guest agent (``vmsandbox.runtime.streams``);
* ``direct``: a WebSocket to the node agent's ``/exec`` (Kubernetes' remote-command protocol) with
  a bearer token the agent reviews with the API server (TokenReview + SubjectAccessReview), as
  ``vmsandbox exec --direct`` does;
* ``api``: the same WebSocket through the API server (``subresources.vmsandbox.io``): the local
  control plane's front authorizes it and relays it to the operator's aggregated server, which
  relays it to the node agent with its own token, as ``vmsandbox exec`` and the SDK do.

And ``cp``: a 100 MiB file written into the sandbox (a new file each time) and read back,
``--cp-runs`` times each way (median and worst), on the ``guest`` path (the runtime library
straight to the guest agent), the ``direct`` path (the node agent's ``/files``) and the ``api``
path (through the API server), against a plain local copy of the same file into a new file
(``shutil.copyfile``, no fsync) timed in the same loop as the baseline. Each writer is handed the
open local file, as ``vmsandbox cp`` and the SDK's ``files.write`` are; each read counts the
pieces the client yields.

Everything is real: the local control plane, a loopback registry, the node agent as its own
process, the operator as its own process, runc. Targets: direct p50 <= runc exec p50 + 15 ms,
api p50 <= runc exec p50 + 30 ms; cp >= 50% of the local copy rate.

With ``--qemu``, a second node's agent runs a sandbox in QEMU (TCG here) and ``guest``, ``direct``
and ``api`` are measured for it too; there ``guest`` is the floor: the host reaches nothing lower
than the guest agent, which runs ``runc exec`` inside the guest.

    python bench/exec.py [--runs 200] [--qemu] [--json out.json]
    python bench/exec.py --runs 0 --cp-runs 5          # the cp series alone
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from baseline import use_tree

use_tree()

from agentrig import agent_rig  # noqa: E402

from tests.e2e.processes import OperatorProcess  # noqa: E402
from tests.node_agent.support import (  # noqa: E402
    AgentProcess,
    Cluster,
    Registry,
    free_port,
)
from vmsandbox.api.constants import PROCESS_BACKEND_ALLOWED, PROCESS_BACKEND_LABEL  # noqa: E402
from vmsandbox.devcluster import LocalCluster  # noqa: E402
from vmsandbox.devcluster.apiservice import (  # noqa: E402
    API_SERVICE_NAME,
    operator_settings,
    register,
    serving_certificate,
)
from vmsandbox.devcluster.cluster import ADMIN_USER  # noqa: E402
from vmsandbox.runtime import Runtime  # noqa: E402
from vmsandbox.runtime.streams import read_path as guest_read_path  # noqa: E402
from vmsandbox.runtime.streams import start_exec  # noqa: E402
from vmsandbox.runtime.streams import write_path as guest_write_path  # noqa: E402
from vmsandbox.sdk.remote import Agent, ExecSession, read_path, write_path  # noqa: E402

MiB = 1024 * 1024


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def timed(runs: int, once: Callable[[], None]) -> list[float]:
    once()  # warm-up
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        once()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def agent_pid(unshare_pid: int) -> int:
    """The guest agent: the child of the process backend's ``unshare``."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    return int(children[0])


def start_api_path(kube: LocalCluster, namespace: str, work: Path) -> OperatorProcess:
    """An operator serving subresources.vmsandbox.io, registered as an APIService."""
    ca, cert, key = serving_certificate(work / "serving", namespace)
    port = free_port()
    settings = {
        k.removeprefix("VMSANDBOX_OPERATOR_").lower(): v
        for k, v in operator_settings(port, cert, key).items()
    }
    (work / "operator").mkdir()
    operator = OperatorProcess(
        kube,
        namespace,
        "bench",
        work / "operator",
        leader_election="false",
        **settings,  # type: ignore[arg-type]
    )
    register(kube.http, namespace, port, ca)
    discovery = f"/apis/{API_SERVICE_NAME.split('.', 1)[1]}/{API_SERVICE_NAME.split('.', 1)[0]}"
    deadline = time.monotonic() + 60
    while kube.http("GET", discovery).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API path did not come up:\n{operator.log()[-2000:]}")
        time.sleep(0.2)
    return operator


def remote_true(agent: Agent, namespace: str, name: str) -> Callable[[], None]:
    """One exec of ``true`` over the remote-command WebSocket, to its exit status."""

    def once() -> None:
        with ExecSession(agent, namespace, name, ["true"], stdin=False, tty=False) as session:
            for _ in session.output():
                pass
            assert session.exit_code == 0

    return once


def _median_rate(mib: int, seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_mib_s": round(mib / statistics.median(ordered), 1),
        "worst_mib_s": round(mib / ordered[-1], 1),
    }


Writer = Callable[[BinaryIO], None]
Reader = Callable[[], Iterator[bytes]]


def remote_cp(agent: Agent, namespace: str) -> tuple[Writer, Reader]:
    """``/payload.bin`` in the sandbox ``box``, written and read through a node agent's ``/files``."""

    def write(file: BinaryIO) -> None:
        write_path(agent, namespace, "box", "/payload.bin", file)

    def read() -> Iterator[bytes]:
        with read_path(agent, namespace, "box", "/payload.bin") as (_, chunks):
            yield from chunks

    return write, read


def guest_cp(runtime: Runtime, cid: str) -> tuple[Writer, Reader]:
    """The same file straight through the guest agent (the runtime library): no HTTP hop."""

    def write(file: BinaryIO) -> None:
        guest_write_path(runtime.agent_for(cid), cid, "/payload.bin", file)

    def read() -> Iterator[bytes]:
        with guest_read_path(runtime.agent_for(cid), cid, "/payload.bin") as stream:
            yield from stream.chunks()

    return write, read


def cp_series(
    work: Path, mib: int, runs: int, paths: dict[str, tuple[Writer, Reader]], remove: Callable[[], None]
) -> dict[str, Any]:
    """``mib`` MiB written into the sandbox and read back, ``runs`` times each way per path, beside a
    plain local copy of the same file (read + write, no fsync) timed in the same loop."""
    payload = work / "payload.bin"
    payload.write_bytes(os.urandom(mib * MiB))

    local: list[float] = []
    times: dict[str, list[float]] = {f"{path}_{way}": [] for path in paths for way in ("in", "out")}
    for _ in range(runs):
        t0 = time.perf_counter()
        shutil.copyfile(payload, work / "local-copy.bin")
        local.append(time.perf_counter() - t0)
        (work / "local-copy.bin").unlink()
        for path, (write, read) in paths.items():
            remove()  # like the local copy, into a new file: replacing one would time freeing it too
            t0 = time.perf_counter()
            with payload.open("rb") as file:  # as vmsandbox cp and files.write take a file
                write(file)
            times[f"{path}_in"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            size = sum(len(chunk) for chunk in read())
            times[f"{path}_out"].append(time.perf_counter() - t0)
            assert size == mib * MiB, (path, size)
    out: dict[str, Any] = {"mib": mib, "runs": runs, "local_copy": _median_rate(mib, local)}
    base = out["local_copy"]["median_mib_s"]
    for key, samples in times.items():
        out[key] = _median_rate(mib, samples)
        out[key]["vs_local"] = round(out[key]["median_mib_s"] / base, 3)
    out["target_vs_local"] = 0.5
    print("cp", json.dumps(out), flush=True)
    return out


def guest_true(runtime: Runtime, cid: str) -> Callable[[], None]:
    """One exec of ``true`` from the host's runtime straight to the guest agent."""

    def once() -> None:
        with start_exec(runtime.agent_for(cid), cid, ["true"]) as stream:
            for _ in stream.output():
                pass
            assert stream.exit_code == 0

    return once


def api_path_of(kube: LocalCluster) -> Agent:
    assert kube.workdir is not None
    return Agent(
        kube.tls_url,
        {"Authorization": f"Bearer {ADMIN_USER}"},
        api_path=True,
        verify=str(kube.workdir / "front-tls" / "front.crt"),
    )


def start_qemu_agent(kube: LocalCluster, cluster: Cluster, registry: Registry, work: Path) -> AgentProcess:
    """A second node whose agent runs sandboxes in QEMU (TCG allowed: no KVM here)."""
    from tests.node_agent.conftest import agent_env

    node = "bench-qemu"
    cluster.create_node(node)
    (work / "qagent").mkdir()
    image_dir = Path(
        os.environ.get("VMSANDBOX_GUEST_IMAGE_DIR") or Path.home() / ".cache/vmsandbox/guest-image"
    )
    env = agent_env(
        node=node,
        namespace=cluster.namespace,
        kube=kube,
        workdir=work / "qagent",
        registry=registry,
        guest_image_dir=image_dir,
    )
    env.update(
        {
            "VMSANDBOX_AGENT_LOG_LEVEL": "INFO",
            "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "qemu",
            "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "qemu",
            "VMSANDBOX_AGENT_ALLOW_TCG": "true",
        }
    )
    agent = AgentProcess(node=node, workdir=work / "qagent", env=env, cluster=cluster)
    agent.start()
    return agent


def qemu_series(
    kube: LocalCluster, cluster: Cluster, agent: AgentProcess, image: str, runs: int
) -> dict[str, Any]:
    """guest (the host's runtime straight to the guest agent, which runs runc exec in the guest:
    the lowest layer the host reaches), direct and api, for a sandbox in a QEMU guest."""
    spec = {"image": image, "command": ["sleep", "3600"], "hypervisor": "qemu"}
    cluster.create_sandbox("qbox", spec, node=agent.node)
    cluster.wait_phase("qbox", "Running", timeout=900)
    runtime = Runtime(root=agent.runtime_root, hypervisor="qemu")
    (cid,) = [i for i in runtime.store.ids() if not i.startswith(".")]

    guest = guest_true(runtime, cid)
    endpoint = agent.endpoint()
    assert endpoint
    direct = remote_true(
        Agent(endpoint, {"Authorization": f"Bearer {ADMIN_USER}"}), cluster.namespace, "qbox"
    )
    api = remote_true(api_path_of(kube), cluster.namespace, "qbox")
    out: dict[str, Any] = {"backend": "qemu (TCG)", "runs": runs}
    for name, once in (("guest", guest), ("direct", direct), ("api", api)):
        out[name] = stats(timed(runs, once))
        print("qemu", name, out[name], flush=True)
    out["direct_minus_guest_p50_ms"] = round(out["direct"]["p50_ms"] - out["guest"]["p50_ms"], 2)
    out["api_minus_guest_p50_ms"] = round(out["api"]["p50_ms"] - out["guest"]["p50_ms"], 2)
    cluster.delete("qbox")
    cluster.wait_gone("qbox", timeout=120)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="exec runs per path (0: cp only)")
    parser.add_argument("--cp-mib", type=int, default=100)
    parser.add_argument("--cp-runs", type=int, default=5, help="copies each way per path (median)")
    parser.add_argument("--vcpus", type=int, help="the process sandbox's vCPUs (default 1)")
    parser.add_argument("--memory-mib", type=int, help="the process sandbox's memory (default 512)")
    parser.add_argument("--cp-paths", default="guest,direct,api", help="of guest, direct, api")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--qemu", action="store_true", help="also a QEMU (TCG here) sandbox's series")
    parser.add_argument("--qemu-runs", type=int, help="runs per QEMU path (default: --runs; TCG is slow)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/exec.py runs containers with runc and needs root", file=sys.stderr)
        return 2
    namespace = "bench-exec"
    # The process backend is allowed per namespace, by an administrator's label.
    labels = {PROCESS_BACKEND_LABEL: PROCESS_BACKEND_ALLOWED}
    # agent_env's default hypervisor: the process backend (the rig's own default is the stand-in).
    env = {"VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "process", "VMSANDBOX_AGENT_LOG_LEVEL": "INFO"}
    operator: OperatorProcess | None = None
    qemu_agent: AgentProcess | None = None
    result: dict[str, Any] = {"runs": args.runs, "backend": "process"}
    with agent_rig("nxb", namespace, env, labels=labels) as rig:
        kube, cluster, agent, node = rig.kube, rig.cluster, rig.agent, rig.node
        image, work = rig.image, rig.work
        try:
            operator = start_api_path(kube, namespace, work)
            box: dict[str, Any] = {"image": image, "command": ["sleep", "3600"]}
            if args.vcpus or args.memory_mib:
                box["resources"] = {"vcpus": args.vcpus or 1, "memoryMiB": args.memory_mib or 512}
            cluster.create_sandbox("box", box, node=node)
            cluster.wait_phase("box", "Running", timeout=120)

            runtime = Runtime(root=agent.runtime_root, hypervisor="process")
            (cid,) = [i for i in runtime.store.ids() if not i.startswith(".")]
            state = runtime.state(cid)
            assert state.vm is not None
            guest_pid = agent_pid(state.vm.vmm_pid)
            runc_root = state.vm.state_dir / "guest" / "runc"
            floor_cmd = ["nsenter", "-t", str(guest_pid), "-m", "-p", "runc", "--root", str(runc_root)]
            floor_cmd += ["exec", cid, "true"]

            def floor() -> None:
                subprocess.run(floor_cmd, check=True, stdin=subprocess.DEVNULL)

            guest = guest_true(runtime, cid)
            endpoint = agent.endpoint()
            assert endpoint
            remote = Agent(endpoint, {"Authorization": f"Bearer {ADMIN_USER}"})

            direct = remote_true(remote, namespace, "box")
            api = remote_true(api_path_of(kube), namespace, "box")
            paths = (("runc_exec", floor), ("guest", guest), ("direct", direct), ("api", api))
            for name, once in paths if args.runs else ():
                result[name] = stats(timed(args.runs, once))
                print(name, result[name], flush=True)
            if args.runs:
                floor_p50 = result["runc_exec"]["p50_ms"]
                result["direct_minus_floor_p50_ms"] = round(result["direct"]["p50_ms"] - floor_p50, 2)
                result["target_direct_p50_ms"] = round(floor_p50 + 15, 2)
                result["api_minus_floor_p50_ms"] = round(result["api"]["p50_ms"] - floor_p50, 2)
                result["target_api_p50_ms"] = round(floor_p50 + 30, 2)

            cp_paths = {
                "guest": guest_cp(runtime, cid),
                "direct": remote_cp(remote, namespace),
                "api": remote_cp(api_path_of(kube), namespace),
            }
            chosen = {k: v for k, v in cp_paths.items() if k in args.cp_paths.split(",")}

            def remove() -> None:
                # The test image links only a few applets (no rm): busybox itself runs it.
                command = ["busybox", "rm", "-f", "/payload.bin"]
                with start_exec(runtime.agent_for(cid), cid, command) as stream:
                    for _ in stream.output():
                        pass
                    assert stream.exit_code == 0, "the payload was not removed"

            result["cp"] = cp_series(work, args.cp_mib, args.cp_runs, chosen, remove)
            cluster.delete("box")
            cluster.wait_gone("box", timeout=60)
            if args.qemu:
                qemu_agent = start_qemu_agent(kube, cluster, rig.registry, work)
                result["qemu"] = qemu_series(kube, cluster, qemu_agent, image, args.qemu_runs or args.runs)
        finally:
            if qemu_agent is not None:
                qemu_agent.stop()
                qemu_agent.release_cgroups()
            if operator is not None:
                operator.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
