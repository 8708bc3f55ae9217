"""The sandbox runs Python wherever it lives, and keeps the interpreter read-only and /tmp private.

Interpreters under the folders the sandbox covers with its own tmpfs (``/tmp``: pytest's
``tmp_path``, whose parents are closed 0700 folders; ``/var/tmp``; ``/dev/shm``), under closed
folders (``/root``, a 0700 ``mkdtemp``) and plain ones (``/home``, ``/opt``): a virtual environment,
a conda-style prefix whose ``bin/python3`` is a symlink, and a copied interpreter whose standard
library is in its prefix's ``lib/``. Each scores one correct and one raising HumanEval completion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from fedbiot_pl.evaluation import sandbox
from fedbiot_pl.evaluation.sandbox import Limits
from tests.helpers import PROBLEM, SYSTEM_PYTHON, needs_root

pytestmark = pytest.mark.usefixtures("private_host")  # tests/conftest.py

GOOD, RAISING = "    return a + b\n", "    raise KeyError(f'no sum of {a} and {b}')\n"
EXPECTED = [(True, "passed", ""), (False, "failed", "KeyError: 'no sum of 2 and 3'")]
"""(passed, status, reason) of GOOD and RAISING; PROBLEM's test calls add(2, 3) first."""


@pytest.fixture(autouse=True)
def mount_namespace() -> None:
    """Without a mount namespace a root caller's closed folders cannot be shown to the program's user."""
    if not sandbox.isolation()["mount"]:
        pytest.skip("no mount namespace on this machine")


def make_venv(folder: Path) -> Path:
    """A venv in ``folder/venv`` whose site-packages holds ``venv_marker.py``; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True,
                   capture_output=True)
    site = next((folder / "venv" / "lib").glob("python3*/site-packages"))
    (site / "venv_marker.py").write_text("WHERE = 'venv'\n")
    return folder / "venv" / "bin" / "python"


def score(python: Path, check: str) -> list[tuple[bool, str, str]]:
    """(passed, status, reason) of GOOD, RAISING and the program ``check``, run with ``python``."""
    language = sandbox.python_language(str(python))
    sources = [language.build(PROBLEM, GOOD), language.build(PROBLEM, RAISING), check]
    return [(r.passed, r.status, r.reason) for r in sandbox.run_programs(sources, language, Limits(5), 2)]


def venv_check(venv: Path) -> str:
    """A program that passes only if the venv's own prefix and site-packages are visible."""
    return f"import sys, venv_marker\nassert sys.prefix == {str(venv)!r}, sys.prefix\n"


@pytest.fixture(params=["tmp_path", "/var/tmp", "/dev/shm", "/home", "/root", "/opt"])
def base_folder(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh 0700 folder in the base folder (pytest's ``tmp_path`` as it is); removed afterwards."""
    if request.param == "tmp_path":
        yield tmp_path
        return
    if not (os.path.isdir(request.param) and os.access(request.param, os.W_OK)):
        pytest.skip(f"{request.param} is missing or not writable")
    folder = Path(tempfile.mkdtemp(prefix="fedbiot-sandbox-test-", dir=request.param))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_venv_anywhere_scores_and_keeps_its_own_prefix(base_folder: Path) -> None:
    python = make_venv(base_folder)
    assert score(python, venv_check(python.parents[1])) == [*EXPECTED, (True, "passed", "")]


def test_conda_style_prefix_with_a_symlinked_interpreter(tmp_path: Path) -> None:
    """bin/python3 -> the real binary, no pyvenv.cfg: Python takes the binary's own prefix."""
    python = tmp_path / "conda" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.symlink_to(os.path.realpath(sys.executable))
    check = f"import sys\nassert sys.prefix == {sys.base_prefix!r}, sys.prefix\n"
    assert score(python, check) == [*EXPECTED, (True, "passed", "")]


@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="needs a python3 in /usr/bin or /bin to copy")
def test_copied_interpreter_gets_its_prefix_not_only_bin(tmp_path: Path) -> None:
    """A prefix of its own (like /root/miniconda3): the standard library is in lib/, beside bin/."""
    code = "import sys, sysconfig; print(sysconfig.get_paths()['stdlib'], 'python%d.%d' % sys.version_info[:2])"
    asked = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", code], capture_output=True, text=True,
                           check=True).stdout.split()
    prefix = tmp_path / "miniconda3"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "lib" / asked[1]).symlink_to(asked[0])
    python = Path(shutil.copy2(os.path.realpath(SYSTEM_PYTHON), prefix / "bin" / asked[1]))
    found = subprocess.run([python, "-I", "-S", "-c", "import sys; print(sys.prefix)"], capture_output=True,
                           text=True, check=False).stdout.strip()
    if found != str(prefix):
        pytest.skip(f"{SYSTEM_PYTHON} does not find its library from a copy (prefix {found!r})")
    assert sandbox.python_language(str(python)).needs == (str(prefix), str(prefix / "bin"))
    check = f"import sys, json\nassert sys.prefix == {str(prefix)!r}, sys.prefix\n"
    assert score(python, check) == [*EXPECTED, (True, "passed", "")]


