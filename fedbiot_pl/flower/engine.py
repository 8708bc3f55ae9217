"""A Flower deployment engine on one machine: a SuperLink and SuperNodes as local processes (flwr 1.41).

Used by the one-machine runner and the loopback tests. Everything goes through Flower's own commands
(``flower-superlink``, ``flower-supernode``, ``flwr``), so this module imports neither ``flwr`` nor ``torch``.

What runs (verified with flwr 1.41.0):

- ``flower-superlink --host H --port P`` serves the Fleet, Control and Runtime APIs over one HTTP(S) port. It spawns a
  ``flower-superexec`` **in a session of its own** (``start_new_session``), which spawns one ``flwr-serverapp`` per
  run with the SuperLink's environment and working directory. The ServerApp's stdout reaches ``flwr log``.
- ``flower-supernode --superlink H:P --port Q`` dials out; its ``flower-superexec`` (same process group) spawns a fresh
  ``flwr-clientapp`` process per message. Neither SuperExec ever reaps its children, so they stay zombies until the
  SuperExec exits; this engine makes itself the *child subreaper* (Linux) while it runs, so that everything below it
  is re-parented to it and can be reaped by :meth:`LocalEngine.stop` and :meth:`LocalEngine.kill_node`.
- The SuperLink is up when its log says ``Uvicorn running on`` (logged after the bind; a TCP connect alone can reach
  another process that took the port) and it accepts a connection. A node is connected when its log says
  ``SuperNode ID: <id>``; :meth:`LocalEngine.start` then confirms with ``flwr supernode ls`` that each is ``online``.
- Each ``flwr`` command costs about 2 s on 2 cores (the CLI's import time).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbiot_pl.flower.commands import ConfigValue, config_arg, flower_env
from fedbiot_pl.flower.credentials import Certificates, make_certificates, make_node_key
from fedbiot_pl.flower.processes import (
    _ANSI,
    EngineError,
    _check_call,
    _descendants,
    _kill,
    _kill_all_at_exit,
    _killpg,
    _proc_table,
    _reap,
    _Subreaper,
    _tail_section,
    _tail_text,
    _terminate,
    _tool,
    free_port,
)

CONNECTION = "local-engine"
"""Name of the SuperLink connection that :class:`LocalEngine` writes into its ``$FLWR_HOME/config.toml``."""

_NODE_ID = re.compile(r"SuperNode ID: (\d+)")

__all__ = ["CONNECTION", "Certificates", "ConfigValue", "EngineError", "LocalEngine", "NodeSpec", "config_arg",
           "flower_env", "free_port", "make_certificates", "make_node_key"]


@dataclass
class NodeSpec:
    """One SuperNode of a :class:`LocalEngine`.

    Attributes:
        node_config: The node's ``--node-config`` (a ClientApp reads it as ``context.node_config``).
        private_key: Its authentication key (with ``auth``); None makes a new one in ``<workdir>/keys``.
        env: Extra environment variables for this node's processes (e.g. ``CUDA_VISIBLE_DEVICES``).
        register: With ``auth``, whether the engine registers the node's public key. An unregistered node is started
            anyway but not waited for: the SuperLink refuses it and the node exits (its log says ``Exit Code: 305``
            and ``[code: 2004] Failed to activate SuperNode``). Ignored without ``auth``.
    """

    node_config: dict[str, ConfigValue]
    private_key: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    register: bool = True


class LocalEngine:
    """A Flower deployment engine on this machine: one SuperLink and one SuperNode per :class:`NodeSpec`.

    ``workdir`` gets ``flwr_home/`` (the SuperLink's and the CLI's ``FLWR_HOME``, with the connection
    :attr:`connection` in ``config.toml``), ``nodes/node-<i>/`` (node ``i``'s ``FLWR_HOME``: every site installs
    apps into its own), ``logs/superlink.log`` and ``logs/node-<i>.log``, ``certs/`` and ``keys/``. Keep ``workdir``
    outside the Flower app folder. All processes run in the caller's working directory, so that is the ServerApp's
    and the ClientApps' working directory too.

    Every process is started in a session of its own, so signals to the caller (Ctrl-C) do not reach it;
    :meth:`stop` (also called by ``__exit__``, and at interpreter exit) ends them all. Use::

        with LocalEngine(tmp, [NodeSpec({"client-id": 0}), NodeSpec({"client-id": 1})]) as engine:
            engine.start()
            run_id = engine.submit(app_dir, {"num-rounds": 2})
            assert engine.wait(run_id, timeout=600) == "finished:completed", engine.logs(run_id)

    Args:
        workdir: The engine's folder (created if missing).
        nodes: The SuperNodes.
        tls: Serve HTTPS with a fresh self-signed CA (``certs/``); otherwise ``--insecure``.
        auth: Node authentication (``--enable-supernode-auth``): keys are registered with ``flwr supernode register``
            before the nodes start. Needs ``tls``.
        host: The address the SuperLink listens on (and that its certificate names).
        env: Extra environment variables for every process (the nodes' own ``env`` is applied after these).
        database: The SuperLink's ``--database`` file (runs and logs outlive a restart); None keeps state in memory.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: Sequence[NodeSpec],
        *,
        tls: bool = False,
        auth: bool = False,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        database: Path | None = None,
    ) -> None:
        if auth and not tls:
            raise ValueError("auth=True needs tls=True: flower-superlink refuses --enable-supernode-auth without TLS")
        self.workdir = Path(workdir).resolve()
        self.nodes = list(nodes)
        self.tls, self.auth, self.host = tls, auth, host
        self.env = dict(env or {})
        self.database = Path(database).resolve() if database is not None else None
        self.connection = CONNECTION
        self.flwr_home = self.workdir / "flwr_home"
        self.log_dir = self.workdir / "logs"
        self.superlink_log = self.log_dir / "superlink.log"
        self.node_logs = [self.log_dir / f"node-{i}.log" for i in range(len(self.nodes))]
        self.port: int | None = None
        self.certificates: Certificates | None = None
        self.node_ids: dict[int, int] = {}
        """Node index -> Flower node id, as each node logged it when it connected (a restart gives a new id)."""
        self._keys: dict[int, Path] = {}
        self._superlink: subprocess.Popen[bytes] | None = None
        self._nodes: dict[int, subprocess.Popen[bytes]] = {}
        self._log_offset: dict[int, int] = {}
        self._all: list[subprocess.Popen[bytes]] = []  # every process started; shared with the exit hook
        self._subreaper = False
        self._finalizer = weakref.finalize(self, _kill_all_at_exit, self._all)

    # --- context manager -----------------------------------------------------------------------------------------

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- properties ------------------------------------------------------------------------------------------------

    @property
    def _dial_host(self) -> str:
        """The host clients dial: ``host``, or ``127.0.0.1`` when the SuperLink listens on all addresses."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink as clients dial it (``127.0.0.1`` when it listens on all addresses)."""
        if self.port is None:
            raise EngineError("the engine is not started")
        host = self._dial_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running SuperLink (``"superlink"``) and SuperNodes (``"node-<i>"``)."""
        out = {}
        if self._superlink is not None and self._superlink.poll() is None:
            out["superlink"] = self._superlink.pid
        for index, proc in sorted(self._nodes.items()):
            if proc.poll() is None:
                out[f"node-{index}"] = proc.pid
        return out

    def descendants(self) -> dict[int, str]:
        """Every process below the engine's own (SuperExecs, ``flwr-serverapp``/``flwr-clientapp``, zombies too).

        Returns:
            pid -> command name (as in /proc; empty where there is no /proc).
        """
        return {pid: name for pid, (_, name) in _descendants(list(self.pids.values())).items()}

    def poll_node(self, index: int) -> int | None:
        """Node ``index``'s exit code, or None while it runs (or if it was never started)."""
        proc = self._nodes.get(index)
        return None if proc is None else proc.poll()

    def node_log(self, index: int) -> str:
        """The text of ``logs/node-<index>.log`` (all incarnations of the node), colour codes removed."""
        path = self.node_logs[index]
        return _ANSI.sub("", path.read_text(errors="replace")) if path.exists() else ""

    # --- start -----------------------------------------------------------------------------------------------------

    def _exe(self, name: str) -> str:
        return _tool(name, "it comes with flwr: pip install 'fedbiot-pl[flower]'.")

    def _popen(self, command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as handle:  # the process keeps its own copy of the descriptor
            handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
            handle.flush()
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        self._all.append(proc)
        return proc

    def start(self, timeout: float = 120) -> None:
        """Start the SuperLink, register node keys (``auth``), start the nodes and wait until they are connected.

        Args:
            timeout: Seconds for each stage (SuperLink listening; all nodes online).

        Raises:
            EngineError: A process exited or a command failed (the message shows the relevant log's tail).
            TimeoutError: A stage took longer than ``timeout``.
        """
        if self._superlink is not None:
            raise EngineError("the engine is already started")
        for folder in (self.flwr_home, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        _Subreaper.acquire()
        self._subreaper = True
        try:
            self._start_superlink(timeout)
            self._write_connection()
            if self.auth:
                self._register_nodes()
            for index in range(len(self.nodes)):
                self.start_node(index, wait=False)
            self._wait_nodes([i for i in range(len(self.nodes)) if self._expected(i)], timeout)
        except BaseException:
            self.stop()
            raise

    def _expected(self, index: int) -> bool:
        return not self.auth or self.nodes[index].register

    def _start_superlink(self, timeout: float) -> None:
        if self.tls:
            self.certificates = make_certificates(self.workdir / "certs", self.host)
        deadline = time.monotonic() + timeout
        for attempt in range(3):  # another process may take the free port before the SuperLink binds it
            self.port = free_port(self._dial_host)
            command = [self._exe("flower-superlink"), "--host", self.host, "--port", str(self.port),
                       "--disable-runtime-dependency-installation"]
            if self.certificates is not None:
                command += ["--ssl-ca-certfile", str(self.certificates.ca_cert),
                            "--ssl-certfile", str(self.certificates.server_cert),
                            "--ssl-keyfile", str(self.certificates.server_key)]
            else:
                command.append("--insecure")
            if self.auth:
                command.append("--enable-supernode-auth")
            if self.database is not None:
                self.database.parent.mkdir(parents=True, exist_ok=True)
                command += ["--database", str(self.database)]
            offset = self.superlink_log.stat().st_size if self.superlink_log.exists() else 0
            self._superlink = self._popen(command, self.superlink_log, flower_env(self.flwr_home, self.env))
            while True:
                with self.superlink_log.open("rb") as handle:
                    handle.seek(offset)
                    text = handle.read().lower()
                code = self._superlink.poll()
                if code is not None:
                    if b"already in use" in text and attempt < 2:
                        break
                    raise EngineError(f"flower-superlink exited with code {code}: `{shlex.join(command)}`"
                                      + _tail_section(self.superlink_log))
                if b"uvicorn running on" in text:  # uvicorn logs this once it has bound the port
                    with contextlib.suppress(OSError), socket.create_connection((self._dial_host, self.port), 1):
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"flower-superlink did not listen on {self.address} within {timeout:g} s"
                                       + _tail_section(self.superlink_log))
                time.sleep(0.1)

    def _write_connection(self) -> None:
        lines = ["[superlink]", f'default = "{self.connection}"', "", f"[superlink.{self.connection}]",
                 f'address = "{self.address}"']
        if self.certificates is not None:
            lines.append(f"root-certificates = {json.dumps(str(self.certificates.ca_cert))}")
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _register_nodes(self) -> None:
        for index, spec in enumerate(self.nodes):
            if spec.private_key is not None:
                private = Path(spec.private_key).resolve()
                public = private.with_name(private.name + ".pub")
            else:
                private, public = make_node_key(self.workdir / "keys", f"node-{index}")
            self._keys[index] = private
            if spec.register:
                if not public.exists():
                    raise EngineError(f"node {index}: public key {public} not found next to {private}")
                self._cli_json(["supernode", "register", str(public), self.connection],
                               what=f"registering node {index}")

    def start_node(self, index: int, *, wait: bool = True, timeout: float = 120) -> None:
        """Start SuperNode ``index`` (again, after :meth:`kill_node`), on a fresh ``--port``.

        Args:
            index: The node's position in ``nodes``.
            wait: Wait until it is connected (not for an unregistered node under ``auth``).
            timeout: Seconds to wait.

        Raises:
            EngineError: The node is running already or exited; the engine is not started.
        """
        if self._superlink is None:
            raise EngineError("the engine is not started")
        if self.poll_node(index) is None and index in self._nodes:
            raise EngineError(f"node {index} is running already (pid {self._nodes[index].pid})")
        spec = self.nodes[index]
        home = self.workdir / "nodes" / f"node-{index}"
        home.mkdir(parents=True, exist_ok=True)
        command = [self._exe("flower-supernode"), "--superlink", self.address, "--port", str(free_port())]
        if self.certificates is not None:
            command += ["--root-certificates", str(self.certificates.ca_cert)]
        else:
            command.append("--insecure")
        if spec.node_config:
            command += ["--node-config", config_arg(spec.node_config, home / "node-config.toml")]
        if self.auth:  # start() made or found every node's key before the first node
            command += ["--auth-supernode-private-key", str(self._keys[index])]
        log = self.node_logs[index]
        self._log_offset[index] = log.stat().st_size if log.exists() else 0
        self.node_ids.pop(index, None)
        self._nodes[index] = self._popen(command, log, flower_env(home, {**self.env, **spec.env}))
        if wait and self._expected(index):
            self._wait_nodes([index], timeout)

    def _logged_node_id(self, index: int) -> int | None:
        path = self.node_logs[index]
        with path.open("rb") as handle:
            handle.seek(self._log_offset.get(index, 0))
            match = _NODE_ID.search(_ANSI.sub("", handle.read().decode(errors="replace")))
        return int(match.group(1)) if match else None

    def _wait_nodes(self, indices: Sequence[int], timeout: float) -> None:
        if not indices:
            return
        deadline = time.monotonic() + timeout
        pending = list(indices)
        while pending:
            for index in list(pending):
                code = self.poll_node(index)
                if code is not None:
                    raise EngineError(f"flower-supernode {index} exited with code {code} before connecting"
                                      + _tail_section(self.node_logs[index]))
                node_id = self._logged_node_id(index)
                if node_id is not None:
                    self.node_ids[index] = node_id
                    pending.remove(index)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"nodes {pending} did not connect within {timeout:g} s"
                                   + "".join(_tail_section(self.node_logs[i]) for i in pending)
                                   + _tail_section(self.superlink_log))
            time.sleep(0.2)
        want = {self.node_ids[i] for i in indices}
        while True:  # the SuperLink's view: every node online
            online = set(self.online_nodes())
            if want <= online:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {sorted(want - online)} are not online after {timeout:g} s"
                                   + _tail_section(self.superlink_log))
            time.sleep(1.0)

    def online_nodes(self) -> list[int]:
        """Ids of the nodes the SuperLink lists as ``online`` (``flwr supernode ls --format json``)."""
        out = self._cli_json(["supernode", "ls", self.connection], what="listing nodes")
        return [int(node["node-id"]) for node in out.get("nodes", []) if node.get("status") == "online"]

    # --- runs ------------------------------------------------------------------------------------------------------

    def _cli(self, args: list[str], *, what: str, timeout: float = 180) -> str:
        if self._superlink is None:
            raise EngineError("the engine is not started")
        env = flower_env(self.flwr_home, {**self.env, "NO_COLOR": "1"})
        env.pop("FORCE_COLOR", None)
        return _check_call([self._exe("flwr"), *args], what=what, log=self.superlink_log, timeout=timeout, env=env)

    def _cli_json(self, args: list[str], *, what: str, timeout: float = 180) -> dict[str, Any]:
        command = [*args, "--format", "json"]
        text = self._cli(command, what=what, timeout=timeout)
        start = text.find("{")
        try:
            out, _ = json.JSONDecoder().raw_decode(_ANSI.sub("", text[start:])) if start >= 0 else (None, 0)
        except json.JSONDecodeError:
            out = None
        if not isinstance(out, dict) or not out.get("success", False):
            # flwr prints {"success": false, "error-message": ...} and may still exit 0
            message = out.get("error-message", "") if isinstance(out, dict) else f"unreadable output:\n{text}"
            raise EngineError(f"{what}: `flwr {shlex.join(command)}` failed: {_tail_text(str(message))}"
                              + _tail_section(self.superlink_log))
        return out

    def submit(self, app_dir: Path, run_config: Mapping[str, ConfigValue] | None = None) -> int:
        """Submit a run of the Flower app in ``app_dir``: ``flwr run <app_dir> <conn> --run-config ...``.

        Args:
            app_dir: The app folder (its ``pyproject.toml`` has ``[tool.flwr.app]``); it must not contain the
                engine's ``workdir``.
            run_config: Overrides of the app's ``[tool.flwr.app.config]`` keys (only existing keys); the ServerApp
                reads the merged values as ``context.run_config``.

        Returns:
            The run id.

        Raises:
            EngineError: ``flwr run`` failed (e.g. the app does not validate).
        """
        args = ["run", str(Path(app_dir).resolve()), self.connection]
        if run_config:
            self.workdir.mkdir(parents=True, exist_ok=True)
            toml = self.workdir / f"run-config-{time.time_ns()}.toml"
            args += ["--run-config", config_arg(run_config, toml)]
        out = self._cli_json(args, what=f"submitting {app_dir}")
        return int(out["run-id"])

    def status(self, run_id: int) -> str:
        """The run's status from ``flwr list --run-id <id> --format json``.

        Args:
            run_id: The run.

        Returns:
            ``pending``, ``starting``, ``running`` or ``finished:<completed|failed|stopped>``.
        """
        out = self._cli_json(["list", self.connection, "--run-id", str(run_id)], what=f"status of run {run_id}")
        runs = [run for run in out.get("runs", []) if int(run.get("run-id", -1)) == run_id]
        if not runs:
            raise EngineError(f"run {run_id} is not known to the SuperLink at {self.address}")
        return str(runs[0]["status"])

    def wait(self, run_id: int, timeout: float, poll: float = 2.0) -> str:
        """Wait until the run's status starts with ``finished:``.

        Args:
            run_id: The run.
            timeout: Seconds to wait.
            poll: Seconds between status queries (each ``flwr list`` itself takes about 2 s).

        Returns:
            The final status, e.g. ``finished:completed`` or ``finished:failed`` (then see :meth:`logs`).

        Raises:
            TimeoutError: Not finished in time (the message names the run and its last status).
            EngineError: The SuperLink died.
        """
        deadline = time.monotonic() + timeout
        status = "unknown"
        while True:
            if self._superlink is None or self._superlink.poll() is not None:
                raise EngineError(f"the SuperLink is not running (run {run_id}, last status {status!r})"
                                  + _tail_section(self.superlink_log))
            status = self.status(run_id)
            if status.startswith("finished:"):
                return status
            if time.monotonic() + poll > deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout:g} s; last status {status!r}")
            time.sleep(poll)

    def logs(self, run_id: int) -> str:
        """The run's log as stored by the SuperLink (``flwr log <id> --show``): ServerApp stdout and Flower logs.

        Args:
            run_id: The run.

        Returns:
            The text, colour codes removed.
        """
        return _ANSI.sub("", self._cli(["log", str(run_id), self.connection, "--show"], what=f"log of run {run_id}"))

    def stop_run(self, run_id: int) -> None:
        """Stop a run (``flwr stop <id>``); its status becomes ``finished:stopped``.

        Args:
            run_id: The run.
        """
        self._cli_json(["stop", str(run_id), self.connection], what=f"stopping run {run_id}")

    # --- stopping --------------------------------------------------------------------------------------------------

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index``'s process group and everything below it (its SuperExec, ClientApps); reap them.

        Args:
            index: The node's position in ``nodes``. A node that is not running is left alone.
        """
        self._kill_node(index)
        self._kill_strays()

    def _kill_node(self, index: int) -> None:
        proc = self._nodes.get(index)
        if proc is None or proc.poll() is not None:
            return
        below = _descendants([proc.pid])
        _killpg(proc.pid, signal.SIGKILL)
        _kill(list(below))
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        _reap(list(below), timeout=10)

    def _kill_strays(self) -> None:
        """Kill and reap what is left in the engine's process groups.

        E.g. the SuperExec of a node that exited by itself: it is re-parented to this process (the subreaper) and
        no longer below any running engine process.
        """
        groups = {proc.pid for proc in self._all if proc.poll() is not None}  # groups whose leader has ended
        strays = [pid for pid, (_, pgid, _) in _proc_table().items() if pgid in groups and pid != os.getpid()]
        _kill(strays)
        _reap(strays, timeout=5)

    def stop(self, grace: float = 5.0) -> None:
        """End every process the engine started, and all processes below them; reap them; idempotent.

        The nodes' process groups get SIGKILL (as in :meth:`kill_node`). Then the SuperLink's group gets SIGTERM (it
        stops its SuperExec and closes its database) and SIGKILL after ``grace`` seconds; what runs below it in other
        groups (its SuperExec has a session of its own; ``flwr-serverapp``) gets SIGKILL.

        Args:
            grace: Seconds between the SuperLink's SIGTERM and SIGKILL (it usually exits in well under 1 s).
        """
        for index in sorted(self._nodes):
            self._kill_node(index)  # nodes keep no state worth a graceful exit (which takes them ~3 s)
        if self._superlink is not None:
            _terminate([self._superlink], grace)
        self._kill_strays()
        self._nodes.clear()
        self._superlink = None
        self._all.clear()
        if self._subreaper:
            _Subreaper.release()
            self._subreaper = False


