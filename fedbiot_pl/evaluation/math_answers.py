r"""GSM8K answer extraction and matching, following the FedBiOT evaluation protocol.

The reference evaluation (FederatedScope ``eval_for_gsm8k``, ``clean_answer``) scores a model output
like this:

1. lower-case the output and split it on ``"the answer is"``;
2. if the phrase occurs, look only at the text between its first and its second occurrence (or the
   end) and take the **first** number there; otherwise take the **last** number of the whole output;
3. numbers are found after removing every comma (``"1,000"`` -> ``"1000"``) with the pattern
   ``-?\d+\.?\d*``, and one trailing ``"."`` is dropped (``"$18."`` -> ``"18"``);
4. the gold answer is the number after ``"####"`` in the reference solution, commas removed;
5. the two strings must be equal (exact string match).

Exact string match is kept as the default, so ``"18.0"`` does **not** match a gold ``"18"``, as in
the reference. ``numeric=True`` compares the values instead (``Decimal``), which accepts ``"18.0"``,
``"18.00"`` and ``"018"`` for ``"18"``; it is offered for analysis, not for reproducing the paper.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

ANSWER_TRIGGER = "the answer is"
_NUMBER = re.compile(r"-?\d+\.?\d*")
_GOLD = re.compile(r"####\s*(-?[0-9.,]+)")


def extract_prediction(output: str) -> str | None:
    """Extract the predicted answer from a model output, as the reference ``clean_answer`` does.

    Args:
        output: The generated text.

    Returns:
        The answer as a string without commas or a trailing ``"."`` (e.g. ``"1000"``, ``"-3.5"``),
        or ``None`` if the text (or, with the trigger phrase, the span after it) holds no number.

    Examples:
        >>> extract_prediction("The answer is 18. Later 20.")
        '18'
        >>> extract_prediction("3 + 4 = 7, so she pays $1,007.")
        '1007'
    """
    parts = output.lower().split(ANSWER_TRIGGER)
    triggered = len(parts) > 1
    # With the trigger, only the span up to a second occurrence counts (the reference's split()[1]).
    span = parts[1] if triggered else parts[-1]
    numbers = _NUMBER.findall(span.replace(",", ""))
    if not numbers:
        return None
    answer = numbers[0] if triggered else numbers[-1]
    return answer.removesuffix(".")


def extract_gold(solution: str) -> str:
    """Extract the gold answer from a GSM8K solution (the number after ``"####"``) or a bare number.

    Args:
        solution: A reference solution ending in ``"#### <number>"``, or just a number such as
            ``"1,000"`` or ``"-4"``.

    Returns:
        The number as a string with commas removed (``"#### 1,000"`` -> ``"1000"``).

    Raises:
        ValueError: The text has no ``"####"`` followed by a number and is not a bare number.
    """
    match = _GOLD.search(solution)
    if match is not None:
        return match.group(1).replace(",", "")
    bare = solution.strip().replace(",", "")
    if _NUMBER.fullmatch(bare):
        return bare
    raise ValueError(
        f"Gold answer {_clip(solution)!r} has no '#### <number>' line and is not a bare number; "
        "pass the GSM8K 'answer' field or the final number itself."
    )


def is_correct(output: str, gold: str, *, numeric: bool = False) -> bool:
    """Whether a model output answers correctly under the GSM8K protocol.

    Args:
        output: The generated text.
        gold: The reference solution (with ``"####"``) or the bare gold number.
        numeric: Compare numeric values instead of strings (``"18.0"`` matches ``"18"``). The
            reference uses exact string match, the default.

    Returns:
        ``True`` if the extracted prediction equals the gold answer; ``False`` when the output holds
        no number.

    Raises:
        ValueError: ``gold`` holds no gold number (see :func:`extract_gold`).
    """
    expected = extract_gold(gold)
    predicted = extract_prediction(output)
    if predicted is None:
        return False
    if not numeric:
        return predicted == expected
    try:
        return Decimal(predicted) == Decimal(expected)
    except InvalidOperation:  # e.g. a gold "1.2.3": no value, so nothing matches it numerically
        return False


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
