"""Stopping a run: Ctrl-C and SIGTERM stop training between two steps with a checkpoint that resumes bit for
bit, and a stage's worker process stops cleanly when the process that started it is killed."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import minifcn.train as training
from minifcn import interrupts
from minifcn.data import synthesize
from minifcn.train import TrainConfig, load_checkpoint, train
from test_train import SMALL as TRAIN_SMALL

# test_train's small run with Adam, checkpointed only at epoch ends and on the interrupt under test
SMALL = {**TRAIN_SMALL, "checkpoint_every": 100, "optimizer": "adam", "lr": 1e-3, "warmup_steps": 3}


def signal_inside_step(monkeypatch, step, signum):
    """Make the optimiser raise ``signum`` at itself between two parameters' updates of step ``step``."""
    real = training.make_optimizer

    def make(config, model):
        optimizer = real(config, model)
        update = optimizer.update

        def update_then_signal(group, p, k, i):
            update(group, p, k, i)
            if optimizer.steps == step and (k, i) == (0, 1):
                signal.raise_signal(signum)

        optimizer.update = update_then_signal
        return optimizer

    monkeypatch.setattr(training, "make_optimizer", make)


def state(out):
    _, _, stored = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    return stored


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("step", [2, 3])  # 3 steps an epoch: mid-epoch, and the step that ends epoch 1
def test_a_signal_inside_an_optimiser_step_stops_after_it_and_the_resumed_run_is_exact(dataset, tmp_path, monkeypatch,
                                                                                     step, signum):
    def reached_the_test(*_):
        raise AssertionError("SIGTERM reached the test's own handler: training did not take it")

    previous = signal.signal(signal.SIGTERM, reached_the_test)
    try:
        straight = TrainConfig(data=dataset, out=str(tmp_path / "straight"), **SMALL)
        train(straight, progress=False)
        stopped = TrainConfig(data=dataset, out=str(tmp_path / "stopped"), **SMALL)
        signal_inside_step(monkeypatch, step, signum)
        lines = []
        with pytest.raises(KeyboardInterrupt):
            train(stopped, progress=False, log=lines.append)
        monkeypatch.undo()
        assert state(stopped.out)["meta"]["step"] == step  # the whole step is in the checkpoint
        assert any(f"interrupted at step {step}" in line for line in lines)
        assert signal.getsignal(signal.SIGTERM) is reached_the_test  # training put the handler back
        train(stopped, resume=True, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    a, b = state(straight.out), state(stopped.out)
    for part in ("model", "optim"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert np.array_equal(a[part][key], b[part][key]), (part, key)
    logged = [json.loads(line) for line in open(os.path.join(stopped.out, "metrics.jsonl"))]
    assert [entry["epoch"] for entry in logged] == [1, 2]


def test_sigterm_stops_pretraining_as_ctrl_c_does_and_the_resumed_run_is_exact(tmp_path, monkeypatch):
    import minifcn.pretrain as stage
    from minifcn.config import PretrainConfig
    data = synthesize(str(tmp_path / "voc"), 8, 4, 64, progress=False)
    settings = dict(data=data, width=1 / 16, fc_width=16, crop=32, crops_per_image=2, epochs=2, batch_size=8,
                    checkpoint_every=1)
    straight, _ = stage.pretrain(PretrainConfig(**settings, out=str(tmp_path / "straight")), progress=False)
    calls, real = [], stage.train_step

    def step_then_sigterm(*args):
        calls.append(1)
        loss = real(*args)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)
        return loss

    def reached_the_test(*_):
        raise AssertionError("SIGTERM reached the test's own handler: pre-training did not take it")

    config = PretrainConfig(**settings, out=str(tmp_path / "stopped"))
    monkeypatch.setattr(stage, "train_step", step_then_sigterm)
    previous = signal.signal(signal.SIGTERM, reached_the_test)
    try:
        with pytest.raises(KeyboardInterrupt):
            stage.pretrain(config, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(config.out, ".minifcn.lock"))  # released, as a clean end does
    resumed, history = stage.pretrain(config, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert np.array_equal(a.data, b.data), name


def test_whole_delivers_a_held_signal_once_after_the_block_to_the_handler_in_place():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with interrupts.whole():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            assert seen == []  # held
        assert seen == [signal.SIGINT]
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored (a shell's background job): stays ignored
        with interrupts.whole():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN and seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(KeyboardInterrupt):  # Python's own Ctrl-C handler
        with interrupts.whole():
            signal.raise_signal(signal.SIGINT)
            done = True
    assert done


def test_outside_the_main_thread_nothing_is_changed():
    errors = []

    def body():
        try:
            with interrupts.whole(), interrupts.terminate_as_interrupt():
                pass
        except Exception as err:  # signal.signal raises ValueError outside the main thread
            errors.append(err)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert errors == []


def wait_for(condition, seconds, what, process=None):
    deadline = time.time() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}: "
                                 f"{process.stdout.read()[-2000:]}")
        if time.time() > deadline:
            raise AssertionError(f"gave up after {seconds} s waiting for {what}")
        time.sleep(0.1)


def alive(pid):
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


CLI = "import sys; from minifcn.cli import main; sys.exit(main())"
LONG = ["--model", "fcn8s", "--width", "0.0625", "--fc-width", "16", "--input-mode", "pad32", "--batch-size", "2",
        "--crop", "32", "--epochs", "100000"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to follow the processes")
def test_sigterm_stops_minifcn_train_with_a_checkpoint_and_its_folder_released(dataset, tmp_path):
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-c", CLI, "train", "--data", dataset, "--out", str(out), *LONG,
                            "--checkpoint-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (out / "checkpoint.npz").exists(), 120, "the first checkpoint", run)
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, output  # as Ctrl-C: KeyboardInterrupt's exit status
    step = state(str(out))["meta"]["step"]
    assert f"interrupted at step {step}; saved" in output
    assert not (out / ".minifcn.lock").exists()  # released as a clean end releases it


STAGES = """
import sys
from minifcn.experiment import run_stages, stage
from minifcn.train import TrainConfig
base = TrainConfig(data=sys.argv[1], out="", model="fcn8s", width=1 / 16, fc_width=16, input_mode="pad32",
                   batch_size=2, crop=32, epochs=100000, checkpoint_every=1)
run_stages([stage(base, sys.argv[2], "long")], jobs=2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to follow the processes")
def test_a_stage_worker_stops_with_a_checkpoint_when_its_parent_is_killed(dataset, tmp_path):
    folder, worker = tmp_path / "stages" / "long", None
    parent = subprocess.Popen([sys.executable, "-c", STAGES, dataset, str(tmp_path / "stages")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (folder / "checkpoint.npz").exists(), 120, "the worker's first checkpoint", parent)
        worker = json.loads((folder / ".minifcn.lock").read_text())["pid"]
        assert worker != parent.pid
        parent.kill()  # SIGKILL: the parent can do nothing about it
        output, _ = parent.communicate(timeout=60)  # the worker holds the pipe open until it ends
        wait_for(lambda: not alive(worker), 60, f"the worker (pid {worker}) to stop")
    finally:
        parent.kill()
        if worker is not None and alive(worker):  # a test that fails leaves nothing running
            os.kill(worker, signal.SIGKILL)
    step = state(str(folder))["meta"]["step"]
    assert f"interrupted at step {step}; saved" in output
    assert not (folder / ".minifcn.lock").exists()
