"""Process identity for cluster/local's scripts, from /proc (Linux).

    owner.py listens SESSION PORT   exit 0 when a process of session SESSION listens on 127.0.0.1:PORT
    owner.py stamp PID              print "PID STARTTIME" (the kernel's start time of PID, in clock ticks)
    owner.py same STAMP             exit 0 when STAMP's PID still runs and started at STAMP's time
    owner.py group PGID             exit 0 while a live (not zombie) process is in process group PGID

start.sh runs each service in its own session (setsid), so the service's PID is its session id: a
readiness probe that only asks "does the port answer?" can be fooled by another program on that port,
and a PID file can outlive its process and name a stranger. These checks tie both to the process
start.sh started.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"


def _stat_fields(pid: int) -> list[str]:
    text = (PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # the fields after the command name, from "state"


def group_alive(pgid: int) -> bool:
    """A zombie (exited, not yet reaped by its parent) counts as gone: it holds nothing."""
    for proc in PROC.iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(proc.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def session_of(pid: int) -> int:
    return int(_stat_fields(pid)[3])


def start_time(pid: int) -> int:
    return int(_stat_fields(pid)[19])


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        path = PROC / "net" / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def session_listens(session: int, port: int) -> bool:
    inodes = {f"socket:[{i}]" for i in listening_inodes(port)}
    if not inodes:
        return False
    for proc in PROC.iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if session_of(int(proc.name)) != session:
                continue
            if any(str(fd.readlink()) in inodes for fd in (proc / "fd").iterdir()):
                return True
        except (FileNotFoundError, PermissionError, ProcessLookupError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return False


def same_process(stamp: str) -> bool:
    pid, started = (int(v) for v in stamp.split())
    try:
        return start_time(pid) == started
    except (FileNotFoundError, ProcessLookupError):
        return False


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "listens":
        return 0 if session_listens(int(args[0]), int(args[1])) else 1
    if command == "stamp":
        print(args[0], start_time(int(args[0])))
        return 0
    if command == "group":
        return 0 if group_alive(int(args[0])) else 1
    if command == "same":
        return 0 if same_process(" ".join(args)) else 1
    print(f"owner.py: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
