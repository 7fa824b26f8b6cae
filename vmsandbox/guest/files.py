"""Files inside a running container's root: read (a file, or a directory as a tar stream), write, list.

Every path is resolved inside the container's root as the container itself would see it
(``/proc/<init pid>/root``, mounts included), one component at a time from directory
descriptors: ``..`` stops at the root, and a symlink's target is resolved again inside the root,
never by the kernel, so neither can lead out of it (the semantics of ``openat2``'s
``RESOLVE_IN_ROOT``, without needing it). The last component is opened with ``O_NOFOLLOW``, so
a symlink swapped in meanwhile fails instead of being followed.

Written files are created under a temporary name and renamed into place; set-id bits are
dropped, since the files are owned by root of the guest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tarfile

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest import streams
from vmsandbox.guest.containers import ContainerError, ContainerTable
from vmsandbox.guest.exec import running_container
from vmsandbox.guest.protocol import (
    Failure,
    ListPath,
    Ok,
    PathEntry,
    PathList,
    ReadPath,
    Streaming,
    WritePath,
    send_frame,
)
from vmsandbox.guest.wire import ProtocolError

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket

MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathError(VMSandboxError):
    step = "path"


def _os_error(path: str, exc: OSError) -> PathError:
    return PathError(f"{path}: {exc.strerror or exc}")


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


class Resolved:
    """A path resolved inside a root: its parent directory's descriptor and its last name
    (empty when the path is the root itself or resolved to a directory)."""

    def __init__(self, dir_fd: int, name: str) -> None:
        self.dir_fd = dir_fd
        self.name = name

    def __enter__(self) -> Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.dir_fd)


def resolve(root_fd: int, path: str, *, follow_last: bool = True) -> Resolved:
    """Resolve ``path`` under ``root_fd`` as if ``root_fd`` were ``/``.

    A missing last component is allowed (the caller may create it); a missing parent is not.
    """
    stack = [os.dup(root_fd)]
    todo = _parts(path)
    links = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not todo
            if last and not follow_last:
                return _keep_top(stack, name)
            try:
                st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                if last:
                    return _keep_top(stack, name)
                raise
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links")
                target = os.readlink(name, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                todo = _parts(target) + todo
                continue
            if last and not stat.S_ISDIR(st.st_mode):
                return _keep_top(stack, name)
            stack.append(os.open(name, _DIR_FLAGS, dir_fd=stack[-1]))
        return _keep_top(stack, "")
    except BaseException:
        for fd in stack:
            os.close(fd)
        raise


def _keep_top(stack: list[int], name: str) -> Resolved:
    for fd in stack[:-1]:
        os.close(fd)
    return Resolved(stack[-1], name)


def open_root(table: ContainerTable, container_id: str) -> int:
    """A descriptor of the running container's root directory, as its processes see it."""
    container = running_container(table, container_id)
    try:
        return os.open(f"/proc/{container.guest_pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ContainerError(
            f"cannot open the root of container {container_id!r}: {exc}", step="path"
        ) from exc


def _open_existing(root_fd: int, path: str) -> tuple[int, os.stat_result]:
    """Open the file or directory at ``path`` (symlinks resolved in the root) for reading."""
    with resolve(root_fd, path) as where:
        if not where.name:
            fd = os.dup(where.dir_fd)
        else:
            fd = os.open(
                where.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=where.dir_fd
            )
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.close(fd)
        raise PathError(f"{path}: not a regular file or directory")
    os.set_blocking(fd, True)
    return fd, st


def _open_in_container(table: ContainerTable, container_id: str, path: str) -> tuple[int, os.stat_result]:
    """The file or directory at ``path`` in a running container, opened for reading; an OS error
    becomes the typed error the host reports."""
    root = open_root(table, container_id)
    try:
        return _open_existing(root, path)
    except OSError as exc:
        raise _os_error(path, exc) from exc
    finally:
        os.close(root)


# ---- list --------------------------------------------------------------------------------


def _entry(name: str, st: os.stat_result, target: str | None) -> PathEntry:
    if stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        kind = "other"
    return PathEntry(name=name, kind=kind, size=st.st_size, mode=st.st_mode, mtime=st.st_mtime, target=target)


