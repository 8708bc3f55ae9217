"""Hook points and the fault actions that tests attach to them: production code only fires no-op hook
points, never imports the testing module, and no environment variable makes it kill itself."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedbiot_pl import hooks
from fedbiot_pl.artifacts.export import atomic_write
from fedbiot_pl.federation.messages import LoRAState, decode_message
from fedbiot_pl.testing.faults import (
    CORRUPTIONS,
    GARBAGE,
    LOGITS_CORRUPTIONS,
    InjectedCrash,
    InjectedFault,
    attach_faults,
    corrupt_update,
    injected_faults,
)
from tests.helpers import PRE, ROUNDS, TINY_RUN, train

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("train.py", "fedbiot_pl", "callbacks", "modules", "datamodules")  # fedbiot_pl/testing aside
ENV = "FEDBIOT_FAULTS"  # the variable that used to switch faults on: now nothing reads it
KILL_EVERYWHERE = json.dumps([{"point": point, "action": "kill"} for point in hooks.POINTS])
STATE = {"m.layers.2.q_proj.lora_A.weight": torch.arange(6.0).reshape(2, 3),
         "m.layers.2.q_proj.lora_B.weight": torch.ones(4, 2)}


def assert_nothing_attached():
    assert not any(hooks.attached(point) for point in hooks.POINTS)


# ---------------------------------------------------------------- the hook points
def test_fire_and_transform_without_handlers_do_nothing():
    assert_nothing_attached()
    assert hooks.fire("client_fit", round=0, client=0, attempt=0) is None
    for value in (b"payload", object(), {"w": torch.ones(2)}):
        assert hooks.transform("upload", value, round=0, client=0, attempt=0) is value  # the same object


def test_attach_detach_and_an_unknown_point():
    calls = []
    detach = hooks.attach("align_step", lambda **context: calls.append(context))
    assert hooks.attached("align_step") and not hooks.attached("client_step")
    hooks.fire("align_step", epoch=1, step=2)
    assert calls == [{"epoch": 1, "step": 2}]
    detach()
    detach()  # twice: harmless
    hooks.fire("align_step", epoch=1, step=3)
    assert calls == [{"epoch": 1, "step": 2}] and not hooks.attached("align_step")

    keep = hooks.attach("upload", lambda value, **_: None)
    replace = hooks.attach("upload", lambda value, **_: value + b"!")
    try:
        assert hooks.transform("upload", b"bytes", round=0) == b"bytes!"  # None keeps the value, a result replaces it
    finally:
        keep()
        replace()
    with pytest.raises(ValueError, match=r"unknown hook point 'upload_step'; choose one of \['client_fit'"):
        hooks.attach("upload_step", print)
    assert_nothing_attached()


# ---------------------------------------------------------------- attaching faults
def test_attach_faults_listens_only_at_the_points_it_has_faults_for_until_detached():
    detach = attach_faults('[{"point": "file_write", "action": "raise"}, {"point": "align_step", "action": "sleep"}]')
    assert [point for point in hooks.POINTS if hooks.attached(point)] == ["align_step", "file_write"]
    detach()
    assert_nothing_attached()  # so a client fit adds no per-step hook callback
    with pytest.raises(ValueError, match="point 'nope'"):
        attach_faults([{"point": "nope", "action": "kill"}])
    assert_nothing_attached()  # invalid faults attach nothing


def test_the_first_matching_fault_fires_and_keys_left_out_match_anything(faults):
    faults([{"point": "align_step", "epoch": 1, "step": 0, "action": "raise"},
            {"point": "align_step", "epoch": 1, "action": "crash"}])
    hooks.fire("align_step", epoch=0, step=0)  # no fault of epoch 0
    with pytest.raises(InjectedFault, match=re.escape("injected fault at align_step {'epoch': 1, 'step': 0}")):
        hooks.fire("align_step", epoch=1, step=0)
    with pytest.raises(InjectedCrash, match=re.escape("injected crash at align_step {'epoch': 1, 'step': 3}")):
        hooks.fire("align_step", epoch=1, step=3)
    assert not issubclass(InjectedCrash, Exception)  # passes every `except Exception`, as a dying process


def test_sleep_waits_the_seconds_given(faults):
    faults({"point": "client_fit", "client": 2, "action": "sleep", "seconds": 0.2})
    start = time.perf_counter()
    hooks.fire("client_fit", round=0, client=1, attempt=0)
    assert time.perf_counter() - start < 0.1
    hooks.fire("client_fit", round=0, client=2, attempt=0)
    assert time.perf_counter() - start >= 0.2


@pytest.mark.parametrize("action", ["nan", "inf"])
def test_client_step_nan_or_inf_fills_the_adapter_lora_of_the_module(faults, action):
    adapter = {"a": torch.nn.Parameter(torch.zeros(2, 2)), "b": torch.nn.Parameter(torch.ones(3))}
    module = SimpleNamespace(split=SimpleNamespace(lora_parameters=lambda part: adapter if part == "adapter" else {}))
    faults([{"point": "client_step", "round": 0, "client": 1, "step": 1, "action": action},
            {"point": "client_step", "step": 5, "action": "raise"}])
    hooks.fire("client_step", round=0, client=1, attempt=0, step=0, module=module)
    assert all(torch.isfinite(param).all() for param in adapter.values())
    hooks.fire("client_step", round=0, client=1, attempt=0, step=1, module=module)
    filled = torch.isnan if action == "nan" else torch.isposinf
    assert all(filled(param).all() for param in adapter.values())
    # the module is no part of the message
    with pytest.raises(InjectedFault,
                       match=re.escape("client_step {'round': 0, 'client': 1, 'attempt': 0, 'step': 5}")):
        hooks.fire("client_step", round=0, client=1, attempt=0, step=5, module=module)


@pytest.mark.parametrize("action", [a for a in CORRUPTIONS if a not in LOGITS_CORRUPTIONS])
def test_upload_corruptions_damage_the_encoded_update_and_keep_its_header(faults, action):
    payload = LoRAState(STATE).encode()
    faults([{"point": "upload", "round": 1, "client": 0, "action": action,
             **({"factor": 10} if action == "scale" else {})}])
    assert hooks.transform("upload", payload, round=1, client=1, attempt=0) is payload  # another client
    damaged = hooks.transform("upload", payload, round=1, client=0, attempt=0)
    expected = corrupt_update(STATE, {"action": action, "factor": 10})
    if action == "garbage":
        assert damaged == expected == GARBAGE
        with pytest.raises(ValueError, match="not a safetensors payload"):
            decode_message(damaged, LoRAState)
        return
    got = decode_message(damaged, LoRAState).tensors  # still a LoRA message
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key].nan_to_num(), value.nan_to_num())


def test_injected_faults_detach_even_when_the_block_crashes(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")
    crash = {"point": "file_write", "name": "metrics.csv", "action": "crash"}
    with pytest.raises(InjectedCrash), injected_faults(crash):
        atomic_write(tmp_path / "other.csv", lambda tmp: Path(tmp).write_text("x"))  # another name: written
        atomic_write(target, lambda tmp: Path(tmp).write_text("new\n"))
    assert_nothing_attached()
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["metrics.csv", "other.csv"]


def test_kill_sigkills_the_process_that_attached_it():
    code = ("from fedbiot_pl import hooks; from fedbiot_pl.testing.faults import attach_faults; "
            "attach_faults('[{\"point\": \"align_step\", \"step\": 1, \"action\": \"kill\"}]'); "
            "hooks.fire('align_step', epoch=0, step=0); print('step 0', flush=True); "
            "hooks.fire('align_step', epoch=0, step=1); print('step 1')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == -signal.SIGKILL and result.stdout == "step 0\n", result.stderr[-2000:]


# ---------------------------------------------------------------- production never injects faults
def test_production_code_neither_imports_the_testing_module_nor_names_the_fault_variable():
    importing = re.compile(r"^\s*(from\s+fedbiot_pl\.testing|import\s+fedbiot_pl\.testing|from\s+fedbiot_pl\s+import\s+"
                           r"[^\n]*\btesting\b)", re.MULTILINE)
    files = [ROOT / "train.py", *(path for folder in PRODUCTION[1:] for path in (ROOT / folder).rglob("*.py")
                                  if "testing" not in path.relative_to(ROOT).parts)]
    assert len(files) > 20
    offenders = [str(path.relative_to(ROOT)) for path in files
                 if importing.search(text := path.read_text()) or ENV in text]
    assert offenders == []


def test_importing_production_modules_loads_no_testing_module_even_with_the_fault_variable_set():
    code = ("import fedbiot_pl.cli, fedbiot_pl.callbacks, fedbiot_pl.federation, sys; "
            "print([m for m in sys.modules if m.startswith('fedbiot_pl.testing')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300,
                            cwd=ROOT, env={**os.environ, ENV: KILL_EVERYWHERE})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def tiny_one_round_config(folder: Path) -> Path:
    """tests/test_reliability_kill.py's tiny run, cut to one round without pre-alignment."""
    text = TINY_RUN.replace(f"rounds: {ROUNDS}, pre_alignment_rounds: {PRE}", "rounds: 1, pre_alignment_rounds: 0")
    assert text != TINY_RUN
    (config := folder / "tiny.yaml").write_text(text)
    return config


