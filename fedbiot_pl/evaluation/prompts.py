"""Evaluation prompts: GSM8K 8-shot chain of thought, code prompts and their clean-up, QA prompts.

GSM8K prompts sit inside the Alpaca template; code prompts have per-language post-processing.

The GSM8K demonstrations are the eight grade-school exemplars of the chain-of-thought paper (Wei et
al., 2022) that the FedBiOT authors' evaluation used; as there, each question gets its own seeded
shuffle of the demonstrations, all placed inside the Alpaca no-input template before the question.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from fedbiot_pl.data.prompts import format_prompt

ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

GSM8K_DEMOS: tuple[tuple[str, str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6.", "6"),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.", "5"),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39.", "39"),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8.",
     "8"),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
     "5 + 4 = 9.", "9"),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29.", "29"),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls.", "33"),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8.", "8"),
)


def gsm8k_prompt(question: str, shots: int = 8, seed: int = 0, index: int = 0) -> str:
    """The few-shot prompt of question ``index``: ``shots`` demonstrations in a seeded order."""
    if not 0 <= shots <= len(GSM8K_DEMOS):
        raise ValueError(f"shots must be between 0 and {len(GSM8K_DEMOS)}, got {shots}.")
    if shots == 0:
        return format_prompt(question)
    demos = list(GSM8K_DEMOS)
    random.Random(f"{seed}/{index}").shuffle(demos)
    parts = [ALPACA_HEADER, ""]
    for demo_question, chain, answer in demos[:shots]:
        parts.append(f"### Instruction:\n{demo_question}\n\n### Response: {chain} The answer is {answer}.\n")
    parts.append(f"### Instruction:\n{question}\n\n### Response:")
    return "\n".join(parts)


@dataclass(frozen=True)
class CodeLanguage:
    """How to prompt for and clean up completions in one programming language (HumanEval-X style)."""

    name: str
    tag: str
    stops: tuple[str, ...]

    def prompt(self, problem_prompt: str) -> str:
        """The language tag line, then the problem's prompt."""
        return f"{self.tag}\n{problem_prompt}"

    def clean(self, completion: str) -> str:
        """Cut the completion at the first stop sequence (the end of the function body)."""
        cut = min((i for i in (completion.find(s) for s in self.stops) if i >= 0), default=len(completion))
        return completion[:cut].rstrip()


LANGUAGES = {
    "python": CodeLanguage(
        "python", "# language: Python",
        ("\ndef ", "\nclass ", "\nif __name__", "\nif ", "\n#", "\nprint(", "\nassert "),
    ),
}


def code_prompt(problem_prompt: str, language: str = "python") -> str:
    """The code-generation prompt: a language tag line, then the problem (no Alpaca template)."""
    return _language(language).prompt(problem_prompt)


def clean_code(completion: str, language: str = "python") -> str:
    """The function body of a completion: cut at the language's first stop sequence, trailing space removed."""
    return _language(language).clean(completion)


def _language(language: str) -> CodeLanguage:
    if language not in LANGUAGES:
        raise ValueError(f"unknown code language {language!r}; supported: {sorted(LANGUAGES)}.")
    return LANGUAGES[language]


def qa_prompt(instruction: str, context: str = "") -> str:
    """Dolly-style QA: the Alpaca template with the context as input."""
    return format_prompt(instruction, context)


def strip_chat_tail(text: str) -> str:
    """Cut a generated response where the model starts a new Alpaca turn."""
    return re.split(r"\n\s*### (?:Instruction|Response|Input):", text, maxsplit=1)[0].strip()
