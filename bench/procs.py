"""Processes for the benchmarks: start pinned, wait for a port, account CPU and memory from
/proc across the whole process tree, and always stop what was started."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text()
                    .split()]
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants now alive."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process tree, including reaped children (cutime/cstime)."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process tree, including reaped children: where a
    proxy's time goes, its own code or the kernel's (sockets, epoll, TCP)."""
    user = system = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            # after the comm: state=0 ... utime=11 stime=12 cutime=13 cstime=14
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def rss_kib(pid: int, field: str = "VmRSS", *, children: bool = True) -> int:
    """Summed RSS (or VmHWM, the peak) of the tree (of `pid` alone: children=False), KiB."""
    total = 0
    for p in tree(pid) if children else [pid]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float]:
        return cpu_split(self.pid)

    def peak_rss_kib(self) -> int:
        return rss_kib(self.pid, "VmHWM")

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def start(name: str, argv: Sequence[str], *, cpus: str | None, logdir: Path,
          env: dict[str, str] | None = None, cwd: str | None = None) -> Proc:
    """Start `argv` in its own process group, pinned to `cpus` (taskset list) if given."""
    if cpus is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus, *argv]
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    fh = log.open("wb")
    p = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT,
                         start_new_session=True, env=env, cwd=cwd)
    fh.close()
    return Proc(name, p, log)


class Group:
    """Everything a scenario started; stopped on exit whatever happens."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, p: Proc) -> Proc:
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


@contextlib.contextmanager
def group() -> Iterator[Group]:
    g = Group()
    try:
        yield g
    finally:
        g.stop()