def list_path(table: ContainerTable, req: ListPath) -> PathList:
    fd, st = _open_in_container(table, req.container_id, req.path)
    try:
        if not stat.S_ISDIR(st.st_mode):
            return PathList(entries=[_entry(os.path.basename(req.path.rstrip("/")) or "/", st, None)])
        entries = []
        for name in sorted(os.listdir(fd)):
            try:
                child = os.stat(name, dir_fd=fd, follow_symlinks=False)
                target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(child.st_mode) else None
            except OSError:
                continue  # removed meanwhile
            entries.append(_entry(name, child, target))
        return PathList(entries=entries)
    finally:
        os.close(fd)


# ---- read ---------------------------------------------------------------------------------


class _ChunkFile:
    """A write-only file object whose bytes become stdout chunks (tarfile's stream output)."""

    def __init__(self, writer: streams.ChunkWriter) -> None:
        self.writer = writer

    def write(self, data: bytes) -> int:
        self.writer.send(streams.STDOUT, bytes(data))
        return len(data)


def _send_file(fd: int, writer: streams.ChunkWriter) -> None:
    with os.fdopen(fd, "rb", buffering=0, closefd=False) as file:
        while writer.send_file(streams.STDOUT, file, streams.FILE_CHUNK):
            pass


def _tar_dir(dir_fd: int, prefix: str, tar: tarfile.TarFile) -> None:
    """Add every entry under ``dir_fd`` (names relative to the directory read) to ``tar``."""
    for name in sorted(os.listdir(dir_fd)):
        arcname = f"{prefix}{name}"
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        if stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=dir_fd)
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _tar_dir(child, arcname + "/", tar)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as file:
                info.size = os.fstat(file.fileno()).st_size
                tar.addfile(info, file)
        # Devices, fifos and sockets are not copied.


def _read(table: ContainerTable, conn: _socket.socket, req: ReadPath) -> None:
    fd, st = _open_in_container(table, req.container_id, req.path)
    writer = streams.ChunkWriter(conn, streams.FILE_CHUNK)
    try:
        is_dir = stat.S_ISDIR(st.st_mode)
        send_frame(conn, Streaming(kind="dir" if is_dir else "file", size=None if is_dir else st.st_size))
        try:
            if is_dir:
                with tarfile.open(fileobj=_ChunkFile(writer), mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                    _tar_dir(fd, "", tar)
            else:
                _send_file(fd, writer)
        except (OSError, tarfile.TarError) as exc:
            writer.send_message(streams.STATUS, _failure(req.path, exc))
            return
        writer.send_message(streams.STATUS, Ok())
    finally:
        os.close(fd)


# ---- write --------------------------------------------------------------------------------


class _ChunkReader:
    """A read-only file object over the host's stdin chunks, ending at its close chunk."""

    def __init__(self, conn: _socket.socket) -> None:
        self.conn = conn
        self.buffer = b""
        self.done = False

    def _next(self) -> bytes:
        while not self.done:
            chunk = streams.recv_chunk(self.conn)
            if chunk is None:
                raise ProtocolError("the host hung up before the end of the data")
            channel, payload = chunk
            if channel == streams.STDIN and payload:
                return payload
            if channel == streams.CLOSE:
                self.done = True
        return b""

    def read(self, size: int = -1) -> bytes:
        if not self.buffer and size >= 0 and not self.done:
            piece = self._next()  # the common case: hand a whole chunk on without copying
            if len(piece) <= size:
                return piece
            self.buffer = piece
        while not self.done and (size < 0 or len(self.buffer) < size):
            piece = self._next()
            if not piece:
                break
            self.buffer += piece
        if size < 0:
            size = len(self.buffer)
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def copy_to(self, fd: int) -> None:
        """Write every remaining stdin byte to ``fd``: received into one reused buffer and
        written from it, without a bytes object per chunk."""
        if self.buffer:
            _write_all(fd, memoryview(self.buffer))
            self.buffer = b""
        buf = memoryview(bytearray(streams.MAX_CHUNK))
        with streams.Splicer(self.conn) as splicer:
            while not self.done:
                header = streams.recv_header(self.conn)
                if header is None:
                    raise ProtocolError("the host hung up before the end of the data")
                length, channel = header
                if channel == streams.STDIN and splicer.move(fd, length):
                    continue
                piece = buf[:length]
                if length and not streams.recv_exact_into(self.conn, piece):
                    raise ProtocolError("connection closed after a chunk header")
                if channel == streams.STDIN:
                    _write_all(fd, piece)
                elif channel == streams.CLOSE:
                    self.done = True

    def drain(self) -> None:
        while self._next():
            pass


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _write_file(dir_fd: int, name: str, source: _ChunkReader | tarfile.ExFileObject, mode: int) -> None:
    """Write ``source`` to ``name`` under ``dir_fd`` through a temporary file renamed into place."""
    temp = f".vmsandbox-{secrets.token_hex(6)}"
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
    )
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, _ChunkReader):
                source.copy_to(fd)
            else:
                while data := source.read(streams.FILE_CHUNK):
                    out.write(data)
            os.fchmod(out.fileno(), mode & 0o777)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def _makedirs(root_fd: int, path: str) -> None:
    """Create ``path`` and its missing parents inside the root (like ``mkdir -p``)."""
    parts = _parts(path)
    for i in range(1, len(parts) + 1):
        with resolve(root_fd, "/".join(parts[:i])) as where:
            if where.name:
                try:
                    os.mkdir(where.name, 0o755, dir_fd=where.dir_fd)
                except FileExistsError:
                    raise PathError(f"{'/'.join(parts[:i])}: exists and is not a directory") from None


