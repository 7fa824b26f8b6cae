"""``vmsandbox``: run a whole cluster on this machine (``dev``) and use it (``apply``, ``get``, ``logs``).

``vmsandbox dev`` is what a newcomer runs first: the local control plane (a real CRD API
server), the operator and one node agent for this machine, with the best VM backend this
machine can run. The other commands are a small kubectl for VMSandboxes, so the README's
walkthrough needs nothing but this package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Unpack

import requests
import yaml

from vmsandbox import cli_exec, cli_portforward
from vmsandbox.api.constants import (
    AGENT_ENDPOINT_ANNOTATION,
    API_VERSION,
    GROUP,
    KIND,
    NODE_LABEL,
    PLURAL,
    SUBRESOURCE_GROUP,
)
from vmsandbox.cli_exec import print_listing, remote_spec, run_cp, run_exec
from vmsandbox.devcluster.backend import Backend, cache_dir, detect_backend
from vmsandbox.devcluster.backend import choose_backend as choose_backend
from vmsandbox.devcluster.devstack import Component as Component
from vmsandbox.devcluster.devstack import DevStack, api_path_ready
from vmsandbox.errors import VMSandboxError
from vmsandbox.kube import ApiError, Client, Connection, wire
from vmsandbox.kube.paths import node_path, sandbox_path
from vmsandbox.sdk.remote import Agent

FIELD_MANAGER = "vmsandbox-cli"
USER_AGENT = "vmsandbox-cli"
APPLY_PATCH = "application/apply-patch+yaml"


class CLIError(VMSandboxError):
    step = "vmsandbox"


def dev_kubeconfig_link() -> Path:
    """Where a running ``vmsandbox dev`` leaves its kubeconfig, so the other commands find it."""
    return cache_dir() / "dev" / "kubeconfig"


def resolve_kubeconfig(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
    link = dev_kubeconfig_link()
    if link.exists():
        return link
    default = Path.home() / ".kube" / "config"
    return default if default.exists() else None


# ---- the API server --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An answer as ``vmsandbox dev``'s set-up reads it (its status, text and JSON)."""

    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Api:
    """The CLI's client of the API server, with the kubeconfig's (or the pod's) credentials."""

    def __init__(self, kubeconfig: Path | None, *, direct: bool = False) -> None:
        self.connection = Connection.load(resolve_kubeconfig(kubeconfig))
        #: Go straight to node agents even where the API server serves subresources.vmsandbox.io.
        self.direct = direct
        self.server = self.connection.server
        self.client = Client(self.connection, user_agent=USER_AGENT)

    def call(self, method: str, path: str, **options: Unpack[wire.Options]) -> dict[str, Any]:
        """The answer's object; :class:`ApiError` for a refusal, a :class:`CLIError` when the
        server did not answer at all (every command says that the same way)."""
        return self.exchange(method, path, **options)[1]

    def exchange(self, method: str, path: str, **options: Unpack[wire.Options]) -> tuple[int, dict[str, Any]]:
        """As :meth:`call`, with the status of the success."""
        try:
            return self.client.exchange(method, path, **options)
        except ApiError as exc:
            if exc.status == 0:
                raise CLIError(
                    f"cannot reach the API server at {self.server}: {exc.message}", step="connect"
                ) from None
            raise

    def json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """As :meth:`call`, with a refusal as a :class:`CLIError` of step ``api``."""
        try:
            return self.call(method, path, **kw)
        except ApiError as exc:
            raise CLIError(exc.detail, step="api") from None

    def exists(self, path: str) -> bool:
        """False once the server answers 404 for ``path``."""
        try:
            self.call("GET", path)
        except ApiError as exc:
            return not exc.not_found
        return True

    def request(self, method: str, path: str, **kw: Any) -> Answer:
        """For ``vmsandbox dev``'s set-up (``json=`` body, ``headers=`` for the content type): an
        answer whatever its status."""
        content_type = (kw.get("headers") or {}).get("Content-Type", wire.JSON)
        try:
            status, obj = self.exchange(method, path, body=kw.get("json"), content_type=content_type)
        except ApiError as exc:
            return Answer(exc.status, exc.message)
        return Answer(status, json.dumps(obj))


# ---- apply / get / logs / delete -------------------------------------------------------------


