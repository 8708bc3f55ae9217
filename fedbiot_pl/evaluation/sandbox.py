"""Run untrusted generated programs (HumanEval-style functional tests) in an isolated subprocess.

Linux only. Each run gets a fresh temporary folder and a *launcher*: this file executed as a script
(``python -I -S sandbox.py --launch CONFIG``, standard library only), which prepares the isolation,
forks the program and reports its exit status. As root on Linux the program runs

* in new **network** (no interface up: nothing, not even 127.0.0.1, can be reached), **mount** and
  **PID** namespaces. The PID namespace ends with the program: when it exits or is killed, the
  kernel kills every process it left behind, daemons included;
* with a private size-limited tmpfs as working folder and as ``/tmp``, ``/var/tmp``, ``/dev/shm``
  and ``/run/lock``, so it writes nothing to the host's disks; a folder closed to other users on
  the way to the interpreter (``/root`` of a pyenv install, pytest's 0700 ``/tmp/pytest-of-root``)
  is replaced by an empty tmpfs;
* seeing the folders its :class:`Language` needs (for Python the interpreter's prefixes, see
  :func:`python_language`) read-only, wherever they lie. A needed folder that the private tmpfs or
  a hiding tmpfs would cover (a virtual environment under ``/tmp``, a conda prefix under
  ``/root``) is opened (``O_PATH``) *before* anything is mounted over it, and bound back from that
  handle (``/proc/self/fd/N``) onto the same path, recreated (0755) in the new tmpfs; a read-only,
  nosuid, nodev remount follows (sub-mounts keep their own flags). Without that order the folder
  would already be hidden when it is bound;
* as an unprivileged user of its own (uid = gid from ``UID_BASE``, one per concurrent run, chosen
  with a lock file so several processes can share the machine; not ``nobody``, whose process count
  and processes other programs share), without supplementary groups;
* under ``RLIMIT_AS``, ``RLIMIT_CPU``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and no
  core dumps, with stdin closed (``/dev/null``), stdout discarded, a minimal environment, and a
  wall-clock limit enforced by the launcher (``GRACE_S`` later the caller kills the launcher's
  process group, and the program with it: parent-death signal).

Without root the launcher tries the same namespaces inside a user namespace (the program keeps the
caller's uid, so it can still touch the caller's files; nothing needs hiding from it, but needed
folders under the private tmpfs are bound back read-only the same way). If no network namespace can be made, the
Python program starts with the socket modules disabled (best effort; ``ExecutionResult.network``
says which protection applied). Programs can still *read* world-readable host files.

Other languages (HumanEval-X C++, Go, Java, ...) need only a :class:`Language`: a program builder, a
file name and a command (``["/bin/sh", "-c", "g++ main.cpp && ./a.out"]`` for compiled ones).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import pwd
import resource
import select
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import IO, Literal

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x20000, 0x20000000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
KEPT_MOUNT_FLAGS = ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                    (os.ST_RELATIME, MS_RELATIME))
"""statvfs flag -> mount flag that a read-only remount of a bound folder carries over."""
PR_SET_PDEATHSIG = 1
UID_BASE = 64000
"""First uid (and gid) handed to sandboxed programs; uids known to the passwd database are skipped."""
UID_SLOTS = 256
LAUNCH_FAILED = 125  # launcher exit code: the sandbox itself could not be set up
TIMED_OUT = 124  # launcher exit code: the program hit the wall-clock limit and was killed
TIMEOUT_MARK = "fedbiot-sandbox: killed at the wall-clock limit of"
GRACE_S = 10.0  # extra wall time for the launcher itself before the caller kills it
SHARED_WRITABLE = ("/var/tmp", "/dev/shm", "/run/lock")
Status = Literal["passed", "failed", "timeout", "error"]


@dataclass(frozen=True)
class Limits:
    """Resource limits of one program run; every process of the run gets the per-process ones."""

    timeout_s: float = 10.0
    """Wall-clock limit of the program (from its start); then all its processes are killed."""
    cpu_s: int | None = None
    """RLIMIT_CPU in seconds, soft = hard (SIGKILL); ``None``: the wall limit rounded down, plus one."""
    memory_bytes: int = 2 * 1024**3
    """RLIMIT_AS: virtual memory of each process (allocations beyond fail, e.g. ``MemoryError``)."""
    max_processes: int = 32
    """RLIMIT_NPROC: processes and threads the program's user may own at once."""
    max_file_bytes: int = 16 * 1024**2
    """RLIMIT_FSIZE: writes beyond this file size fail with EFBIG."""
    disk_bytes: int = 64 * 1024**2
    """Size of the private tmpfs holding the working folder and /tmp (with a mount namespace)."""
    max_open_files: int = 256
    """RLIMIT_NOFILE."""

    def __post_init__(self) -> None:
        """Reject limits that are zero or negative."""
        bad = [f"{k}={v}" for k, v in asdict(self).items() if v is not None and v <= 0]
        if bad:
            raise ValueError(f"Sandbox limits must be positive, got {', '.join(bad)}.")


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program.

    ``status`` is passed; failed (the program's fault: an exception, a syntax error, a non-zero exit,
    a limit hit); timeout (the wall-clock limit); or error (the sandbox could not run it).
    """

    passed: bool
    status: Status
    reason: str
    """Short explanation: the last line the program wrote to stderr, the signal, or the setup error."""
    network: Literal["namespace", "socket-disabled", "none"]
    """How network access was blocked."""


@dataclass(frozen=True)
class Language:
    """How to turn a problem and a completion into a program, and how to run it."""

    name: str
    file_name: str
    build: Callable[[Mapping[str, str], str], str]
    """(problem, completion) -> program source."""
    command: Callable[[str], list[str]]
    """file name -> argv, run in the working folder."""
    no_network_preamble: str = ""
    """Source put before the program when no network namespace is available."""
    needs: tuple[str, ...] = ()
    """Folders the program's user must reach (interpreter, toolchain)."""