def _member_path(dest: str, name: str) -> str:
    parts = _parts(name)
    if ".." in parts:
        raise PathError(f"archive member {name!r}: '..' is not allowed")
    return "/".join([dest.rstrip("/"), *parts])


def _unpack(root_fd: int, dest: str, reader: _ChunkReader) -> None:
    _makedirs(root_fd, dest)
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            path = _member_path(dest, member.name)
            if member.isdir():
                _makedirs(root_fd, path)
                continue
            _makedirs(root_fd, path.rsplit("/", 1)[0])  # archives need not list every directory
            with resolve(root_fd, path, follow_last=False) as where:
                if not where.name:
                    raise PathError(f"archive member {member.name!r} names the destination itself")
                if member.isreg():
                    source = tar.extractfile(member)
                    assert source is not None
                    _write_file(where.dir_fd, where.name, source, member.mode)
                elif member.issym():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(where.name, dir_fd=where.dir_fd)
                    os.symlink(member.linkname, where.name, dir_fd=where.dir_fd)
                else:
                    raise PathError(f"archive member {member.name!r}: only files, directories and symlinks")


def _write(table: ContainerTable, conn: _socket.socket, req: WritePath) -> None:
    root = open_root(table, req.container_id)
    try:
        send_frame(conn, Streaming(kind="write"))
        writer = streams.ChunkWriter(conn)
        reader = _ChunkReader(conn)
        try:
            if req.kind == "tar":
                _unpack(root, req.path, reader)
            else:
                with resolve(root, req.path) as where:
                    if not where.name:
                        raise PathError(f"{req.path}: is a directory")
                    _write_file(where.dir_fd, where.name, reader, 0o644 if req.mode is None else req.mode)
            reader.drain()
        except (OSError, tarfile.TarError, VMSandboxError) as exc:
            if not isinstance(exc, ProtocolError):
                with contextlib.suppress(OSError, ProtocolError):
                    reader.drain()  # the host sends everything before it reads the status
            writer.send_message(streams.STATUS, _failure(req.path, exc))
            return
        writer.send_message(streams.STATUS, Ok())
    finally:
        os.close(root)


def _failure(path: str, exc: BaseException) -> Failure:
    """What went wrong with a tenant's path or archive: step ``path`` or ``tar``, never the agent's fault."""
    if isinstance(exc, VMSandboxError):
        return Failure(step=exc.step, detail=exc.detail)
    if isinstance(exc, OSError):
        return Failure(step="path", detail=f"{path}: {exc.strerror or exc}")
    return Failure(step="tar", detail=f"{path}: {exc}")


def serve_stream(table: ContainerTable, conn: _socket.socket, req: ReadPath | WritePath) -> None:
    """Serve a read or write request on its connection; refusals are a :class:`Failure` reply."""
    try:
        if isinstance(req, ReadPath):
            _read(table, conn, req)
        else:
            _write(table, conn, req)
    except VMSandboxError as exc:
        send_frame(conn, Failure(step=exc.step, detail=exc.detail))
