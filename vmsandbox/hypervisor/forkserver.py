"""A fork server per state root: one interpreter, started once, forks every process-backend
agent and every backend's relay.

Starting the guest agent as a new interpreter costs the interpreter's start and the agent's
imports for every sandbox. Instead, one long-lived, single-threaded process per state root
(``<vms dir>/.forkserver``: its socket ``sock``, its identity ``pid`` as ``"<pid> <start
time>"``, its log) has the agent's modules imported, and for each request forks a child that
does what ``nsenter --net`` + ``unshare --mount --pid --fork --kill-child --uts --ipc
--propagation private --mount-proc`` did for the cold start:

* the child (the sandbox's "VMM", whose pid the driver records) joins the sandbox's cgroup in
  every hierarchy first (from the host's cgroup namespace), starts a session of its own, enters
  the network namespace (``setns``), unshares mount, UTS, IPC and PID namespaces, makes every
  mount private, and forks the namespace's init;
* the init mounts a fresh ``/proc``, dies with the child (``PR_SET_PDEATHSIG``), sends its output
  to the sandbox's agent log, and runs the agent's ``serve`` entry in-process.

The child tells the client its pid and then waits for a ``go``: if the client is gone before
saying it (killed, timed out), the child kills the init and exits, so a request that the client
gave up on leaves nothing running. The child renames itself (its ``/proc/<pid>/cmdline``) after
the agent it holds, so that it is found as the cold-started agent was; the server's own command
line names no state root.

The server is started lazily by :func:`spawn`, detached like a VMM (its own session; it is no
child of its starter), and found again by whoever comes next through the identity file: a socket
whose server is not the recorded, still running process is never connected to. The server
exits when its socket is removed or replaced (its state root is gone) or after
:data:`IDLE_EXIT` seconds without requests or running agents. Killing it kills no sandbox: each
child is in a session and cgroup of its own, and is handed to init (or the nearest subreaper).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import sys
import time
from ctypes import c_ulong
from pathlib import Path
from typing import Any, NoReturn

from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.procs import identity, identity_running

SERVER_DIR = ".forkserver"
SOCKET = "sock"
IDENTITY = "pid"
LOCK = "lock"
LOG = "log"
#: Identity of the process that started the server (see :func:`started_here`).
STARTER = "starter"
DIR_ENV = "VMSANDBOX_FORKSERVER_DIR"
#: ``0`` turns the fork server off: every agent is started as an interpreter of its own.
#: Room in the server's command line for a child's name (see :func:`set_title`).
TITLE_SPACE = 1024
IDLE_EXIT = 600.0
#: How long the server may take to come up, and a request to be answered.
START_TIMEOUT = 15.0
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 1 << 20

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
SIGKILL = 9
#: What the agent would import on its first requests; the children get them for free.
PRELOAD = (
    "vmsandbox.guest.__main__",
    "vmsandbox.guest.containers",
    "vmsandbox.guest.exec",
    "vmsandbox.guest.files",
    "vmsandbox.guest.mux",
    "vmsandbox.guest.streams",
)
#: Modules callers will :func:`run`, imported by servers started from now on (:func:`preload`).
_EXTRA: list[str] = []
PRELOAD_ENV = "VMSANDBOX_FORKSERVER_PRELOAD"


def preload(module: str) -> None:
    """Have servers started by this process import ``module`` up front (for :func:`run`)."""
    if module not in _EXTRA:
        _EXTRA.append(module)


class ForkServerError(HypervisorError):
    step = "vmm start"


def server_dir(vms_dir: Path) -> Path:
    return vms_dir / SERVER_DIR


def started_here(vms_dir: Path) -> bool:
    """Whether this very process started the running server of ``vms_dir`` (or none runs, so
    that the next request starts one here).

    Then what the server forks and lets go of is adopted by the subreaper nearest to this
    process (the server's launcher was this process's child), as a program this process starts
    itself would be: a caller that reaps what it starts (a containerd shim, a subreaper) gets it."""
    return not server_identity(vms_dir) or _read(server_dir(vms_dir) / STARTER) == identity()


def server_identity(vms_dir: Path) -> str:
    """``"<pid> <start time>"`` of the running server of ``vms_dir``; empty when there is none."""
    text = _read(server_dir(vms_dir) / IDENTITY)
    return text if text and identity_running(text) else ""


# -- client ---------------------------------------------------------------------------------


def spawn(vms_dir: Path, request: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> int:
    """Have the server of ``vms_dir`` (started when there is none) fork an agent; its pid.

    ``request``: ``argv`` (the agent's ``serve`` arguments), ``env``, ``cwd``, ``log`` (a path),
    ``netns`` (a path or None), ``cgroup_procs`` (``cgroup.procs`` files), ``title`` (the
    child's command line, a list).
    """
    return _request(vms_dir, {"kind": "agent", **request}, [], timeout)


def run(vms_dir: Path, module: str, argv: list[str], fds: list[int], timeout: float = REQUEST_TIMEOUT) -> int:
    """Have the server of ``vms_dir`` fork a child, in a session of its own, that runs
    ``module``'s ``main(argv)`` with ``fds`` as its descriptors 0, 1, 2, 3...; the child's pid.

    The caller's environment and working directory go with it. ``module`` must be one of this
    package's."""
    if not module.startswith("vmsandbox."):
        raise ForkServerError(f"the fork server runs this package's modules only, not {module!r}")
    request = {
        "kind": "run",
        "module": module,
        "argv": argv,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "title": [module, "(forked)", *argv],
    }
    return _request(vms_dir, request, fds, timeout)


def _request(vms_dir: Path, request: dict[str, Any], fds: list[int], timeout: float) -> int:
    with _connect(server_dir(vms_dir)) as sock:
        sock.settimeout(timeout)
        try:
            socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], fds)
            reply = _readline(sock)
        except OSError as exc:
            stop(vms_dir)  # hung or dying: the next request starts a new one
            raise ForkServerError(f"the fork server did not answer: {exc}") from exc
        word, _, rest = reply.partition(" ")
        if word == "error":  # the child's own failure: the server itself is fine
            raise ForkServerError(f"the fork server's child failed: {rest}")
        if word != "ok" or not rest.isdigit():
            stop(vms_dir)
            raise ForkServerError(f"the fork server answered {reply[:200]!r}")
        try:
            sock.sendall(b"go\n")
        except OSError as exc:
            raise ForkServerError(f"the fork server's child is gone: {exc}") from exc
    return int(rest)