def humaneval_python_program(problem: Mapping[str, str], completion: str) -> str:
    """HumanEval program: prompt + completion, then the tests and ``check(<entry_point>)``."""
    missing = [key for key in ("prompt", "test", "entry_point") if key not in problem]
    if missing:
        raise ValueError(f"HumanEval problem lacks {missing}; it needs prompt, test and entry_point.")
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def python_language(interpreter: str = sys.executable, site: bool = True) -> Language:
    """Python, run as ``interpreter -I [-S] main.py``; ``site=False`` skips site-packages (faster).

    The sandbox exposes the folder of ``interpreter`` and of its target (a virtual environment's
    ``bin/python`` is a symlink), the interpreter's prefixes (the standard library, site-packages
    and ``libpython`` lie there, not in ``bin/``) and a virtual environment's root (``pyvenv.cfg``).
    Another interpreter than this one is asked for its prefixes once (``-I -S``: no site code runs).

    Raises:
        ValueError: ``interpreter`` cannot be run, or is not a Python 3 interpreter.
    """
    path = os.path.abspath(interpreter)  # not resolved: a virtual environment is found from this path
    flags = ["-I"] if site else ["-I", "-S"]
    return Language(
        name="python", file_name="main.py", build=humaneval_python_program,
        command=lambda file: [path, *flags, file],
        no_network_preamble="import sys; sys.modules.update(dict.fromkeys(('socket', '_socket', 'ssl', '_ssl')))\n",
        needs=_python_folders(path),
    )