def test_interpreter_folder_is_read_only_and_tmp_stays_private(tmp_path: Path) -> None:
    """Even a folder the program's user may write to (0777) is read-only; /tmp is a fresh tmpfs."""
    python = make_venv(tmp_path)
    venv = python.parents[1]
    site = next(venv.glob("lib/python3*/site-packages"))
    for folder in (venv, site):
        folder.chmod(0o777)
    (tmp_path / "host-secret.txt").write_text("not for the program")
    name = f"written-in-sandbox-{uuid.uuid4().hex}"
    probe = (
        "import json, os, sys\n"
        "def attempt(path):\n    try:\n        open(path, 'w').close()\n        return 'written'\n"
        "    except OSError as error:\n        return error.strerror\n"
        "disk = os.statvfs('/tmp')\n"
        f"report = dict(tmp=sorted(os.listdir('/tmp')), beside=sorted(os.listdir({str(tmp_path)!r})),\n"
        f"              size=disk.f_blocks * disk.f_frsize, venv=attempt({str(venv / 'evil.py')!r}),\n"
        f"              site=attempt({str(site / 'evil.py')!r}))\n"
        f"report['tmpw'] = attempt('/tmp/{name}')\n"
        "sys.exit(json.dumps(report))\n"
    )
    result = sandbox.run_program(probe, sandbox.python_language(str(python)), Limits(timeout_s=5, disk_bytes=2**23))
    leaked = Path("/tmp", name)
    if leaked.exists():
        leaked.unlink()
    assert result.status == "failed", result
    shown_in_tmp = [tmp_path.relative_to("/tmp").parts[0]] if tmp_path.is_relative_to("/tmp") else []
    assert json.loads(result.reason) == {
        "tmp": sorted(["sandbox", *shown_in_tmp]), "beside": ["venv"], "size": 2**23,
        "venv": "Read-only file system", "site": "Read-only file system", "tmpw": "written",
    }
    assert not leaked.exists() and not (venv / "evil.py").exists() and not (site / "evil.py").exists()


@needs_root
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="needs a python3 in /usr/bin or /bin that any user can run")
def test_caller_without_root_uses_a_venv_under_tmp() -> None:
    """The user-namespace path: uid 65534 runs the sandbox with a venv in its own 0700 /tmp folder."""
    folder = Path(tempfile.mkdtemp(prefix="fedbiot-sandbox-test-", dir="/tmp"))
    try:
        os.chown(folder, 65534, 65534)
        script = folder / "run.py"
        script.write_text(
            "import importlib.util, json, subprocess, sys\n"
            f"spec = importlib.util.spec_from_file_location('sandbox', {sandbox.__file__!r})\n"
            "sb = sys.modules['sandbox'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(sb)\n"
            f"subprocess.run([sys.executable, '-m', 'venv', '--without-pip', {str(folder / 'venv')!r}], check=True)\n"
            f"language = sb.python_language({str(folder / 'venv' / 'bin' / 'python')!r})\n"
            f"sources = [language.build(p, c) for p, c in zip([{PROBLEM!r}] * 2, [{GOOD!r}, {RAISING!r}])]\n"
            f"sources.append({'import sys; assert sys.prefix == ' + repr(str(folder / 'venv')) + ', sys.prefix'!r})\n"
            "results = sb.run_programs(sources, language, sb.Limits(5), 2)\n"
            "print(json.dumps([sb.isolation(), [[r.passed, r.status, r.reason, r.network] for r in results]]))\n"
        )
        run = subprocess.run([SYSTEM_PYTHON, str(script)], user=65534, group=65534, extra_groups=[], cwd=folder,
                             env={"PATH": "/usr/bin:/bin", "TMPDIR": str(folder)}, capture_output=True, text=True,
                             timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        modes, results = json.loads(run.stdout)
        if not modes["mount"]:
            pytest.skip("no user namespace with a mount namespace for uid 65534")
        assert [tuple(r[:3]) for r in results] == [*EXPECTED, (True, "passed", "")]
        assert {r[3] for r in results} == {"namespace" if modes["net"] else "socket-disabled"}
        assert sorted(p.name for p in folder.iterdir()) == ["run.py", "venv"], "run folder left behind"
    finally:
        shutil.rmtree(folder)


def test_bad_interpreters_and_needs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path}/missing/python .*working Python 3 executable"):
        sandbox.python_language(str(tmp_path / "missing" / "python"))
    with pytest.raises(ValueError, match="needs /tmp, which the sandbox replaces"):
        sandbox._exposure(["/tmp"], ["/tmp", "/var/tmp"], closed=False)