def stop(vms_dir: Path) -> None:
    """Kill the server of ``vms_dir`` (its agents keep running) and remove its files."""
    directory = server_dir(vms_dir)
    text = _read(directory / IDENTITY)
    if text and identity_running(text):
        with contextlib.suppress(OSError):
            os.kill(int(text.split()[0]), SIGKILL)
    for name in (SOCKET, IDENTITY, LOCK, LOG, STARTER):
        (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def _connect(directory: Path) -> socket.socket:
    """A connection to the recorded, running server; one is started (under a lock) if needed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = _trusted(directory)
    if sock is not None:
        return sock
    with (directory / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _trusted(directory)
        if sock is None:
            _start(directory)
            sock = _trusted(directory)
    if sock is None:
        raise ForkServerError(f"the fork server did not come up: {_tail(directory / LOG)}")
    return sock


def _trusted(directory: Path) -> socket.socket | None:
    """Connected to the socket only while the server recorded beside it still runs."""
    recorded = _read(directory / IDENTITY)
    if not recorded or not identity_running(recorded):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(directory / SOCKET))
    except OSError:
        sock.close()
        return None
    return sock


def _start(directory: Path) -> None:
    """Start a server for ``directory`` (stale files of a dead one removed) and wait for it."""
    from vmsandbox.hypervisor.detached import spawn_detached

    os.chmod(directory, 0o700)  # the server runs what it is asked to as root: only root reaches it
    for name in (SOCKET, IDENTITY):
        (directory / name).unlink(missing_ok=True)
    (directory / STARTER).write_text(identity())
    env = dict(os.environ)
    env[DIR_ENV] = str(directory)
    env[PRELOAD_ENV] = ",".join(_EXTRA)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    # With site-packages (unlike the agent): this module's package imports pydantic. It is paid
    # once, and what the children run imports only the standard library.
    cmd = [sys.executable, "-m", "vmsandbox.hypervisor.forkserver", " " * TITLE_SPACE]
    with (directory / LOG).open("ab") as log:
        proc = spawn_detached(cmd, log=log, env=env, cwd=Path("/"))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.alive():
        if _read(directory / IDENTITY) and (directory / SOCKET).exists():
            return
        time.sleep(0.005)


def _readline(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _tail(path: Path) -> str:
    return _read(path)[-600:] or "no log"


# -- server ---------------------------------------------------------------------------------


def serve(directory: Path) -> None:
    """Accept requests until the socket is no longer ours or the server has been idle long."""
    import importlib

    extra = [m for m in os.environ.pop(PRELOAD_ENV, "").split(",") if m.startswith("vmsandbox.")]
    for name in [*PRELOAD, *extra]:
        importlib.import_module(name)
    sock_path = directory / SOCKET
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(64)
    listener.settimeout(0.5)
    inode = os.stat(sock_path).st_ino
    tmp = directory / f"{IDENTITY}.tmp"
    tmp.write_text(identity())
    tmp.replace(directory / IDENTITY)
    children: set[int] = set()
    last = time.monotonic()
    while _ours(sock_path, inode) and (children or time.monotonic() - last < IDLE_EXIT):
        _reap(children)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        if not _from_owner(conn):
            conn.close()
            continue
        last = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(conn, listener)
        conn.close()
        children.add(pid)
    if _ours(sock_path, inode):
        sock_path.unlink(missing_ok=True)
        (directory / IDENTITY).unlink(missing_ok=True)


def _from_owner(conn: socket.socket) -> bool:
    """Whether the peer runs as the server's own user: anyone else (a VMM user that escaped its
    guest, say) is refused before a byte of its request is read, whatever the socket's mode."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    if uid == os.getuid():
        return True
    print(f"refused a connection from uid {uid}", file=sys.stderr, flush=True)
    return False