@cache
def _python_folders(path: str) -> tuple[str, ...]:
    """Folders the interpreter at the absolute ``path`` reads: see :func:`python_language`."""
    folders = {os.path.dirname(path), os.path.dirname(os.path.realpath(path))}
    # pyvenv.cfg lies next to the executable or one folder up; Python 3.10 reads it only in site.py, which
    # -S skips, so asking a 3.10 venv interpreter would not name its root.
    folders |= {root for root in (os.path.dirname(path), os.path.dirname(os.path.dirname(path)))
                if os.path.isfile(os.path.join(root, "pyvenv.cfg"))}
    if path == os.path.abspath(sys.executable):
        return tuple(sorted(folders | {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}))
    code = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]))"
    try:
        asked = subprocess.run([path, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                               check=False, stdin=subprocess.DEVNULL)
        prefixes = json.loads(asked.stdout) if asked.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as error:
        asked, prefixes = error, None
    if not (isinstance(prefixes, list) and all(isinstance(p, str) and os.path.isabs(p) for p in prefixes)):
        detail = asked if isinstance(asked, Exception) else (asked.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"Cannot ask the Python interpreter {path} for its prefixes ({detail}); "
                         f"pass the path of a working Python 3 executable.")
    return tuple(sorted(folders | set(prefixes)))


LANGUAGES: dict[str, Language] = {"python": python_language()}


def run_program(source: str, language: str | Language = "python", limits: Limits = Limits()) -> ExecutionResult:
    """Run one program in the sandbox and wait for it (at most ``limits.timeout_s``).

    Args:
        source: The full program text.
        language: A name in :data:`LANGUAGES` or a :class:`Language`.
        limits: Resource limits.

    Returns:
        The :class:`ExecutionResult`; the run's folder and processes are gone when it returns.

    Raises:
        ValueError: Unknown language name, or the language needs a folder the private tmpfs replaces.
    """
    spec = _language(language)
    modes = isolation()
    network = "namespace" if modes["net"] else ("socket-disabled" if spec.no_network_preamble else "none")
    if not modes["net"]:
        source = spec.no_network_preamble + source
    root = os.geteuid() == 0
    hidden, binds = _exposure(spec.needs, _masked_folders() if modes["mount"] else [], closed=root)
    if binds and not modes["mount"]:
        return ExecutionResult(False, "error", f"sandbox user cannot reach {binds[0]} (no mount namespace "
                               f"to expose it); use an interpreter readable by all users", network)
    with _sandbox_user() as (uid, gid), tempfile.TemporaryDirectory(prefix="fedbiot-sandbox-") as folder:
        src, work = Path(folder, "src"), Path(folder, "work")
        src.mkdir(mode=0o700)
        work.mkdir(mode=0o700)
        (src / spec.file_name).write_text(source, encoding="utf-8")
        os.chmod(folder, 0o711)
        if root:
            os.chown(work, uid, gid)
        config = {
            "src": str(src), "work": str(work), "uid": uid, "gid": gid, "root": root, "hidden": hidden, "binds": binds,
            "net": modes["net"], "mount": modes["mount"], "limits": asdict(limits),
            "argv": spec.command(spec.file_name),
        }
        with open(Path(folder, "stderr"), "w+b") as stderr:
            code = _launch_and_wait(config, stderr, limits.timeout_s + GRACE_S)
            stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 4096))
            tail = stderr.read().decode(errors="replace")
    if code is None:
        return ExecutionResult(False, "error", f"fedbiot-sandbox: the launcher did not finish within "
                               f"{limits.timeout_s + GRACE_S:g} s and was killed (machine overloaded?)", network)
    return _result(code, tail, network)


def check_completions(
    problems: Sequence[Mapping[str, str]], completions: Sequence[str], language: str | Language = "python",
    limits: Limits = Limits(), workers: int | None = None,
) -> list[ExecutionResult]:
    """Test ``completions[i]`` against ``problems[i]``, ``workers`` runs at a time (default: CPU count).

    Raises:
        ValueError: Different lengths, an unknown language, or a problem without the builder's fields.
    """
    if len(problems) != len(completions):
        raise ValueError(f"Got {len(problems)} problems but {len(completions)} completions; give one problem each.")
    spec = _language(language)
    programs = [spec.build(problem, completion) for problem, completion in zip(problems, completions, strict=True)]
    return run_programs(programs, spec, limits, workers)


def run_programs(
    sources: Sequence[str], language: str | Language = "python", limits: Limits = Limits(), workers: int | None = None
) -> list[ExecutionResult]:
    """:func:`run_program` on many programs in ``workers`` threads (default: CPU count); results in order."""
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_program(source, language, limits), sources))


