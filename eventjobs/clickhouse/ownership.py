"""Who holds the chdb data directory, and where its read API answers.

A chdb data directory can be open in one process only (ClickHouse takes an exclusive `flock` on
`<dir>/status`). The process that opens it writes an owner record next to it
(`<dir>.owner.json`: pid, role, read API address and token, owner socket), so that another
process that finds the directory locked can say who holds it and, when that owner serves the read
API, talk to it instead of failing. The record holds the read API's token, so it is written
readable by its owner only (mode 0600), like a key file: a process that can read it could read
the chdb directory beside it too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class OwnerRecord:
    """The process holding a chdb directory: its pid, what it is, its read API (if any) with the
    API's token, and the owner socket through which local eventjobs commands may write."""

    pid: int
    role: str
    read_api: str | None
    started_at: float
    read_api_token: str | None = field(default=None, repr=False)
    owner_socket: str | None = None

    def describe(self) -> str:
        api = f", read API at {self.read_api}" if self.read_api else ", no read API"
        return f"{self.role} (pid {self.pid}{api})"


def owner_file(data_dir: Path) -> Path:
    """Where the owner record of `data_dir` lives (beside it, not inside ClickHouse's files)."""
    return data_dir.parent / f"{data_dir.name}.owner.json"


def default_role() -> str:
    """A readable name for this process: `eventjobs project`, `eventjobs jobs list`, or python."""
    argv = [arg for arg in sys.argv[1:3] if not arg.startswith("-")]
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if not program or program.startswith("-"):
        program = "python"
    return " ".join([program, *argv]) if program == "eventjobs" else f"{program} (pid {os.getpid()})"


def write_owner(data_dir: Path, role: str, read_api: str | None = None, *, read_api_token: str | None = None,
                owner_socket: str | None = None) -> OwnerRecord:
    """Record this process as the owner of `data_dir` (atomically: write then rename; mode 0600)."""
    record = OwnerRecord(pid=os.getpid(), role=role, read_api=read_api, started_at=time.time(),
                         read_api_token=read_api_token, owner_socket=owner_socket)
    target = owner_file(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # also when an older file of that name was wider
        handle.write(json.dumps(asdict(record)))
    temporary.replace(target)
    return record


def clear_owner(data_dir: Path) -> None:
    """Remove the owner record if it is this process's."""
    record = read_owner(data_dir)
    if record is not None and record.pid == os.getpid():
        owner_file(data_dir).unlink(missing_ok=True)


def read_owner(data_dir: Path) -> OwnerRecord | None:
    """The recorded owner, or None when there is no (readable) record."""
    try:
        payload = json.loads(owner_file(data_dir).read_text())
        return OwnerRecord(int(payload["pid"]), str(payload["role"]), payload.get("read_api"),
                           float(payload.get("started_at", 0.0)), payload.get("read_api_token"),
                           payload.get("owner_socket"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_owner(data_dir: Path) -> OwnerRecord | None:
    """The recorded owner if that process still runs and the directory is really locked."""
    record = read_owner(data_dir)
    if record is None or record.pid == os.getpid() or not _pid_alive(record.pid):
        return None
    return record if directory_locked(data_dir) else None


def directory_locked(data_dir: Path) -> bool:
    """Whether another process holds ClickHouse's lock on `data_dir/status` right now.

    Uses the same `flock` ClickHouse takes, released at once; only meaningful when this process
    has not opened the directory itself.
    """
    status = data_dir / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def locking_pid(data_dir: Path) -> int | None:
    """The pid ClickHouse wrote into `data_dir/status` (the holder, when locked)."""
    try:
        for line in (data_dir / "status").read_text().splitlines():
            if line.startswith("PID:"):
                return int(line.split(":", 1)[1])
    except (OSError, ValueError):
        return None
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
