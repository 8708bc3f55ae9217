r"""HumanEval-X (CodeGeeX's multilingual HumanEval) as the FedBiOT authors ran it: languages, prompts, cleaning.

A HumanEval-X row (``humaneval_<lang>.jsonl.gz`` of THUDM/CodeGeeX or the hub's ``THUDM/humaneval-x``)
holds ``task_id`` (``"CPP/0"``, ``"Go/3"``, ``"Java/1"``, ``"Python/0"``), ``prompt``,
``declaration``, ``canonical_solution``, ``test`` and often ``example_test``; Go rows also hold
``import`` (the import block at the top of the prompt) and ``test_setup`` (package clause and test
imports). The language comes from the ``task_id`` prefix, or from a ``language`` field.

The authors' ``eval_for_code/humanevalx.py`` evaluated C++, Go, Java and Python. Its prompt is
CodeGeeX's language tag line (``// language: C++``, ``# language: Python``, ...) then the raw
problem prompt, with no instruction template; each sampled completion was cleaned as
:func:`clean_completion` does (their ``clean_answer``, adapted from CodeGeeX's ``cleanup_code``):

* every no-break space (U+00A0) is deleted;
* Python: for each stop word in turn (``\ndef``, ``\nclass``, ``\nif``, ``\n#``, ``\nprint``,
  ``\nassert``) that occurs, the text is cut at its **last** occurrence; then the first line's
  leading spaces are set to exactly four (an unindented ``return x`` becomes ``    return x``);
* Go: the same with ``\n//`` and ``\nfunc main(``; then, if the braces balance, ``\n}`` closes
  the function the prompt opened;
* C++: the same with ``\nint main()``, then the same closing brace;
* Java: cut at the first ``\npublic class`` (the model's own test class); then ``\n}`` when the
  completion closed the method but not the class (one ``}`` more than ``{``), or ``\n    }\n}``
  when it closed neither (balanced braces).

The cleaned completion is appended to the prompt and run with the problem's tests by the CodeGeeX
harness (:mod:`~fedbiot_pl.evaluation.sandbox_languages`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HumanEvalXLanguage:
    """One HumanEval-X language: its name, task-id prefix, prompt tag and cleaning rules."""

    name: str
    """The CodeGeeX name: ``python``, ``cpp``, ``go`` or ``java``."""
    prefix: str
    """The ``task_id`` prefix of its rows (``CPP`` for ``CPP/0``)."""
    tag: str
    """The first line of every prompt."""
    stops: tuple[str, ...]
    """Each one that occurs cuts the completion at its last occurrence, in this order."""


LANGUAGES: dict[str, HumanEvalXLanguage] = {
    "python": HumanEvalXLanguage("python", "Python", "# language: Python",
                                 ("\ndef", "\nclass", "\nif", "\n#", "\nprint", "\nassert")),
    "cpp": HumanEvalXLanguage("cpp", "CPP", "// language: C++", ("\nint main()",)),
    "go": HumanEvalXLanguage("go", "Go", "// language: Go", ("\n//", "\nfunc main(")),
    "java": HumanEvalXLanguage("java", "Java", "// language: Java", ()),
}
"""The four languages the FedBiOT authors evaluated (CodeGeeX also has JavaScript and Rust)."""

_ALIASES = {"c++": "cpp", "python3": "python", "golang": "go"}
JAVA_TEST_CLASS = "\npublic class"


def language_of(row: Mapping[str, Any]) -> str:
    """The language of a HumanEval-X row: its ``language`` field, else its ``task_id`` prefix (case-insensitive).

    Raises:
        ValueError: Neither names one of :data:`LANGUAGES`.
    """
    given = row.get("language")
    if not isinstance(given, str):
        task_id = row.get("task_id")
        given = task_id.split("/", 1)[0] if isinstance(task_id, str) and "/" in task_id else ""
    name = _ALIASES.get(given.lower(), given.lower())
    if name not in LANGUAGES:
        raise ValueError(f"cannot tell the language of task_id {row.get('task_id')!r} (language "
                         f"{row.get('language')!r}): HumanEval-X ids start with "
                         f"{', '.join(lang.prefix + '/' for lang in LANGUAGES.values())}, or set `language` to one "
                         f"of {', '.join(LANGUAGES)}.")
    return name


def humanevalx_prompt(row: Mapping[str, Any]) -> str:
    """The generation prompt: the language tag line, then the row's ``prompt`` unchanged."""
    return f"{LANGUAGES[language_of(row)].tag}\n{row['prompt']}"


def cut_at_last_stops(code: str, stops: tuple[str, ...]) -> str:
    """For each stop in turn that occurs in the (already cut) text, keep what precedes its last occurrence."""
    for stop in stops:
        if stop in code:
            code = code[: code.rfind(stop)]
    return code


def indent_first_line(code: str, width: int = 4) -> str:
    """Replace the leading spaces of the first line by exactly ``width`` spaces.

    A leading tab stays after them, as the authors' ``pad_spaces`` leaves it.
    """
    stripped = code.lstrip(" ")
    return code if len(code) - len(stripped) == width else " " * width + stripped


def clean_completion(completion: str, language: str) -> str:
    """A sampled completion as the authors cleaned it before execution (see the module docstring).

    Args:
        completion: The generated text after the prompt.
        language: ``python``, ``cpp``, ``go`` or ``java``.

    Raises:
        ValueError: Unknown language.
    """
    if language not in LANGUAGES:
        raise ValueError(f"unknown HumanEval-X language {language!r}; choose one of {', '.join(LANGUAGES)}.")
    code = cut_at_last_stops(completion.replace("\u00a0", ""), LANGUAGES[language].stops)
    if language == "python":
        return indent_first_line(code)
    if language == "java":
        position = code.find(JAVA_TEST_CLASS)
        code = code if position < 0 else code[:position]
        # one "}" more than "{": the method is closed, the class is not; as many: neither is
        return code + {1: "\n}", 0: "\n    }\n}"}.get(code.count("}") - code.count("{"), "")
    return code + "\n}" if code.count("{") == code.count("}") else code  # close the prompt's function