@cache
def isolation() -> dict[str, bool]:
    """Which namespaces this machine grants (probed once per process): ``{"net": ..., "mount": ...}``."""
    probe = subprocess.run([sys.executable, "-I", "-S", __file__, "--probe"], capture_output=True, text=True,
                           check=False)
    return json.loads(probe.stdout) if probe.returncode == 0 else {"net": False, "mount": False}


def _language(language: str | Language) -> Language:
    if isinstance(language, Language):
        return language
    if language not in LANGUAGES:
        raise ValueError(f"Unknown language {language!r}; choose one of {sorted(LANGUAGES)}.")
    return LANGUAGES[language]


def _masked_folders() -> list[str]:
    """The folders the private tmpfs covers: ``/tmp`` and the shared writable ones that are real folders."""
    return ["/tmp", *(folder for folder in SHARED_WRITABLE if os.path.isdir(folder) and not os.path.islink(folder))]


def _exposure(needs: Sequence[str], masked: Sequence[str], closed: bool) -> tuple[list[str], list[str]]:
    """``(hidden, binds)``: folders to cover with an empty tmpfs, and needed folders to bind back over it.

    A need is bound back when it lies under a ``masked`` folder or (``closed``: the program runs as
    another user) under a folder without search permission for others, the topmost of which is
    ``hidden``. Needs are taken as given and resolved (the program may reach them either way); one
    inside another bound need comes with it, a missing one is skipped (there is nothing to show).

    Raises:
        ValueError: A need is a masked folder itself: exposing it would expose the host's ``/tmp``.
    """
    def within(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    hidden: set[str] = set()
    binds: list[str] = []
    forms = {os.path.normpath(os.path.abspath(path)) for path in needs} | {os.path.realpath(path) for path in needs}
    for need in sorted(form for form in forms if os.path.isdir(form)):  # sorted: a folder before its contents
        if any(within(need, done) for done in binds):
            continue
        if need in masked:
            raise ValueError(f"A program needs {need}, which the sandbox replaces by its private tmpfs; "
                             f"move the interpreter or toolchain into a folder of its own.")
        if any(within(need, folder) for folder in masked):
            binds.append(need)
            continue
        closed_folder = next((str(folder) for folder in reversed(Path(need).parents)
                              if closed and not os.stat(folder).st_mode & stat.S_IXOTH), None)
        if closed_folder:
            hidden.add(closed_folder)
            binds.append(need)
    return sorted(hidden), binds


@contextmanager
def _sandbox_user() -> Iterator[tuple[int, int]]:
    """A uid/gid no other run (of any process) uses meanwhile, held by an flock; the caller's ids if not root."""
    if os.geteuid() != 0:
        yield os.getuid(), os.getgid()
        return
    locks = Path(tempfile.gettempdir(), "fedbiot-sandbox-uids")
    locks.mkdir(mode=0o700, exist_ok=True)
    for uid in sorted(set(range(UID_BASE, UID_BASE + UID_SLOTS)) - _known_uids()):
        handle = os.open(locks / str(uid), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            continue
        try:
            yield uid, uid
        finally:
            os.close(handle)
        return
    raise RuntimeError(f"All sandbox uids {UID_BASE}..{UID_BASE + UID_SLOTS - 1} are in use; run fewer at once.")


@cache
def _known_uids() -> frozenset[int]:
    return frozenset(entry.pw_uid for entry in pwd.getpwall())


def _launch_and_wait(config: dict, stderr: IO[bytes], timeout_s: float) -> int | None:
    """Start the launcher; return its exit code, or ``None`` after killing its process group at ``timeout_s``.

    The launcher enforces the program's own wall limit; this one is a backstop for the launcher.
    """
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", __file__, "--launch", json.dumps(config)], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=stderr, env={}, cwd="/", start_new_session=True, close_fds=True,
    )
    try:
        finished = _exited(process.pid, timeout_s)  # not reaped yet, so its group id cannot be reused
        _kill_group(process.pid)
        return process.wait() if finished else None
    finally:
        if process.poll() is None:
            _kill_group(process.pid)
            process.wait()


def _exited(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for a child to exit, without reaping it (a pidfd polls readable)."""
    handle = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(handle, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(handle)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _result(code: int, stderr: str, network: str) -> ExecutionResult:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1][:300] if lines else ""
    if code == 0:
        return ExecutionResult(True, "passed", "", network)
    if code == LAUNCH_FAILED and last.startswith("fedbiot-sandbox:"):
        return ExecutionResult(False, "error", last, network)
    if code == TIMED_OUT and last.startswith(TIMEOUT_MARK):
        return ExecutionResult(False, "timeout", last.removeprefix("fedbiot-sandbox: "), network)
    if code < 0:
        if last.startswith("fedbiot-sandbox:"):
            return ExecutionResult(False, "failed", last.removeprefix("fedbiot-sandbox: "), network)
        name = signal.Signals(-code).name if -code in set(signal.Signals) else f"signal {-code}"
        return ExecutionResult(False, "failed", f"killed by {name}" + (f"; {last}" if last else ""), network)
    return ExecutionResult(False, "failed", last or f"exit code {code}", network)


# ---------------------------------------------------------------- launcher side (runs as a script)


def _libc_call(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _unshare(libc: ctypes.CDLL, flags: int) -> None:
    uid, gid = os.getuid(), os.getgid()
    root = os.geteuid() == 0
    _libc_call(libc.unshare(flags | (0 if root else CLONE_NEWUSER)), f"unshare({flags:#x})")
    if not root:  # map our own ids into the user namespace, or files could not be created
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def encode(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _libc_call(libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
               f"mount {target}")


def _private_filesystem(libc: ctypes.CDLL, config: dict) -> str:
    """Private /tmp (and the shared writable folders) on one tmpfs; expose the needed folders; return the cwd.

    The needs are opened first: once a tmpfs covers them (or a folder above them) no path reaches them.
    """
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    handles = [os.open(need, os.O_PATH | os.O_DIRECTORY) for need in config["binds"]]
    masked = _masked_folders()
    _mount(libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={config['limits']['disk_bytes']},mode=1777")
    for folder in masked[1:]:
        _mount(libc, "/tmp", folder, None, MS_BIND)
    for folder in config["hidden"]:
        _mount(libc, "tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for need, handle in zip(config["binds"], handles, strict=True):
        os.makedirs(need, exist_ok=True)  # 0755 (umask 022), owned by the launcher, not by the program
        _mount(libc, f"/proc/self/fd/{handle}", need, None, MS_BIND | MS_REC)  # REC: a user namespace needs it
        # Read-only only adds protection; the remount sets every per-mount flag, so keep noexec and the atime
        # flags (in a user namespace changing an inherited, locked flag fails) and add nosuid and nodev.
        flags = os.statvfs(need).f_flag
        kept = sum(ms for st, ms in KEPT_MOUNT_FLAGS if flags & st)
        _mount(libc, None, need, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | kept)
        os.close(handle)
    os.mkdir("/tmp/sandbox", 0o700)
    return "/tmp/sandbox"


def _launch(config: dict) -> None:
    """Set up the isolation, fork and exec the program, wait, and exit with its status."""
    libc = ctypes.CDLL(None, use_errno=True)
    limits = config["limits"]
    try:
        os.umask(0o022)
        files = {name: Path(config["src"], name).read_bytes() for name in os.listdir(config["src"])}
        flags = (CLONE_NEWNET if config["net"] else 0) | (CLONE_NEWNS | CLONE_NEWPID if config["mount"] else 0)
        if flags:
            _unshare(libc, flags)
        work = _private_filesystem(libc, config) if config["mount"] else config["work"]
        for name, data in files.items():
            Path(work, name).write_bytes(data)
            if config["root"]:
                os.chown(Path(work, name), config["uid"], config["gid"])
        if config["root"]:
            os.chown(work, config["uid"], config["gid"])
    except Exception as error:  # noqa: BLE001 - any setup failure is the sandbox's, reported in one line
        os.write(2, f"fedbiot-sandbox: setup failed: {error}\n".encode())
        os._exit(LAUNCH_FAILED)
    pid = os.fork()  # with CLONE_NEWPID the child is the namespace's init: its end kills all it left
    if pid == 0:
        _exec_program(libc, config, work)
    finished = _exited(pid, limits["timeout_s"])
    # A PID namespace's init is waited for only after the kernel has reaped every process in it;
    # without one, kill the program's process group (not yet reaped, so the id cannot be reused).
    for kill, target in ((os.kill, pid), (os.killpg, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    status, usage = os.wait4(pid, 0)[1:]
    if not finished:
        os.write(2, f"{TIMEOUT_MARK} {limits['timeout_s']:g} s\n".encode())
        os._exit(TIMED_OUT)
    if not os.WIFSIGNALED(status):
        os._exit(os.waitstatus_to_exitcode(status))
    signal_number = os.WTERMSIG(status)
    # A PID namespace's init ignores SIGXCPU, so the CPU limit is a hard one (SIGKILL): say which it was.
    # The rusage times are sampled and may read a few ticks short of the kernel's exact count: 0.9.
    cpu_used = usage.ru_utime + usage.ru_stime
    if cpu_used >= 0.9 * _cpu_limit(limits) and signal_number in (signal.SIGKILL, signal.SIGXCPU):
        os.write(2, f"fedbiot-sandbox: CPU time limit of {_cpu_limit(limits)} s reached; killed\n".encode())
    if signal_number not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(signal_number, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), signal_number)  # die the same way, so the caller sees the signal
    os._exit(128 + signal_number)  # a signal whose default action is not to terminate


def _cpu_limit(limits: dict) -> int:
    return limits["cpu_s"] or int(limits["timeout_s"]) + 1


def _exec_program(libc: ctypes.CDLL, config: dict, work: str) -> None:
    """In the forked child: limits, own process group, unprivileged ids, then exec; never returns."""
    limits = config["limits"]
    try:
        os.setpgid(0, 0)
        # Root's program gets a fresh uid, a user namespace (kernel >= 5.14) a fresh count; otherwise
        # the caller's own processes count too.
        shared_count = not config["root"] and not (config["net"] or config["mount"])
        nproc = limits["max_processes"] + (_processes_of(os.getuid()) if shared_count else 0)
        for kind, value in ((resource.RLIMIT_AS, limits["memory_bytes"]), (resource.RLIMIT_CPU, _cpu_limit(limits)),
                            (resource.RLIMIT_FSIZE, limits["max_file_bytes"]),
                            (resource.RLIMIT_NOFILE, limits["max_open_files"]), (resource.RLIMIT_NPROC, nproc),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(kind, (value, value))
        os.chdir(work)  # before dropping root: the folders above it need not be open to the program's user
        if config["root"]:
            os.setgroups([])
            os.setresgid(config["gid"], config["gid"], config["gid"])
            os.setresuid(config["uid"], config["uid"], config["uid"])
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        os.execve(config["argv"][0], config["argv"], env)
    except BaseException as error:  # noqa: BLE001 - report any failure before exec, never run on
        os.write(2, f"fedbiot-sandbox: cannot start the program: {error}\n".encode())
    os._exit(LAUNCH_FAILED)


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        try:
            count += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
        except OSError:
            continue
    return count


def _probe() -> dict[str, bool]:
    """Try each isolation level in a throw-away child; the strongest that works wins."""
    libc = ctypes.CDLL(None, use_errno=True)
    config = {"limits": {"disk_bytes": 1 << 20}, "hidden": [], "binds": []}
    for net, mount in ((True, True), (True, False)):
        pid = os.fork()
        if pid == 0:
            try:
                _unshare(libc, (CLONE_NEWNET if net else 0) | (CLONE_NEWNS | CLONE_NEWPID if mount else 0))
                if mount:
                    _private_filesystem(libc, config)
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0:
            return {"net": net, "mount": mount}
    return {"net": False, "mount": False}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launch"]:
        _launch(json.loads(sys.argv[2]))
    elif sys.argv[1:2] == ["--probe"]:
        print(json.dumps(_probe()))
