"""``fedbiot-flower-local``: a whole Flower deployment on this machine, for trying it and for CI.

``fedbiot-flower-local [train.py fit arguments]`` (also ``python -m fedbiot_pl.flower.local``) takes
the arguments of ``python train.py fit``. It exports the clients' model once, starts a SuperLink and
one SuperNode per client on 127.0.0.1 (each its own process group), runs the app with
``flwr run``, waits for it, and stops every process by its process id. The run folder is the one
``train.py fit`` writes, in the current folder; with the same arguments its
``final_adapter/compressed_lora.safetensors`` is the in-process run's, bit for bit.

Options of its own (before or after the fit arguments):
``--flower-tls`` (self-signed TLS and node authentication), ``--flower-workdir DIR`` (the engine's
logs, keys and client model; default ``runs/flower-local/<time>``), ``--flower-round-timeout S``,
``--flower-timeout S`` (the whole run), ``--flower-secagg JSON`` (Flower's SecAgg+; ``'{}'`` = defaults).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from fedbiot_pl.errors import ConfigError

APP_DIR = Path(__file__).resolve().parent / "app"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedbiot-flower-local", description=__doc__.split("\n\n")[0],
                                     epilog="Every other argument is a `train.py fit` argument.")
    parser.add_argument("--flower-tls", action="store_true", help="self-signed TLS and SuperNode authentication")
    parser.add_argument("--flower-workdir", default=None, help="the engine's folder (logs, keys, client model)")
    parser.add_argument("--flower-round-timeout", type=float, default=0.0,
                        help="seconds for the replies of one attempt at a round (0: no limit)")
    parser.add_argument("--flower-timeout", type=float, default=3600.0, help="seconds for the whole run")
    parser.add_argument("--flower-secagg", default="", metavar="JSON",
                        help='Flower SecAgg+: "{}" for the defaults, or a JSON object of SecAggSettings fields')
    return parser


def engine_issues() -> list[str]:
    """What this machine lacks to run Flower's engine (empty: nothing)."""
    import importlib.util

    from fedbiot_pl.flower.processes import find_tool

    if sys.version_info < (3, 11):
        return [f"Flower 1.41 needs Python >= 3.11 (this is {sys.version.split()[0]}): use a newer Python for the "
                "Flower deployment; `python train.py fit` runs the same rounds in one process."]
    if importlib.util.find_spec("flwr") is None or find_tool("flower-superlink") is None:
        return ["flwr is not installed: pip install 'fedbiot-pl[flower]'"]
    return []


def run_local(fit_args: list[str], workdir: Path, tls: bool = False, round_timeout: float = 0.0,
              timeout: float = 3600.0, secagg: str = "") -> tuple[str, str]:
    """Run ``train.py fit`` with ``fit_args`` on a local Flower deployment; ``(final status, server log)``."""
    from fedbiot_pl.flower.client_model import is_exported
    from fedbiot_pl.flower.engine import LocalEngine, NodeSpec
    from fedbiot_pl.flower.export import export_for_args, fit_config
    from fedbiot_pl.flower.server_app import parse_secagg

    issues = engine_issues() + parse_secagg(secagg, "--flower-secagg")[1]
    if workdir.exists() and not workdir.is_dir():
        issues.append(f"--flower-workdir {str(workdir)!r} is a file; name a folder (it is created if missing)")
    for flag, value, low in (("--flower-round-timeout", round_timeout, 0.0), ("--flower-timeout", timeout, 1e-9)):
        if not math.isfinite(value) or value < low:
            issues.append(f"{flag} must be a number of seconds {'>= 0' if low == 0 else '> 0'}, got {value!r}")
    if issues:
        raise ConfigError("; ".join(issues))
    argv, config = fit_config(fit_args)
    num_clients = int(config.data.num_clients)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "client_model"
    if not is_exported(model_dir):
        print(f"exporting the client model to {model_dir} ...", file=sys.stderr)
        export_for_args(fit_args, model_dir, config)
    nodes = [NodeSpec({"client-id": client, "model-dir": str(model_dir)}) for client in range(num_clients)]
    run_config = {"args": json.dumps(argv), "workdir": os.getcwd(), "model-dir": str(model_dir),
                  "min-nodes": num_clients, "round-timeout": round_timeout, "secagg": secagg}
    with LocalEngine(workdir / "engine", nodes, tls=tls, auth=tls) as engine:
        engine.start()
        print(f"SuperLink {engine.address} and {num_clients} SuperNodes up (pids {engine.pids})", file=sys.stderr)
        run_id = engine.submit(APP_DIR, run_config)
        try:
            status = engine.wait(run_id, timeout=timeout)
        except TimeoutError:
            status = f"not finished after {timeout:g} s (--flower-timeout)"
        logs = engine.logs(run_id)
    (workdir / "server.log").write_text(logs)
    return status, logs


def main(argv: list[str] | None = None) -> int:
    """Run the command: exit 0 when the run completed, 1 when it failed (its log tail printed), 2 on bad input."""
    from fedbiot_pl.flower.processes import EngineError

    known, fit_args = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if fit_args and fit_args[0] == "fit":
        fit_args = fit_args[1:]
    workdir = Path(known.flower_workdir or Path("runs") / "flower-local" / time.strftime("%Y%m%d-%H%M%S"))
    try:
        status, logs = run_local(fit_args, workdir.resolve(), known.flower_tls, known.flower_round_timeout,
                                 known.flower_timeout, known.flower_secagg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (EngineError, TimeoutError) as error:  # a Flower process, command or start-up stage failed (log tail)
        print(f"error: {error}\nengine logs in {workdir}", file=sys.stderr)
        return 1
    if status != "finished:completed":
        print(logs[-6000:], file=sys.stderr)
        print(f"error: the Flower run ended {status}; engine logs in {workdir}", file=sys.stderr)
        return 1
    print(f"Flower run {status}; engine logs and the server log in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
