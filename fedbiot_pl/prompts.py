"""Alpaca-style prompt templates and the GSM8K-to-instruction conversion used by FedBiOT.

The two templates are the Stanford Alpaca ones that the FedBiOT reference code (built on
FederatedScope-LLM) applies to every data set, GSM8K included. The response is appended to the
prompt directly, with no separator, exactly as the reference does.
"""

from __future__ import annotations

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


def format_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - Alpaca field name
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


def gsm8k_to_instruction(question: str, answer: str) -> tuple[str, str]:
    """Turn a GSM8K record into an (instruction, response) pair.

    The question becomes the instruction unchanged. In the answer every ``####`` marker is
    replaced by ``The answer is``, so ``"...\\n#### 72"`` becomes ``"...\\nThe answer is 72"``;
    the ``<<48/2=24>>`` calculator annotations are kept, as in the reference.

    Args:
        question: The GSM8K ``question`` field.
        answer: The GSM8K ``answer`` field (worked solution ending in ``#### <number>``).

    Returns:
        ``(instruction, response)``.
    """
    return question, answer.replace(GSM8K_ANSWER_MARKER, GSM8K_ANSWER_PHRASE)