def load_manifests(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
            raise CLIError(
                f"{path} document {i + 1}: expected apiVersion {API_VERSION}, kind {KIND}", step="apply"
            )
        if not (doc.get("metadata") or {}).get("name"):
            raise CLIError(f"{path} document {i + 1}: metadata.name is required", step="apply")
    return docs


def cmd_apply(api: Api, args: argparse.Namespace) -> int:
    for doc in load_manifests(args.filename):
        meta = doc["metadata"]
        namespace = meta.get("namespace") or args.namespace
        meta["namespace"] = namespace
        path = sandbox_path(namespace, meta["name"])
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        try:
            status, _ = api.exchange("PATCH", path, body=doc, content_type=APPLY_PATCH, params=params)
        except ApiError as exc:
            raise CLIError(f"{meta['name']}: {exc.message}", step="apply") from None
        print(f"{PLURAL[:-2]}.{GROUP}/{meta['name']} {'created' if status == 201 else 'configured'}")
    return 0


def _age(created: str | None, now: datetime) -> str:
    if not created:
        return "<unknown>"
    seconds = int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


COLUMNS = ("NAMESPACE", "NAME", "PHASE", "NODE", "HYPERVISOR", "RESTARTS", "AGE", "REASON")


def row(item: dict[str, Any], now: datetime) -> dict[str, str]:
    meta, status = item["metadata"], item.get("status") or {}
    return {
        "NAMESPACE": meta.get("namespace", ""),
        "NAME": meta["name"],
        "PHASE": status.get("phase") or "Pending",
        "NODE": status.get("nodeName") or (meta.get("labels") or {}).get(NODE_LABEL) or "<none>",
        "HYPERVISOR": status.get("hypervisor") or "<none>",
        "RESTARTS": str(status.get("restartCount") or 0),
        "AGE": _age(meta.get("creationTimestamp"), now),
        "REASON": status.get("reason") or "",
    }


def table(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    lines = ["   ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["   ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def _items(api: Api, args: argparse.Namespace) -> list[dict[str, Any]]:
    namespace = None if args.all_namespaces else args.namespace
    if args.name:
        return [api.json("GET", sandbox_path(namespace, args.name))]
    items: list[dict[str, Any]] = api.json("GET", sandbox_path(namespace)).get("items") or []
    return sorted(items, key=lambda i: (i["metadata"].get("namespace", ""), i["metadata"]["name"]))


def cmd_get(api: Api, args: argparse.Namespace) -> int:
    columns = [c for c in COLUMNS if c != "NAMESPACE" or args.all_namespaces]
    if args.output in ("yaml", "json"):
        items = _items(api, args)
        doc: Any = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        print(
            json.dumps(doc, indent=2) if args.output == "json" else yaml.safe_dump(doc, sort_keys=False),
            end="",
        )
        return 0
    seen: dict[str, tuple[str, ...]] = {}
    first = True
    while True:
        now = datetime.now(UTC)
        rows = [row(i, now) for i in _items(api, args)]
        if first:
            if not rows:
                print("No resources found." if not args.watch else table([], columns))
            else:
                print(table(rows, columns))
            first = False
        else:
            changed = [r for r in rows if seen.get(r["NAMESPACE"] + "/" + r["NAME"]) != _key(r)]
            for r in changed:
                print(table([r], columns).splitlines()[1])
        seen = {r["NAMESPACE"] + "/" + r["NAME"]: _key(r) for r in rows}
        if not args.watch:
            return 0
        sys.stdout.flush()
        time.sleep(1.0)


def _key(r: dict[str, str]) -> tuple[str, ...]:
    return (r["PHASE"], r["NODE"], r["RESTARTS"], r["REASON"])


def agent_of(api: Api, namespace: str, name: str, step: str) -> Agent:
    """The way to ``namespace/name``: the API server's subresources.vmsandbox.io where it is
    served (and not ``--direct``), else the node agent running it, with this client's credentials
    (the agent asks the API server who they are)."""
    if not api.direct and api_path_ready(api):
        return Agent.api_server(api.connection)
    item = api.json("GET", sandbox_path(namespace, name))
    node = (item.get("status") or {}).get("nodeName") or (item["metadata"].get("labels") or {}).get(
        NODE_LABEL
    )
    if not node:
        raise CLIError(f"{namespace}/{name} is not scheduled to a node yet", step=step)
    node_obj = api.json("GET", node_path(node))
    endpoint = (node_obj["metadata"].get("annotations") or {}).get(AGENT_ENDPOINT_ANNOTATION)
    if not endpoint:
        raise CLIError(f"node {node} publishes no {AGENT_ENDPOINT_ANNOTATION} annotation", step=step)
    return Agent(endpoint, api.connection.headers())


def cmd_logs(api: Api, args: argparse.Namespace) -> int:
    agent = agent_of(api, args.namespace, args.name, "logs")
    endpoint, auth = agent.endpoint, agent.auth()
    url = agent.url("logs", args.namespace, args.name)
    params = {"follow": "true"} if args.follow else {}
    if args.tail_bytes is not None:
        params["tailBytes"] = str(args.tail_bytes)
    try:
        timeout = (10, None if args.follow else 60)
        with requests.get(
            url,
            params=params,
            headers=auth,
            timeout=timeout,
            stream=True,
            verify=agent.verify,
            cert=agent.cert,
        ) as resp:
            if resp.status_code != 200:
                raise CLIError(f"{url}: {resp.status_code} {resp.text.strip()}", step="logs")
            for chunk in resp.iter_content(chunk_size=None):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
    except requests.RequestException as exc:
        raise CLIError(f"the agent at {endpoint} did not answer: {exc}", step="logs") from None
    return 0


def cmd_exec(api: Api, args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise CLIError("give the command after --, e.g. vmsandbox exec NAME -- sh", step="exec")
    agent = agent_of(api, args.namespace, args.name, "exec")
    return run_exec(agent, args.namespace, args.name, command, stdin=args.stdin, want_tty=args.tty)


def cmd_attach(api: Api, args: argparse.Namespace) -> int:
    agent = agent_of(api, args.namespace, args.name, "attach")
    return run_exec(agent, args.namespace, args.name, [], stdin=args.stdin, want_tty=args.tty)


def cmd_cp(api: Api, args: argparse.Namespace) -> int:
    return run_cp(lambda ns, name: agent_of(api, ns, name, "cp"), args.namespace, args.src, args.dst)


def cmd_ls(api: Api, args: argparse.Namespace) -> int:
    spec = remote_spec(args.target)
    if spec is None:
        raise CLIError(f"{args.target!r}: expected NAME:/path", step="ls")
    return print_listing(agent_of(api, args.namespace, spec[0], "ls"), args.namespace, *spec)


def cmd_port_forward(api: Api, args: argparse.Namespace) -> int:
    pairs = [cli_portforward.parse_pair(spec) for spec in args.ports]
    item = api.json("GET", sandbox_path(args.namespace, args.name))
    problem = cli_portforward.sandbox_network_problem(item)
    if problem is not None:
        raise CLIError(problem, step="port-forward")
    agent = agent_of(api, args.namespace, args.name, "port-forward")
    stop = threading.Event()
    return cli_portforward.forward(agent, args.namespace, args.name, pairs, args.address, stop)


def cmd_delete(api: Api, args: argparse.Namespace) -> int:
    for name in args.names:
        try:
            api.call("DELETE", sandbox_path(args.namespace, name))
        except ApiError as exc:
            if exc.not_found:
                raise CLIError(f"{args.namespace}/{name} not found", step="delete") from None
            raise CLIError(f"{name}: {exc.status} {exc.message}", step="delete") from None
        print(f"{PLURAL[:-2]}.{GROUP}/{name} deleted")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        for name in args.names:
            while api.exists(sandbox_path(args.namespace, name)):
                if time.monotonic() > deadline:
                    raise CLIError(
                        f"{args.namespace}/{name} still exists after {args.timeout}s", step="delete"
                    )
                time.sleep(0.2)
    return 0


# ---- dev ---------------------------------------------------------------------------------------


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def cmd_dev(args: argparse.Namespace) -> int:
    from vmsandbox.devcluster.cluster import LocalCluster

    backend = (
        Backend(args.hypervisor, "chosen with --hypervisor")
        if args.hypervisor != "auto"
        else detect_backend()
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, _interrupt)  # during start-up, SIGTERM unwinds like Ctrl-C
    print(f"vmsandbox dev: VM backend: {backend.name} ({backend.why})", flush=True)
    print(
        "vmsandbox dev: starting the local control plane (first run builds the API server, ~6 min)",
        flush=True,
    )
    link = dev_kubeconfig_link()
    with LocalCluster(workdir=args.workdir) as cluster:
        assert cluster.workdir is not None
        # From here on Ctrl-C stops everything in order; before, it interrupts the start-up itself.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stack = DevStack(cluster.workdir, cluster.kubeconfig_path, backend, args.node_name)
        try:
            api = Api(cluster.kubeconfig_path)
            stack.register_node(api)
            stack.register_api(api)
            stack.start()
            link.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cluster.kubeconfig_path, link)
            failed = stack.wait_ready(api, stop)
            if failed is not None:
                print(f"vmsandbox dev: start-up failed: {failed}; logs in {cluster.workdir}", file=sys.stderr)
                return 1
            print(
                f"vmsandbox dev: ready. node {args.node_name}, agent on 127.0.0.1:{stack.agent_port}"
                f" (operator pid {stack.pid('operator')}, agent pid {stack.pid('agent')})",
                flush=True,
            )
            print(f"export KUBECONFIG={cluster.kubeconfig_path}", flush=True)
            print(
                f"# exec, attach, cp, logs go through the API server ({SUBRESOURCE_GROUP}, served by the"
                " operator); --direct goes straight to the agent",
                flush=True,
            )
            print(f"# logs: {cluster.workdir}/{{operator,agent}}.log and {cluster.workdir}/logs/", flush=True)
            print(
                "# try: vmsandbox apply -f samples/hello-local.yaml && vmsandbox get -w  (Ctrl-C stops all)",
                flush=True,
            )
            while not stop.wait(0.5):
                for line in stack.supervise():
                    print(line, file=sys.stderr, flush=True)
        finally:
            print("vmsandbox dev: stopping", flush=True)
            stack.stop()
            link.unlink(missing_ok=True)
    return 0


# ---- entry point -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmsandbox", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--kubeconfig", type=Path, help="default: $KUBECONFIG, a running `vmsandbox dev`, ~/.kube/config"
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="exec, attach, cp, ls, logs: go straight to the node agent, not through the API server",
    )
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run a control plane, the operator and a node agent here until Ctrl-C")
    dev.add_argument("--hypervisor", choices=["auto", "cloud-hypervisor", "qemu", "process"], default="auto")
    dev.add_argument("--node-name", default="dev-node")
    dev.add_argument("--workdir", type=Path, help="keep state and logs here (default: a temporary directory)")

    def namespaced(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-n", "--namespace", default="default")

    apply = sub.add_parser("apply", help="create or update sandboxes from a YAML file ('-' for stdin)")
    apply.add_argument("-f", "--filename", required=True)
    namespaced(apply)

    get = sub.add_parser("get", help="list sandboxes as a table")
    get.add_argument("name", nargs="?")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-w", "--watch", action="store_true", help="keep printing changes")
    get.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    namespaced(get)

    logs = sub.add_parser("logs", help="print a sandbox's container output (from its node's agent)")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing while the sandbox runs")
    logs.add_argument("--tail-bytes", type=int, help="only the last N bytes of the output")
    namespaced(logs)

    cli_exec.add_parsers(sub, namespaced)
    cli_portforward.add_parser(sub, namespaced)

    delete = sub.add_parser("delete", help="delete sandboxes")
    delete.add_argument("names", nargs="+")
    delete.add_argument("--wait", action="store_true", help="until they are gone")
    delete.add_argument("--timeout", type=float, default=120.0)
    namespaced(delete)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "dev":
            return cmd_dev(args)
        api = Api(args.kubeconfig, direct=args.direct)
        handlers = {
            "apply": cmd_apply,
            "get": cmd_get,
            "logs": cmd_logs,
            "delete": cmd_delete,
            "exec": cmd_exec,
            "attach": cmd_attach,
            "cp": cmd_cp,
            "ls": cmd_ls,
            "port-forward": cmd_port_forward,
        }
        return handlers[args.command](api, args)
    except VMSandboxError as exc:
        print(f"vmsandbox: {exc}", file=sys.stderr)
        return 1
    except (OSError, yaml.YAMLError) as exc:
        print(f"vmsandbox: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
