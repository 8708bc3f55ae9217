"""HumanEval-X programs in the sandbox: each language's program, toolchain and command.

The programs are put together as CodeGeeX's HumanEval-X harness does (``process_humaneval_test``):

* Python: the completion up to its first unindented line, after CodeGeeX's import lines (``math``,
  ``re``, ..., ``from typing import *``; numpy only if installed), the prompt; then the test, which
  ends with its own ``check(...)`` call. Run with this interpreter (:func:`~.sandbox.python_language`).
* C++: CodeGeeX's ``#include`` lines that the prompt lacks, the prompt, the completion, the test
  (its ``main``); ``g++ -std=c++11`` (``-lcrypto -lssl`` when it includes an ``openssl/`` header),
  then the binary. Three benchmark problems need headers beyond g++'s, as in CodeGeeX's set-up:
  ``CPP/22`` and ``CPP/137`` Boost (Debian ``libboost-dev``), ``CPP/162`` OpenSSL (``libssl-dev``).
* Java: prompt (``class Solution``), completion, test (``public class Main``) in ``Main.java``;
  ``javac`` then ``java Main``, with heap, metaspace and code-cache sizes and one active CPU, so the
  JVM fits the sandbox's address-space and thread limits.
* Go: the row's ``test_setup`` (``package main`` and the test imports), an import of each of
  CodeGeeX's standard packages the completion uses and ``test_setup`` does not name, the prompt
  without its ``import`` block, the completion, the test; ``go test main_test.go`` with the
  module proxy off, its build cache in the run's working folder and two OS threads running Go code
  (``GOMAXPROCS``: the sandbox's process limit counts threads). HumanEval-X's tests call
  ``github.com/stretchr/testify/assert`` (``assert.New(t)``, ``Equal``), which CodeGeeX vendors;
  with no network its import is replaced by :data:`GO_ASSERT`, a stand-in with testify's equality
  (``reflect.DeepEqual``, byte slices by content) and a one-line failure message.

A compile error is the program's fault (``failed``, with the compiler's first error line as the
reason). A missing toolchain is an ``error`` naming the binary and the Debian package to install;
nothing runs then. Compiled languages get extra wall-clock time for the build
(:data:`BUILD_SECONDS`).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from functools import cache

from fedbiot_pl.evaluation.humanevalx import language_of
from fedbiot_pl.evaluation.sandbox import LANGUAGES as SANDBOX_LANGUAGES
from fedbiot_pl.evaluation.sandbox import ExecutionResult, Language, Limits, check_completions

PYTHON_IMPORTS = (
    "import math\nimport re\nimport sys\nimport copy\nimport datetime\nimport itertools\nimport collections\n"
    "import heapq\nimport statistics\nimport functools\nimport hashlib\n"
    "try:\n    import numpy\n    import numpy as np\nexcept ImportError:\n    pass\n"
    "import string\nfrom typing import *\nfrom collections import *\n"
)
CPP_INCLUDES = ("#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>",
                "#include<vector>", "#include<string>", "#include<climits>", "#include<cstring>",
                "#include<iostream>")
GO_PACKAGES = ("math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort", "math/rand", "crypto/md5")
TESTIFY_IMPORT = '"github.com/stretchr/testify/assert"'
GO_ASSERT = """
// fedbiot-sandbox: stands in for github.com/stretchr/testify/assert (HumanEval-X tests use New and Equal).
type fedbiotAssertPackage struct{}

type fedbiotAssertions struct{ t *testing.T }

var assert fedbiotAssertPackage

func (fedbiotAssertPackage) New(t *testing.T) *fedbiotAssertions { return &fedbiotAssertions{t} }

func (a *fedbiotAssertions) Equal(expected, actual interface{}, msgAndArgs ...interface{}) bool {
\ta.t.Helper()
\tif fedbiotIsFunc(expected) || fedbiotIsFunc(actual) {
\t\ta.t.Errorf("Invalid operation: cannot compare functions %#v and %#v", expected, actual)
\t\treturn false
\t}
\tif !fedbiotEqual(expected, actual) {
\t\ta.t.Errorf("Not equal: expected %#v, actual %#v", expected, actual)
\t\treturn false
\t}
\treturn true
}

func fedbiotIsFunc(value interface{}) bool {
\treturn value != nil && fedbiotreflect.TypeOf(value).Kind() == fedbiotreflect.Func
}

