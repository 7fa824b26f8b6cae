"""The agent's pure parts: configuration, image references, config.json, restart policy, watch events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.runtime.support import load_schemas
from vmsandbox.api import parse_sandbox
from vmsandbox.api.spec import RestartPolicy
from vmsandbox.kube.watch import Gone, apply_event
from vmsandbox.node_agent.config import ConfigError, load_config
from vmsandbox.node_agent.errors import InvalidImage
from vmsandbox.node_agent.imageref import parse_image_ref
from vmsandbox.node_agent.images import ImageConfig, tool_error
from vmsandbox.node_agent.ociconfig import build_config, process_args, process_env
from vmsandbox.node_agent.policy import backoff_delay, should_restart

# ---- configuration -----------------------------------------------------------------------


def test_config_defaults_and_environment() -> None:
    config = load_config(environ={"NODE_NAME": "n1"})
    assert config.node_name == "n1"
    assert config.namespace == "vmsandbox-system"
    assert config.state_dir == Path("/var/lib/vmsandbox")
    assert config.runtime_root == Path("/run/vmsandbox")
    assert config.port == 8081
    assert "process" not in config.allowed_hypervisors  # only when explicitly allowed
    config = load_config(
        environ={
            "NODE_NAME": "n1",
            "POD_NAMESPACE": "agents",
            "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "process, qemu",
            "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "process",
            "VMSANDBOX_AGENT_RESERVE_MEMORY_MIB": "2048",
            "VMSANDBOX_AGENT_INSECURE_REGISTRIES": "127.0.0.1:5000,localhost:5001",
        }
    )
    assert config.namespace == "agents"
    assert config.allowed_hypervisors == ["process", "qemu"]
    assert config.reserve_memory_mib == 2048
    assert config.registry_insecure("127.0.0.1:5000") and not config.registry_insecure("docker.io")


def test_config_file_is_overridden_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("nodeName: from-file\nimageCacheLimitMiB: 512\nrestartBackoffSeconds: 2\n")
    config = load_config(path, environ={"VMSANDBOX_AGENT_IMAGE_CACHE_LIMIT_MIB": "1024"})
    assert config.node_name == "from-file"
    assert config.image_cache_limit_mib == 1024
    assert config.restart_backoff_seconds == 2


@pytest.mark.parametrize(
    "env,words",
    [
        ({}, "nodeName: required"),
        ({"NODE_NAME": "Bad_Name"}, "nodeName"),
        ({"NODE_NAME": "n", "VMSANDBOX_AGENT_STATE_DIR": "var/lib"}, "stateDir: must be an absolute path"),
        ({"NODE_NAME": "n", "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "firecracker"}, "allowedHypervisors.0"),
        ({"NODE_NAME": "n", "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "process"}, "not in allowedHypervisors"),
        ({"NODE_NAME": "n", "VMSANDBOX_AGENT_INSECURE_REGISTRIES": "http://x"}, "insecureRegistries"),
        ({"NODE_NAME": "n", "VMSANDBOX_AGENT_IMAGE_CACHE_LIMIT_MIB": "1"}, "imageCacheLimitMiB"),
        (
            {"NODE_NAME": "n", "VMSANDBOX_AGENT_RESTART_BACKOFF_MAX_SECONDS": "1"},
            "restartBackoffMaxSeconds must be >= restartBackoffSeconds",
        ),
    ],
)
def test_bad_config_names_the_option(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    assert words in str(info.value)
    assert str(info.value).startswith("configuration: ")


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={"NODE_NAME": "n"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad, environ={"NODE_NAME": "n"})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("nodeName: n\nstateDirectory: /x\n")
    with pytest.raises(ConfigError, match="stateDirectory"):
        load_config(unknown, environ={})


# ---- image references --------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref,canonical,registry",
    [
        ("busybox", "docker.io/library/busybox:latest", "docker.io"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "docker.io"),
        ("user/app", "docker.io/user/app:latest", "docker.io"),
        ("127.0.0.1:5000/test/busybox:v1", "127.0.0.1:5000/test/busybox:v1", "127.0.0.1:5000"),
        ("localhost/app", "localhost/app:latest", "localhost"),
        ("quay.io/a/b@sha256:" + "a" * 64, "quay.io/a/b@sha256:" + "a" * 64, "quay.io"),
    ],
)
def test_registry_references(ref: str, canonical: str, registry: str) -> None:
    parsed = parse_image_ref(ref)
    assert parsed.canonical == canonical
    assert parsed.registry == registry
    assert not parsed.is_layout


def test_layout_references() -> None:
    assert parse_image_ref("oci:/images/bb:v2").layout == Path("/images/bb")
    assert parse_image_ref("oci:/images/bb:v2").tag == "v2"
    assert parse_image_ref("oci:/images/bb").tag == "latest"
    assert parse_image_ref("oci:/images/bb").skopeo_source == "oci:/images/bb:latest"


def test_tool_error_takes_the_fatal_message() -> None:
    stderr = (
        'time="x" level=fatal msg="initializing source docker://h/x: manifest unknown: manifest unknown"\n'
    )
    assert tool_error(stderr) == "initializing source docker://h/x: manifest unknown: manifest unknown"
    assert tool_error("plain failure\n") == "plain failure"


# ---- config.json -------------------------------------------------------------------------


def _sandbox(**spec: Any) -> Any:
    return parse_sandbox(
        {
            "metadata": {"name": "sb", "namespace": "ns", "uid": "u-1"},
            "spec": {"image": "busybox", **spec},
        }
    )


IMAGE = ImageConfig.model_validate(
    {"Entrypoint": ["/entry"], "Cmd": ["default"], "Env": ["PATH=/bin", "A=image"], "WorkingDir": "/w"}
)


@pytest.mark.parametrize(
    "spec,argv",
    [
        ({}, ["/entry", "default"]),
        ({"args": ["x"]}, ["/entry", "x"]),
        ({"command": ["/bin/sh"]}, ["/bin/sh"]),  # command drops the image's Cmd too
        ({"command": ["/bin/sh"], "args": ["-c", "true"]}, ["/bin/sh", "-c", "true"]),
    ],
)
def test_command_merging_follows_kubernetes(spec: dict[str, Any], argv: list[str]) -> None:
    assert process_args(_sandbox(**spec), IMAGE) == argv


def test_nothing_to_run_is_a_clear_error() -> None:
    with pytest.raises(InvalidImage) as info:
        process_args(_sandbox(), ImageConfig())
    assert "no Entrypoint or Cmd" in str(info.value)
    assert info.value.reason == "InvalidImage"


def test_env_merging_spec_wins() -> None:
    env = process_env(_sandbox(env=[{"name": "A", "value": "spec"}, {"name": "B", "value": "b"}]), IMAGE)
    assert env == ["PATH=/bin", "A=spec", "B=b", "HOSTNAME=sb"]


def test_user_resolution(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("app:x:1000:1001::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("staff:x:50:\n")
    sandbox = _sandbox()
    user = lambda u: build_config(sandbox, IMAGE.model_copy(update={"user": u}), tmp_path)["process"]["user"]  # noqa: E731
    assert user("app") == {"uid": 1000, "gid": 1001}
    assert user("app:staff") == {"uid": 1000, "gid": 50}
    assert user("7:8") == {"uid": 7, "gid": 8}
    with pytest.raises(InvalidImage, match="'ghost' is not in the image's /etc/passwd"):
        user("ghost")


def test_config_json_is_valid_against_the_oci_schema(tmp_path: Path) -> None:
    sandbox = _sandbox(
        command=["sleep", "1"],
        env=[{"name": "X", "value": "1"}],
        workingDir="/tmp",
        annotations={"io.kubernetes.cri.container-type": "sandbox"},
        resources={"vcpus": 2, "memoryMiB": 256},
    )
    config = build_config(sandbox, IMAGE, tmp_path)
    assert load_schemas().errors("config-schema.json", config) == []
    assert config["process"]["cwd"] == "/tmp"
    assert config["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
    assert config["annotations"]["io.vmsandbox.vm.vcpus"] == "2"
    assert config["annotations"]["io.vmsandbox.sandbox.uid"] == "u-1"


# ---- restart policy ----------------------------------------------------------------------


def test_restart_policy_decisions() -> None:
    assert should_restart(RestartPolicy.ALWAYS, failed=False)
    assert should_restart(RestartPolicy.ON_FAILURE, failed=True)
    assert not should_restart(RestartPolicy.ON_FAILURE, failed=False)
    assert not should_restart(RestartPolicy.NEVER, failed=True)


def test_back_off_doubles_and_caps_at_five_minutes() -> None:
    delays = [backoff_delay(n, 10, 300) for n in range(1, 9)]
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
    assert backoff_delay(10_000, 10, 300) == 300


# ---- watch events ------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def observe(self, obj: dict[str, Any]) -> None:
        self.calls.append(("observe", obj["metadata"]["name"]))

    def forget(self, obj: dict[str, Any]) -> None:
        self.calls.append(("forget", obj["metadata"]["name"]))


def _event(kind: str, name: str, rv: str) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {"name": name, "resourceVersion": rv}}}


def test_watch_events_dispatch_and_track_the_resource_version() -> None:
    recorder = _Recorder()
    assert apply_event(_event("ADDED", "a", "5"), recorder) == "5"  # type: ignore[arg-type]
    assert apply_event(_event("MODIFIED", "a", "6"), recorder) == "6"  # type: ignore[arg-type]
    assert (
        apply_event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}, recorder) == "9"
    )  # type: ignore[arg-type]
    assert apply_event(_event("DELETED", "a", "10"), recorder) == "10"  # type: ignore[arg-type]
    assert recorder.calls == [("observe", "a"), ("observe", "a"), ("forget", "a")]


def test_410_gone_asks_for_a_new_list() -> None:
    event = {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 410, "message": "too old resource version"},
    }
    with pytest.raises(Gone, match="too old"):
        apply_event(event, _Recorder())  # type: ignore[arg-type]


# ---- structured logs ---------------------------------------------------------------------


def test_every_line_from_a_sandboxs_thread_names_it() -> None:
    import json
    import logging
    import threading

    from vmsandbox.node_agent.logs import JsonFormatter, SandboxLog, bind_sandbox

    formatter = JsonFormatter("node-1")
    lines: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    logger = logging.getLogger("test.node_agent.logs")
    logger.addHandler(Capture())
    logger.propagate = False

    def worker() -> None:
        bind_sandbox("ns1", "sb1")
        logging.getLogger("test.node_agent.logs").warning("from a library in the worker thread")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    SandboxLog(logger, "ns2", "sb2").warning("through the adapter")
    logger.warning("agent-wide")
    assert [(line.get("namespace"), line.get("name")) for line in lines] == [
        ("ns1", "sb1"),
        ("ns2", "sb2"),
        (None, None),
    ]
    assert all(line["node"] == "node-1" and line["level"] == "warning" for line in lines)


def test_a_watch_event_older_than_the_agents_own_write_is_not_acted_on() -> None:
    """The Failed -> Creating regression: a reconcile must not see the version its write replaced.

    Versions are told apart by identity (resourceVersions are opaque), never by ordering them."""
    from vmsandbox.kube.expectations import WriteExpectations

    clock = [0.0]
    expect = WriteExpectations(ttl=30.0, clock=lambda: clock[0])
    assert expect.current("99"), "nothing written yet: every event is news"
    assert expect.expect("b7")
    assert not expect.current("99"), "an event from before the write is stale"
    assert not expect.current("a0"), "so is every event until the write's own comes"
    assert expect.current("b7"), "the write's own event"
    assert expect.current("c1"), "a later change by anyone is news"
    assert not expect.expect("c1"), "a version the watch delivered already is not waited for"
    assert expect.current("c0")
    expect.expect("d4")
    expect.reset()
    assert expect.current("x"), "a full list is current"
    expect.expect("e5")
    clock[0] = 31.0
    assert expect.current("f6"), "an expectation the watch never meets lapses"
    # The watch may deliver a write's own version before the write's answer arrives: that
    # version is current, and waiting for an earlier write's must stop too.
    expect.expect("g7")
    assert not expect.current("h8")
    assert not expect.expect("h8")
    assert expect.current("i9"), "nothing is waited for any more"
