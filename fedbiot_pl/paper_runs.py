"""Every run of the FedBiOT paper's LLaMA-2-7B grid, as ``train.py fit`` commands on the shipped recipes.

The grid is the authors' (``all_exp_{gsm8k,rosetta,dolly}.sh``): for each task (GSM8K, code, Dolly), each
adapter of 2 or 4 layers and each beta of 0.2 or 0.5, FedBiOT with lambda (``model.kl_weight``) and
epsilon (``federated.proximal_weight``) in {0, 1}, lr in {1e-4, 3e-5}; then the baselines on the same
tasks and betas with the 2 bottom + 2 top adapter: offsite-tuning (one client with all the data), FedOT
(the task's clients) and FedOT with one-shot distillation (the paper's description of FedOT), whose
server distils for FedBiOT's whole server budget up front (pre-alignment plus 500 rounds of 5 steps).
Every run is repeated over 3 seeds, as the paper averages 3 seeds. GSM8K's baselines use the
reference's 1,000-token limit. Each run logs into ``runs/<name>``::

    python -m fedbiot_pl.paper_runs --task gsm8k --algorithm fedbiot     # the commands, one per line
    python -m fedbiot_pl.paper_runs --json                                 # every run as JSON
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import product

TASKS = ("gsm8k", "code", "dolly")
ADAPTERS = (2, 4)
BETAS = (0.2, 0.5)
LRS = (1e-4, 3e-5)
SWITCHES = (0.0, 1.0)  # lambda and epsilon
SEEDS = (0, 1, 2)
ROUNDS = 500
PRE_ALIGNMENT = {0.2: 50, 0.5: 100}
BASELINES = ("offsite_tuning", "fedot", "fedot_one_shot")
ALGORITHMS = ("fedbiot", *BASELINES)


@dataclass(frozen=True)
class PaperRun:
    """One run: its name, the YAML files in order and the overrides after them."""

    name: str
    task: str
    algorithm: str
    configs: tuple[str, ...]
    overrides: tuple[str, ...]

    def arguments(self) -> list[str]:
        """``train.py fit``'s arguments after ``fit``."""
        files = [arg for config in self.configs for arg in ("--config", config)]
        return [*files, *self.overrides, f"--trainer.logger.init_args.name={self.name}"]

    def command(self) -> str:
        """The shell command, from the repository root."""
        return shlex.join(["python", "train.py", "fit", *self.arguments()])


def _recipe(task: str, adapter: int, beta: float) -> str:
    return f"configs/llama2-7b/{task}-adpt{adapter}-beta{beta}.yaml"


def _lr(lr: float) -> tuple[str, ...]:
    # The reference's server uses the clients' optimizer (B4): one lr for both.
    return (f"--model.lr={lr}", f"--federated.client_lr={lr}")


def paper_runs(tasks: Sequence[str] = TASKS, algorithms: Sequence[str] = ALGORITHMS) -> list[PaperRun]:
    """The runs of ``tasks`` and ``algorithms``, FedBiOT's grid first, in a fixed order."""
    runs = []
    if "fedbiot" in algorithms:
        for task, adapter, beta, lr, lam, eps, seed in product(tasks, ADAPTERS, BETAS, LRS, SWITCHES, SWITCHES, SEEDS):
            name = f"{task}.adpt{adapter}_dp{beta}.lr{lr:g}.eps{eps:g}.lam{lam:g}.seed{seed}.fedbiot"
            overrides = (*_lr(lr), f"--model.kl_weight={lam}", f"--federated.proximal_weight={eps}",
                         f"--seed_everything={seed}")
            runs.append(PaperRun(name, task, "fedbiot", (_recipe(task, adapter, beta),), overrides))
    for task, baseline, beta, lr, seed in product(tasks, BASELINES, BETAS, LRS, SEEDS):
        if baseline not in algorithms:
            continue
        algorithm = "fedot" if baseline == "fedot_one_shot" else baseline
        configs = [_recipe(task, 2, beta), f"configs/algorithms/{algorithm}.yaml"]
        overrides = [*_lr(lr), f"--seed_everything={seed}"]
        if baseline == "fedot_one_shot":
            configs.append("configs/algorithms/one_shot_distillation.yaml")
            overrides.append(f"--federated.pre_alignment_rounds={PRE_ALIGNMENT[beta] + ROUNDS}")
        if task == "gsm8k":
            overrides.append("--data.max_length=1000")  # the reference's tok_len of its FedOT and central runs
        name = f"{task}.adpt2+2_dp{beta}.lr{lr:g}.seed{seed}.{baseline}"
        runs.append(PaperRun(name, task, baseline, tuple(configs), tuple(overrides)))
    return runs


def main(argv: list[str] | None = None) -> int:
    """Print the selected runs' commands (or ``--json``); the exit status is 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, action="append", help="only this task (repeatable)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, action="append", help="only this algorithm (repeatable)")
    parser.add_argument("--json", action="store_true", help="every run as a JSON list")
    args = parser.parse_args(argv)
    runs = paper_runs(args.task or TASKS, args.algorithm or ALGORITHMS)
    if args.json:
        print(json.dumps([asdict(run) | {"command": run.command()} for run in runs], indent=2))
    else:
        print("\n".join(run.command() for run in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
