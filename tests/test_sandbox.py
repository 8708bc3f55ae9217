"""The sandbox: correct/wrong programs, and attacks that must fail within their limits, host unharmed."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fedbiot_pl.evaluation import sandbox
from fedbiot_pl.evaluation.sandbox import ExecutionResult, Limits, check_completions, run_program, run_programs
from tests.helpers import PROBLEM, SYSTEM_PYTHON, needs_root, sandbox_processes

pytestmark = pytest.mark.usefixtures("private_host")  # tests/conftest.py

FIVE_SECONDS = Limits(timeout_s=5)


def timed(source: str, limits: Limits = FIVE_SECONDS, **kwargs) -> tuple[ExecutionResult, float]:
    start = time.perf_counter()
    result = run_program(source, limits=limits, **kwargs)
    return result, time.perf_counter() - start


def test_correct_program_passes_and_wrong_one_fails() -> None:
    good, bad = check_completions([PROBLEM, PROBLEM], ["    return a + b\n", "    return a - b\n"], workers=2)
    assert (good.passed, good.status, good.reason) == (True, "passed", "")
    assert (bad.passed, bad.status, bad.reason) == (False, "failed", "AssertionError")


def test_syntax_error_and_exit_code_fail_with_the_reason() -> None:
    syntax, _ = timed("def f(:\n    pass\n")
    assert syntax.status == "failed" and syntax.reason.startswith("SyntaxError")
    exit_code, _ = timed("raise SystemExit(3)")
    assert (exit_code.status, exit_code.reason) == ("failed", "exit code 3")


def test_pool_keeps_order() -> None:
    sources = [f"assert {i} % 2 == 0" for i in range(5)]
    assert [r.passed for r in run_programs(sources, workers=2)] == [True, False, True, False, True]


def test_minimal_environment_and_closed_stdin() -> None:
    source = (
        "import os, sys\n"
        "assert sys.stdin.read() == ''\n"
        "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS',"
        " 'MKL_NUM_THREADS', 'LC_CTYPE'}, sorted(os.environ)\n"
    )
    result, _ = timed(source)
    assert result.passed, result.reason


@needs_root
def test_runs_as_unprivileged_user() -> None:
    result, _ = timed(f"import os\nassert os.getuid() >= {sandbox.UID_BASE} and os.getgroups() == [], os.getuid()")
    assert result.passed, result.reason


@needs_root
def test_cannot_delete_files_outside(tmp_path: Path) -> None:
    guarded = tmp_path / "guarded"
    guarded.mkdir(mode=0o755)
    sentinel = guarded / "sentinel.txt"
    sentinel.write_text("keep me")
    source = f"import os, shutil\nos.remove({str(sentinel)!r})\nshutil.rmtree({str(guarded)!r})\n"
    result, _ = timed(source)
    assert result.status == "failed" and ("PermissionError" in result.reason or "FileNotFound" in result.reason)
    assert sentinel.read_text() == "keep me"


def test_infinite_loop_is_killed_at_the_wall_limit() -> None:
    result, elapsed = timed("while True:\n    pass\n", Limits(timeout_s=1))
    assert (result.passed, result.status) == (False, "timeout")
    assert 1.0 <= elapsed < 4.0


def test_cpu_limit_stops_a_busy_program() -> None:
    result, elapsed = timed("while True:\n    pass\n", Limits(timeout_s=30, cpu_s=1))
    assert (result.status, result.reason) == ("failed", "CPU time limit of 1 s reached; killed")
    assert elapsed < 10.0


@needs_root
def test_fork_bomb_hits_the_process_limit_and_leaves_nothing() -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result, elapsed = timed(bomb, Limits(timeout_s=2, max_processes=16))
    assert result.status == "timeout"
    assert elapsed < 6.0
    assert sandbox_processes(sandbox.UID_BASE) == []  # checked right away, not only at teardown


@needs_root
def test_process_limit_is_exact() -> None:
    """Children that only sleep: the 16-process limit (program included) refuses the 16th child."""
    source = (
        "import os, time\ncount = 0\ntry:\n    for _ in range(100):\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        count += 1\nexcept OSError as error:\n"
        "    raise SystemExit(f'fork refused after {count} children: {error.strerror}')\n"
    )
    result, elapsed = timed(source, Limits(timeout_s=5, max_processes=16))
    expected = "fork refused after 15 children: Resource temporarily unavailable"
    assert (result.status, result.reason) == ("failed", expected)
    assert elapsed < 5.0


@needs_root
def test_background_process_does_not_outlive_the_run() -> None:
    daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    result, _ = timed(daemon)
    assert result.passed
    assert sandbox_processes(sandbox.UID_BASE) == []


def test_huge_allocation_fails_with_memory_error() -> None:
    at_once, _ = timed("x = bytearray(64 * 2**30)")
    assert (at_once.status, at_once.reason) == ("failed", "MemoryError")
    growing, _ = timed("x = []\nwhile True:\n    x.append(bytearray(2**24))\n",
                       Limits(timeout_s=10, memory_bytes=2**29))
    assert (growing.status, growing.reason) == ("failed", "MemoryError")


def test_huge_file_hits_the_file_size_limit() -> None:
    source = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 2**24)\n"
    result, _ = timed(source, Limits(timeout_s=5, max_file_bytes=2**20))
    assert result.status == "failed" and "File too large" in result.reason


def test_many_files_fill_only_the_private_disk() -> None:
    if not sandbox.isolation()["mount"]:
        pytest.skip("no mount namespace: no private tmpfs")
    source = "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 2**19)\n    i += 1\n"
    result, _ = timed(source, Limits(timeout_s=5, disk_bytes=2**22))
    assert result.status == "failed" and "No space left" in result.reason


def test_no_connection_to_a_listening_host_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        result, _ = timed(source)
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.status == "failed"
    assert result.network == ("namespace" if sandbox.isolation()["net"] else "socket-disabled")


@needs_root
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="needs a python3 in /usr/bin or /bin readable by all users")
def test_without_namespaces_sockets_are_disabled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sandbox, "isolation", lambda: {"net": False, "mount": False})
    language = sandbox.python_language(SYSTEM_PYTHON)
    result, _ = timed("import socket", language=language)
    assert (result.status, result.network) == ("failed", "socket-disabled")
    assert "socket" in result.reason
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    deleted, _ = timed(f"import os\nos.remove({str(sentinel)!r})", language=language)
    assert deleted.status == "failed" and sentinel.exists()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="timeout_s=0"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="'cobol'"):
        run_program("x", language="cobol")
    with pytest.raises(ValueError, match="entry_point"):
        check_completions([{"prompt": "", "test": ""}], ["pass"])
    with pytest.raises(ValueError, match="2 problems but 1 completions"):
        check_completions([PROBLEM, PROBLEM], ["pass"])