@pytest.mark.slow
def test_the_fault_variable_cannot_kill_train_py_but_the_launcher_attaches_faults(tmp_path, monkeypatch):
    config = tiny_one_round_config(tmp_path)
    monkeypatch.setenv(ENV, KILL_EVERYWHERE)  # inherited by both subprocesses
    plain = train(tmp_path / "plain", config, [], resume=False)  # `python train.py fit ...`
    _, err = plain.communicate(timeout=600)
    assert plain.returncode == 0, err[-3000:]
    assert (tmp_path / "plain" / "fedbiot" / "version_0" / "final_adapter" / "compressed_lora.safetensors").is_file()

    launched = train(tmp_path / "launched", config, [{"point": "client_fit", "round": 0, "action": "kill"}],
                     resume=False)  # `python -m fedbiot_pl.testing.launch '<faults>' fit ...`
    _, err = launched.communicate(timeout=600)
    assert launched.returncode == -signal.SIGKILL, err[-3000:]
    assert not (tmp_path / "launched" / "fedbiot" / "version_0" / "final_adapter").exists()


def test_the_launcher_refuses_invalid_faults_before_running_anything(tmp_path):
    spec = tmp_path / "faults.json"
    spec.write_text('[{"point": "align_step", "action": "shape", "round": 0}]')
    result = subprocess.run([sys.executable, "-m", "fedbiot_pl.testing.launch", str(spec), "fit",
                             "--trainer.default_root_dir", str(tmp_path)],
                            capture_output=True, text=True, check=False, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "action 'shape' does not apply at align_step" in result.stderr
    assert "align_step has no context keys ['round']" in result.stderr
    assert "usage: python -m fedbiot_pl.testing.launch FAULTS" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["faults.json"]  # nothing was trained or written


def test_logits_corruptions_refuse_a_lora_upload_with_a_message():
    with pytest.raises(ValueError, match="fault action 'offsets' damages a top-k logits upload"):
        corrupt_update(STATE, {"action": "offsets"})