def _ours(sock_path: Path, inode: int) -> bool:
    try:
        return os.stat(sock_path).st_ino == inode
    except OSError:
        return False


def _reap(children: set[int]) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        children.discard(pid)


def _child(conn: socket.socket, listener: socket.socket) -> NoReturn:
    """The forked child: read the request, set the sandbox up, fork its init, hand it over."""
    code = 1
    try:
        listener.close()
        conn.settimeout(REQUEST_TIMEOUT)
        request, fds = _read_request(conn)
        if request.get("kind") == "run":
            _run(conn, request, fds)
        _enter(request)
        ready_r, ready_w = os.pipe()
        init = os.fork()
        if init == 0:
            conn.close()
            os.close(ready_w)
            _init(request, ready_r)
        os.close(ready_r)
        conn.sendall(f"ok {os.getpid()}\n".encode())
        if _readline(conn) != "go":
            os.kill(init, SIGKILL)
            os.waitpid(init, 0)
            os._exit(1)
        os.write(ready_w, b"go")
        os.close(ready_w)
        conn.close()
        code = os.waitstatus_to_exitcode(os.waitpid(init, 0)[1])
    except BaseException as exc:  # whatever it was, the client must hear it
        with contextlib.suppress(OSError):
            conn.sendall(f"error {type(exc).__name__}: {exc}\n".encode())
    os._exit(code if code >= 0 else 128 - code)


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request line and the descriptors sent with it."""
    data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 16)
    while data and not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    request: dict[str, Any] = json.loads(data)
    return request, fds


def _run(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> NoReturn:
    """The forked child of a ``run`` request: its own session, the descriptors in place, the
    module's ``main`` (after the client's go)."""
    import importlib

    module = str(request["module"])
    if not module.startswith("vmsandbox.") or len(fds) < 3:
        raise ValueError(f"not a runnable request: {module!r} with {len(fds)} descriptors")
    os.setsid()
    set_title([str(arg) for arg in request["title"]])
    conn.sendall(f"ok {os.getpid()}\n".encode())
    if _readline(conn) != "go":
        os._exit(1)
    conn.close()
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 256) for fd in fds]
    for fd in fds:
        os.close(fd)
    for number, fd in enumerate(high):
        os.dup2(fd, number)
        os.close(fd)
    os.closerange(len(high), 256)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    with contextlib.suppress(OSError):
        os.chdir(str(request["cwd"]))
    code = 0
    try:
        importlib.import_module(module).main([str(arg) for arg in request["argv"]])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # its own output is where its errors go
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


def _enter(request: dict[str, Any]) -> None:
    """Cgroup, session, network namespace, new namespaces, private mounts, name (in the child)."""
    from vmsandbox.hypervisor.cgroups import enter_host_namespace

    procs = [str(p) for p in request["cgroup_procs"]]
    if procs:
        enter_host_namespace()
        for procs_file in procs:
            Path(procs_file).write_text(str(os.getpid()))
    os.setsid()
    set_title([str(arg) for arg in request["title"]])
    libc = _libc()
    if request["netns"]:
        fd = os.open(str(request["netns"]), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(libc.setns(fd, CLONE_NEWNET), f"setns {request['netns']}")
        finally:
            os.close(fd)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID), "unshare")
    _check(libc.mount(b"none", b"/", None, c_ulong(MS_REC | MS_PRIVATE), None), "making / private")
    log = os.open(str(request["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)


def _init(request: dict[str, Any], ready: int) -> NoReturn:
    """PID 1 of the sandbox: wait for the go, mount /proc, run the agent."""
    code = 1
    try:
        libc = _libc()
        libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
        if os.read(ready, 2) != b"go":
            os._exit(1)
        os.close(ready)
        private = c_ulong(MS_REC | MS_PRIVATE)
        _check(libc.mount(b"none", b"/proc", None, private, None), "making /proc private")
        flags = c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _check(libc.mount(b"proc", b"/proc", b"proc", flags, None), "mounting /proc")
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        with contextlib.suppress(OSError):
            os.chdir(str(request["cwd"]))
        from vmsandbox.guest.__main__ import main

        code = main([str(arg) for arg in request["argv"]])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # reported in the agent's log, like a crash
        import traceback

        traceback.print_exc()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def set_title(args: list[str]) -> None:
    """Rewrite this process's command line (the memory ``/proc/<pid>/cmdline`` reads) in place,
    as far as the room in the server's own command line goes."""
    import ctypes

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):
        return
    size = end - start
    if size <= 1:
        return
    data = b"\0".join(arg.encode() for arg in args)[: size - 1]
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def main() -> None:
    directory = os.environ.get(DIR_ENV)
    if not directory:
        print(f"vmsandbox fork server: {DIR_ENV} is not set", file=sys.stderr)
        sys.exit(2)
    os.environ.pop(DIR_ENV)
    serve(Path(directory))


if __name__ == "__main__":
    main()
