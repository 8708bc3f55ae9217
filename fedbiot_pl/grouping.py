"""``fedbiot-group``: split devices into near-IID groups by their per-label example counts (HierFedLoRA).

Example, with ``counts.json`` mapping device id to its examples per label (all lists the same length)::

    $ echo '{"0": [10, 0], "1": [10, 0], "2": [0, 10], "3": [0, 10]}' > counts.json
    $ fedbiot-group --counts counts.json --groups 2 --json

Prints the groups, J = sum_g (n_g/n) KL(p_g || p) and J of seeded random groupings (also
``python -m fedbiot_pl.grouping``). Bad input exits with status 2 and one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.hierarchy.grouping import (
    EPS,
    by_speed_groups,
    counts_from_table,
    format_group_report,
    greedy_kl_groups,
    group_divergence,
    group_sizes,
    grouping_issues,
    kl,
    random_baseline,
    random_groups,
    smoothed,
)

__all__ = [
    "EPS",
    "by_speed_groups",
    "counts_from_table",
    "format_group_report",
    "greedy_kl_groups",
    "group_divergence",
    "group_sizes",
    "grouping_issues",
    "kl",
    "main",
    "random_baseline",
    "random_groups",
    "read_counts",
    "smoothed",
]

_PROG = "fedbiot-group"
_INT_ID = re.compile(r"-?\d+")
_MAX_LISTED = 5


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _sizes(text: str) -> list[int]:
    """Parse ``--sizes 20,20,20`` into ints."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated group sizes such as 20,20,20, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=_PROG, description="Split devices into near-IID groups by their per-label "
                            "example counts (greedy KL, HierFedLoRA) and compare with random groupings.")
    parser.add_argument("--counts", required=True, metavar="FILE",
                        help='JSON object: device id -> list of examples per label, e.g. {"0": [3, 1], "1": [0, 4]}')
    parser.add_argument("--groups", required=True, type=int, metavar="G", help="number of groups")
    parser.add_argument("--seed", type=int, default=0, help="seeds the greedy tie-break and the random draws")
    parser.add_argument("--sizes", type=_sizes, help="devices per group, e.g. 20,20,20,20 (default balanced)")
    parser.add_argument("--no-swaps", action="store_true", help="skip the pairwise-swap improvement")
    parser.add_argument("--random-draws", type=int, default=20, metavar="K",
                        help="random groupings to compare with (default 20; 0 skips them)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    return parser


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown} and {len(items) - _MAX_LISTED} more"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ConfigError(f"device ids {_listed([repr(k) for k in twice])} appear more than once; give each once")
    return dict(pairs)


def _is_count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def read_counts(path: str | Path) -> tuple[list[str | int], list[list[float]]]:
    """Read a counts file: a JSON object mapping device id to its list of per-label example counts.

    Device ids keep the file's order and spelling; when all of them are integers (``"0"``, ``"12"``)
    they are returned as ints and the devices are ordered by them.

    Args:
        path: The JSON file.

    Returns:
        The device ids and, in the same order, their count lists.

    Raises:
        ConfigError: The file is missing, unreadable, not JSON, or not an object of equally long lists of
            numbers >= 0 with some examples in total (every problem found, in one message).
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"cannot read --counts {str(path)!r} ({reason}); pass an existing JSON file") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ConfigError as error:
        raise ConfigError(f"--counts {str(path)!r}: {error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--counts {str(path)!r} is not JSON ({error}); write an object such as "
                          '{"0": [3, 1], "1": [0, 4]}') from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"--counts {str(path)!r} holds a JSON {type(data).__name__}, not a non-empty object; "
                          'map each device id to its counts, e.g. {"0": [3, 1], "1": [0, 4]}')
    issues = []
    not_lists = [repr(key) for key, value in data.items() if not isinstance(value, list) or not value]
    if not_lists:
        issues.append(f"devices {_listed(not_lists)} have no list of counts; give each a non-empty list")
    lists = {key: value for key, value in data.items() if isinstance(value, list) and value}
    bad = [f"{key!r}[{index}]={value!r}" for key, values in lists.items() for index, value in enumerate(values)
           if not _is_count(value)]
    if bad:
        issues.append(f"counts {_listed(bad)} {'is' if len(bad) == 1 else 'are'} not a number >= 0; "
                      "use example counts")
    lengths = sorted({len(value) for value in lists.values()})
    if len(lengths) > 1:
        first = next(iter(lists))
        other = [f"{key!r} has {len(value)}" for key, value in lists.items() if len(value) != len(lists[first])]
        issues.append(f"count lists differ in length ({repr(first)} has {len(lists[first])}, {_listed(other)}); "
                      "give every device one count per label")
    if not issues and not sum(sum(values) for values in lists.values()) > 0:
        issues.append("all counts are zero; the devices need at least one example in total")
    if issues:
        raise ConfigError(f"--counts {str(path)!r}: " + "; ".join(issues))
    ids: list[str | int] = list(data)
    rows = [[float(value) for value in data[key]] for key in data]
    if all(_INT_ID.fullmatch(key) for key in data):
        numbers = [int(key) for key in data]
        if len(set(numbers)) < len(numbers):
            same = sorted({repr(k) for k in data if numbers.count(int(k)) > 1})
            raise ConfigError(f"--counts {str(path)!r}: device ids {_listed(same)} name the same number; "
                              "give each device a distinct id")
        order = sorted(range(len(numbers)), key=numbers.__getitem__)
        ids, rows = [numbers[index] for index in order], [rows[index] for index in order]
    return ids, rows


def _run(args: argparse.Namespace) -> str:
    """Group the devices of ``args.counts`` and render the result (JSON or the text table)."""
    ids, counts = read_counts(args.counts)
    issues = grouping_issues(len(ids), args.groups, args.sizes)
    if args.random_draws < 0:
        issues.append(f"--random-draws {args.random_draws} is negative; use 0 to skip the comparison")
    if issues:
        raise ConfigError("; ".join(issues))
    groups = greedy_kl_groups(counts, args.groups, sizes=args.sizes, seed=args.seed, swaps=not args.no_swaps)
    if not args.json:
        return format_group_report(counts, groups, draws=args.random_draws, seed=args.seed, ids=ids)
    result = group_divergence(counts, groups)
    baseline = (random_baseline(counts, args.groups, draws=args.random_draws, seed=args.seed, sizes=args.sizes)
                if args.random_draws else None)
    return json.dumps({
        "groups": [[ids[device] for device in group] for group in groups],
        "divergence": result["divergence"],
        "random": baseline,
        "kl": result["kl"],
        "tv": result["tv"],
        "max_kl": result["max_kl"],
        "sizes": result["sizes"],
        "examples": result["examples"],
    }, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Run ``fedbiot-group``.

    Args:
        argv: The arguments (default: the command line's).

    Returns:
        0, or 2 after one ``fedbiot-group: error: ...`` line on stderr for bad input.
    """
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
        output = _run(args)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    except ValueError as error:
        print(f"{_PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    try:
        print(output)
    except BrokenPipeError:  # the reader closed early (`| head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