func fedbiotEqual(expected, actual interface{}) bool {
\tif expected == nil || actual == nil {
\t\treturn expected == actual
\t}
\twant, isBytes := expected.([]byte)
\tif !isBytes {
\t\treturn fedbiotreflect.DeepEqual(expected, actual)
\t}
\tgot, isBytes := actual.([]byte)
\tif !isBytes {
\t\treturn false
\t}
\tif want == nil || got == nil {
\t\treturn want == nil && got == nil
\t}
\treturn string(want) == string(got)
}
"""
JAVA_FLAGS = ("-Xmx512m", "-Xss16m", "-XX:+UseSerialGC", "-XX:ActiveProcessorCount=1", "-XX:MaxMetaspaceSize=256m",
              "-XX:CompressedClassSpaceSize=64m", "-XX:ReservedCodeCacheSize=64m")
BUILD_SECONDS = {"python": 0.0, "cpp": 10.0, "go": 20.0, "java": 10.0}
"""Wall-clock seconds added to the limit of a compiled language's program (compiler and linker)."""
TOOLCHAINS = {"cpp": ({"g++": "g++"}, "g++"), "go": ({"go": "go"}, "golang-go"),
              "java": ({"javac": "javac", "java": "java"}, "default-jdk-headless")}
"""Language -> ({role: binary looked up on PATH}, Debian package that provides them)."""
_FIRST_ERROR = "{{ grep -m1 -E '{pattern}' {log} || tail -n 1 {log}; }} >&2"


def python_program(problem: Mapping[str, str], completion: str) -> str:
    """CodeGeeX's imports, prompt, the completion up to its first unindented line, then the test."""
    kept = []
    for line in completion.split("\n"):
        if line.strip() and line[0] not in " \t":
            break
        kept.append(line)
    return f"{PYTHON_IMPORTS}{problem['prompt']}{chr(10).join(kept)}\n{problem['test']}\n"


def cpp_program(problem: Mapping[str, str], completion: str) -> str:
    """The includes the prompt lacks, the prompt, the completion, then the test's ``main``."""
    includes = "".join(f"{line}\n" for line in CPP_INCLUDES if line not in problem["prompt"])
    return f"{includes}\n{problem['prompt']}{completion}\n{problem['test']}"


def java_program(problem: Mapping[str, str], completion: str) -> str:
    """Prompt, completion, then the test's ``public class Main``."""
    return f"{problem['prompt']}{completion}\n{problem['test']}"


def go_program(problem: Mapping[str, str], completion: str) -> str:
    """``test_setup``, the packages the completion uses, the prompt without its imports, completion, test."""
    setup = problem["test_setup"]
    prompt = problem["prompt"].replace(problem.get("import", ""), "")
    used = [f'"{package}"' for package in GO_PACKAGES
            if package not in setup and package.split("/")[-1] + "." in completion]
    imports = "import (\n" + "    ".join(f"{package}\n" for package in used) + ")\n" if used else ""
    shim = TESTIFY_IMPORT in setup
    setup = setup.replace(TESTIFY_IMPORT, 'fedbiotreflect "reflect"')
    return f"{setup}\n{imports}{prompt}{completion}\n{problem['test']}" + (GO_ASSERT if shim else "")


BUILDERS = {"python": python_program, "cpp": cpp_program, "java": java_program, "go": go_program}


def missing_toolchain(language: str) -> str | None:
    """Why ``language`` cannot run here (a binary not on PATH, and the package to install), or ``None``."""
    binaries, package = TOOLCHAINS.get(language, ({}, ""))
    missing = [binary for binary in binaries.values() if shutil.which(binary) is None]
    if not missing:
        return None
    return (f"fedbiot-sandbox: HumanEval-X {language} needs {' and '.join(missing)}, not found on PATH; install it "
            f"(Debian/Ubuntu: apt-get install {package}) or leave {language} rows out")


