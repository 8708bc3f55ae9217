"""Alpaca-style prompt templates and the per-task record conversions used by FedBiOT.

The two templates are the Stanford Alpaca ones that the FedBiOT reference code (built on
FederatedScope-LLM) applies to every data set, GSM8K included. The response is appended to the
prompt directly, with no separator, exactly as the reference does.

The conversions are pure functions of one record's strings; :mod:`fedbiot_pl.data.sources` decides
which one a data set uses.
"""

from __future__ import annotations

import re

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
"""Template for records whose ``input`` field carries extra context."""

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
"""Template for records with an empty (or whitespace-only) ``input`` field."""

GSM8K_ANSWER_MARKER = "####"
"""The marker that introduces the final numeric answer in a GSM8K solution."""

GSM8K_ANSWER_PHRASE = "The answer is"
"""What the reference puts in place of :data:`GSM8K_ANSWER_MARKER` in training targets."""

CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
"""A GSM8K calculator annotation such as ``<<48/2=24>>``."""

NO_BREAK_SPACE = "\u00a0"
"""The character the reference deletes from Rosetta-style code records."""

LANGUAGE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("C++", r"C\+\+|\bcpp\b"),
    ("C#", r"C#"),
    ("JavaScript", r"\bJavaScript\b|\bJS\b|\bNode\.js\b"),
    ("TypeScript", r"\bTypeScript\b"),
    ("Python", r"\bPython\b"),
    ("Java", r"\bJava\b"),
    ("Go", r"\bGolang\b|\bGo (?:program|function|code|script)\b|\bin Go\b"),
    ("Rust", r"\bRust\b"),
    ("Ruby", r"\bRuby\b"),
    ("PHP", r"\bPHP\b"),
    ("Swift", r"\bSwift\b"),
    ("Kotlin", r"\bKotlin\b"),
    ("SQL", r"\bSQL\b|\bMySQL\b|\bPostgreSQL\b"),
    ("Bash", r"\bBash\b|\bshell script\b"),
    ("HTML/CSS", r"\bHTML\b|\bCSS\b"),
)
"""(language, regex) pairs that :func:`instruction_language` tries in this order."""

OTHER_LANGUAGE = "other"
"""What :func:`instruction_language` returns when the instruction names no known language."""


def format_prompt(instruction: str, input: str = "") -> str:
    """Fill the Alpaca template that fits the record.

    Args:
        instruction: The task description.
        input: Optional context for the task. An empty or whitespace-only value selects the
            template without an ``### Input:`` section; any other value is inserted verbatim.

    Returns:
        The prompt, ending with ``"### Response:"``.
    """
    if input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def strip_calculator_annotations(text: str) -> str:
    """Delete GSM8K calculator annotations: ``"48/2 = <<48/2=24>>24"`` becomes ``"48/2 = 24"``."""
    return CALCULATOR_ANNOTATION.sub("", text)


def gsm8k_to_instruction(question: str, answer: str, strip_annotations: bool = False) -> tuple[str, str]:
    r"""Turn a GSM8K record into an (instruction, response) pair.

    The question becomes the instruction unchanged. In the answer every ``####`` marker is
    replaced by ``The answer is``, so ``"...\n#### 72"`` becomes ``"...\nThe answer is 72"``;
    the ``<<48/2=24>>`` calculator annotations are kept, as in the reference, unless
    ``strip_annotations`` is set.

    Args:
        question: The GSM8K ``question`` field.
        answer: The GSM8K ``answer`` field (worked solution ending in ``#### <number>``).
        strip_annotations: Delete the ``<<...>>`` calculator annotations from the answer.

    Returns:
        ``(instruction, response)``.
    """
    if strip_annotations:
        answer = strip_calculator_annotations(answer)
    return question, answer.replace(GSM8K_ANSWER_MARKER, GSM8K_ANSWER_PHRASE)


def strip_no_break_spaces(text: str) -> str:
    r"""Delete every ``\u00a0`` (no-break space), as the reference does for Rosetta-style code data."""
    return text.replace(NO_BREAK_SPACE, "")


def instruction_language(instruction: str) -> str:
    """The first programming language that ``instruction`` names, else :data:`OTHER_LANGUAGE`.

    Code Alpaca rows carry no language field; this gives them a client key (the paper partitions
    code data by language). Languages are tried in the order of :data:`LANGUAGE_PATTERNS`, so
    ``"Port this Java code to C++"`` gives ``"C++"``; the match is case-sensitive.

    Args:
        instruction: The instruction text.

    Returns:
        A language name from :data:`LANGUAGE_PATTERNS`, or ``"other"``.
    """
    for language, pattern in LANGUAGE_PATTERNS:
        if re.search(pattern, instruction):
            return language
    return OTHER_LANGUAGE
