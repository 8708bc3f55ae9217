"""Processes of the local Flower engine: start-up tools, logs, and killing and reaping a process tree (Linux).

Flower's SuperExecs never reap the ``flwr-serverapp``/``flwr-clientapp`` processes they start; while an engine runs
it makes its own process the *child subreaper*, so that everything below it is re-parented to it and can be found
in ``/proc``, killed and reaped here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LOG_TAIL_LINES = 40
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


class EngineError(RuntimeError):
    """A Flower command or process of the local engine failed; the message says which, how, and shows its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; another process may still take it later).

    Args:
        host: The address to bind to.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_tool(name: str) -> str | None:
    """The program ``name`` on PATH or beside this interpreter (a venv's scripts need not be on PATH), or ``None``."""
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    return path if Path(path).is_file() else None


def _tool(name: str, fix: str) -> str:
    path = find_tool(name)
    if path is None:
        raise EngineError(f"`{name}` was not found on PATH or beside {sys.executable}; {fix}")
    return path


def _check_call(command: list[str], *, what: str, log: Path | None = None, timeout: float = 120,
                env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired as err:
        raise EngineError(f"{what}: `{shlex.join(command)}` did not finish within {timeout:g} s"
                          + _tail_section(log)) from err
    if done.returncode != 0:
        raise EngineError(f"{what}: `{shlex.join(command)}` failed with exit code {done.returncode}:\n"
                          f"{_tail_text(done.stdout + done.stderr)}" + _tail_section(log))
    return done.stdout


def _tail_text(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(_ANSI.sub("", text).rstrip().splitlines()[-lines:])


def _tail_section(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace")
    return f"\n--- last lines of {log} ---\n{_tail_text(text)}" if text.strip() else f"\n({log} is empty)"


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """Every process as pid -> (parent pid, process group, command name), from /proc (empty without /proc)."""
    table: dict[int, tuple[int, int, str]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), name)
    return table


def _descendants(roots: Sequence[int]) -> dict[int, tuple[int, str]]:
    """Every process below ``roots``, found through parent links: pid -> (process group, command name)."""
    children: dict[int, list[int]] = {}
    table = _proc_table()
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, tuple[int, str]] = {}
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found[child] = table[child][1:]
                stack.append(child)
    return found


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer exists; reaps it first if it is a zombie child of this process."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _kill(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _reap(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until ``pids`` are gone (reaping those that are this process's zombies); the pids still there."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while left:
        left = [pid for pid in left if not _gone(pid)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return left


def _prctl(option: int, arg: Any) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0))
    except (OSError, AttributeError):
        return None


class _Subreaper:
    """Makes this process the child subreaper (Linux) while at least one engine runs, then restores the setting.

    Orphans below a subreaper are re-parented to it instead of to PID 1, so the engine can reap the SuperExecs'
    zombies (and the SuperExec of the SuperLink, which lives in a session of its own) instead of leaving them to an
    init process that may reap late or never (containers).
    """

    users = 0
    restore = False

    @classmethod
    def acquire(cls) -> None:
        if cls.users == 0:
            flag = ctypes.c_int(0)
            _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag))
            cls.restore = flag.value == 0 and _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
        cls.users += 1

    @classmethod
    def release(cls) -> None:
        cls.users = max(cls.users - 1, 0)
        if cls.users == 0 and cls.restore:
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)
            cls.restore = False


def _terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM then SIGKILL the process groups of ``procs`` and everything below them; reap what can be reaped."""
    procs = [p for p in procs if p.returncode is None]
    below = _descendants([p.pid for p in procs])
    groups = {p.pid for p in procs} | {pgid for pgid, _ in below.values() if pgid in below}  # group leaders below us
    for pgid in groups:
        _killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for pgid in groups:
        _killpg(pgid, signal.SIGKILL)
    _kill(list(below))
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    _reap(list(below), timeout=10)


def _kill_all_at_exit(procs: list[subprocess.Popen[bytes]]) -> None:
    with contextlib.suppress(Exception):
        _terminate(procs, grace=1.0)