def sandbox_language(language: str) -> Language:
    """The sandbox :class:`~.sandbox.Language` of a HumanEval-X language, its binaries found on PATH now.

    Raises:
        ValueError: Unknown language, or a missing toolchain (:func:`missing_toolchain`).
    """
    if language == "python":
        return dataclasses.replace(SANDBOX_LANGUAGES["python"], name="humanevalx-python", build=python_program)
    if language not in TOOLCHAINS:
        raise ValueError(f"unknown HumanEval-X language {language!r}; choose one of {', '.join(BUILDERS)}.")
    problem = missing_toolchain(language)
    if problem:
        raise ValueError(problem)
    tools = {role: shutil.which(binary) for role, binary in TOOLCHAINS[language][0].items()}
    return _compiled_language(language, tuple(sorted(tools.items())))  # type: ignore[arg-type]  # all found


@cache
def _compiled_language(language: str, tools: tuple[tuple[str, str], ...]) -> Language:
    paths = {role: shlex.quote(path) for role, path in tools}
    if language == "cpp":
        file = "main.cpp"
        script = (f"libs=; grep -q 'openssl/' {file} && libs='-lcrypto -lssl'; "
                  f"{paths['g++']} -std=c++11 {file} -o main $libs 2>build.log || "
                  f"{{ {_first_error('error', 'build.log')}; exit 1; }}; ./main")
    elif language == "java":
        file, flags = "Main.java", " ".join(JAVA_FLAGS)
        compile_flags = " ".join(f"-J{flag}" for flag in JAVA_FLAGS)
        script = (f"{paths['javac']} {compile_flags} {file} 2>build.log || "
                  f"{{ {_first_error('error', 'build.log')}; exit 1; }}; "
                  f"{paths['java']} {flags} -cp . Main 2>run.log; code=$?; "
                  f"[ $code -eq 0 ] || {_first_error('Exception|Error', 'run.log')}; exit $code")
    else:
        file = "main_test.go"
        script = ('export GOCACHE="$PWD/.go-build" GOPATH="$PWD/.go" GOPROXY=off GOTOOLCHAIN=local GOTELEMETRY=off '
                  f"GOFLAGS= CGO_ENABLED=0 GOMAXPROCS=2; {paths['go']} test {file} >test.log 2>&1; code=$?; "
                  f"[ $code -eq 0 ] || {_first_error(':[0-9]+(:[0-9]+)?: |^panic: ', 'test.log')}; exit $code")
    roots = tuple(os.path.dirname(os.path.dirname(os.path.realpath(path))) for _, path in tools)
    return Language(name=f"humanevalx-{language}", file_name=file, build=BUILDERS[language],
                    command=lambda name, s=script: ["/bin/sh", "-c", s], needs=roots)


def _first_error(pattern: str, log: str) -> str:
    """Shell code printing the log's first line matching ``pattern`` (else its last line) to stderr."""
    return _FIRST_ERROR.format(pattern=pattern, log=log)


def check_humanevalx(problems: Sequence[Mapping[str, str]], completions: Sequence[str], limits: Limits | None = None,
                     workers: int | None = None) -> list[ExecutionResult]:
    """Run ``completions[i]`` against HumanEval-X ``problems[i]``, each with its language's toolchain.

    Args:
        problems: HumanEval-X rows (language from ``language`` or the ``task_id`` prefix).
        completions: Cleaned completions, one per problem.
        limits: Sandbox limits (default :class:`~.sandbox.Limits`); compiled languages get
            :data:`BUILD_SECONDS` more wall-clock time.
        workers: Parallel programs (default: CPU count).

    Returns:
        One result per completion, in order; ``error`` for every completion of a language whose
        toolchain is missing.

    Raises:
        ValueError: Different lengths, or a problem of unknown language.
    """
    if len(problems) != len(completions):
        raise ValueError(f"Got {len(problems)} problems but {len(completions)} completions; give one problem each.")
    limits = limits or Limits()
    groups: dict[str, list[int]] = {}
    for index, problem in enumerate(problems):
        groups.setdefault(language_of(problem), []).append(index)
    results: list[ExecutionResult | None] = [None] * len(problems)
    for language, indices in groups.items():
        problem = missing_toolchain(language)
        if problem:
            outcomes = [ExecutionResult(False, "error", problem, "none")] * len(indices)
        else:
            extended = dataclasses.replace(limits, timeout_s=limits.timeout_s + BUILD_SECONDS[language])
            outcomes = check_completions([problems[i] for i in indices], [completions[i] for i in indices],
                                         sandbox_language(language), extended, workers)
        for index, outcome in zip(indices, outcomes, strict=True):
            results[index] = outcome
    return results  # type: ignore[return-value]  # every index was filled
