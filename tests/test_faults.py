"""Bad input and faults, as a careless or hostile user would cause them: a clear one-line error (exit 2)
or the right result, and nothing on disk lost or silently overwritten. CLI cases go through main()."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from helpers import Interrupt, run
from minifcn import functional as F
from minifcn.cli import main
from minifcn.data.voc import read_image
from minifcn.train import TrainConfig, TrainingDiverged, load_checkpoint, read_checkpoint, save_checkpoint, train

TINY = ["--width", "0.0625", "--fc-width", "16", "--input-mode", "pad32", "--batch-size", "2", "--crop", "32",
        "--checkpoint-every", "1"]


def snapshot(folder):
    """{relative path: sha1} of every file under ``folder``."""
    found = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            found[os.path.relpath(path, folder)] = hashlib.sha1(open(path, "rb").read()).hexdigest()
    return found


def train_args(data, out, *more):
    return ["train", "--data", data, "--out", out, *TINY, *more]


# --- settings that would train nothing -----------------------------------------------------------------

@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", -2, "batch-size must be an integer >= 1, got -2"),
    ("--batch-size", 0, "batch-size must be an integer >= 1, got 0"),
    ("--crop", 0, "crop must be an integer >= 1"),
    ("--epochs", 0, "epochs must be an integer >= 1, got 0"),
    ("--epochs", -3, "epochs must be an integer >= 1, got -3"),
    ("--accum-steps", 0, "accum-steps must be an integer >= 1"),
    ("--checkpoint-every", 0, "checkpoint-every must be an integer >= 1"),
    ("--lr", 0, "lr must be a finite number > 0, got 0.0"),
    ("--lr", -0.5, "lr must be a finite number > 0, got -0.5"),
])
def test_settings_that_train_nothing_are_refused_before_anything_is_written(data, tmp_path, capsys, flag, value,
                                                                              message):
    out = tmp_path / "run"
    code, err = run(capsys, *train_args(data, out, flag, value))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--learnable", "--freeze-body"])
def test_a_typo_in_a_boolean_is_an_error_not_false(data, tmp_path, capsys, flag):
    code, err = run(capsys, *train_args(data, tmp_path / "run", flag, "ture"))
    assert code == 2 and "expected true or false, got 'ture'" in err
    assert not (tmp_path / "run").exists()


def test_an_empty_train_list_is_refused(data, tmp_path, capsys):
    (data / "ImageSets" / "Segmentation" / "train.txt").write_text("")
    code, err = run(capsys, *train_args(data, tmp_path / "run"))
    assert code == 2 and "training split is empty" in err
    assert not (tmp_path / "run").exists()


def test_an_empty_val_list_is_refused_instead_of_scoring_nan(data, tmp_path, capsys):
    (data / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    code, err = run(capsys, *train_args(data, tmp_path / "run"))
    assert code == 2 and "validation split is empty" in err


def test_eval_on_an_empty_split_is_one_line(data, checkpoint, capsys):
    (data / "ImageSets" / "Segmentation" / "empty.txt").write_text("")
    code, err = run(capsys, "eval", "--checkpoint", checkpoint, "--data", data, "--split", "empty")
    assert code == 2 and "evaluation split is empty" in err


def test_an_unreadable_val_image_stops_the_run_before_the_first_step(data, tmp_path, capsys):
    val_id = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (data / "JPEGImages" / f"{val_id}.jpg").write_bytes(b"this is not a jpeg")
    code, err = run(capsys, *train_args(data, tmp_path / "run"))
    assert code == 2 and f"{val_id}.jpg" in err and "1 of 2 validation images" in err
    assert not (tmp_path / "run").exists()


def test_a_missing_train_label_is_named(data, tmp_path, capsys):
    train_id = (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    os.remove(data / "SegmentationClass" / f"{train_id}.png")
    code, err = run(capsys, *train_args(data, tmp_path / "run"))
    assert code == 2 and f"{train_id}.png" in err


def test_an_out_inside_a_file_fails_at_once(data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = run(capsys, *train_args(data, blocker / "run"))
    assert code == 2 and "is not a writable folder" in err


def test_a_read_only_out_fails_at_once(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes through permission bits: refuse as for anyone
        real_open = open

        def guarded(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and os.path.abspath(file).startswith(str(out)):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, mode, *args, **kwargs)
        monkeypatch.setattr("builtins.open", guarded)
    try:
        code, err = run(capsys, *train_args(data, out))
    finally:
        out.chmod(0o700)
    assert code == 2 and "is not a writable folder" in err and "Permission denied" in err
    assert os.listdir(out) == []


# --- never destroy a finished run -----------------------------------------------------------------------

def test_training_into_a_finished_run_needs_resume_or_overwrite(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *train_args(data, out, "--epochs", "1"))[0] == 0
    before = snapshot(out)
    code, err = run(capsys, *train_args(data, out, "--epochs", "1"))
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before
    assert run(capsys, *train_args(data, out, "--epochs", "1", "--overwrite"))[0] == 0
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [entry["epoch"] for entry in log] == [1]  # a new run: not appended to the old log


def test_resuming_with_another_optimizer_is_one_clear_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *train_args(data, out, "--epochs", "2"), "--optimizer", "sgd")[0] == 0
    code, err = run(capsys, *train_args(data, out, "--epochs", "3", "--optimizer", "adam", "--lr", "1e-3",
                                        "--resume"))
    assert code == 2 and "optimizer 'sgd' -> 'adam'" in err


def test_data_synth_refuses_an_existing_dataset(data, capsys):
    before = snapshot(data)
    code, err = run(capsys, "data", "synth", "--root", data, "--train", "3", "--val", "1", "--size", "32")
    assert code == 2 and "already holds a dataset" in err and "--force" in err
    assert snapshot(data) == before
    assert run(capsys, "data", "synth", "--root", data, "--train", "3", "--val", "1", "--size", "32", "--force")[0] == 0
    assert len((data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()) == 3


def test_init_from_a_net_of_another_width_fails_and_names_a_tensor(data, tmp_path, capsys):
    assert run(capsys, *train_args(data, tmp_path / "narrow", "--epochs", "1"))[0] == 0
    code, err = run(capsys, *train_args(data, tmp_path / "wide", "--width", "0.125", "--init",
                                        tmp_path / "narrow" / "checkpoint.npz"))
    assert code == 2 and "conv1_1.weight is (4, 3, 3, 3) there, (8, 3, 3, 3) here: another width?" in err


# --- interrupted validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch", [1, 3])  # 3 is the last: resuming must still validate it
def test_ctrl_c_during_validation_is_finished_on_resume(data, tmp_path, monkeypatch, epoch):
    import minifcn.train as trainer
    config = TrainConfig(data=str(data), out=str(tmp_path / "broken"), model="fcn8s", width=1 / 16, fc_width=16,
                         input_mode="pad32", batch_size=2, crop=32, epochs=3)
    straight = TrainConfig(**{**config.__dict__, "out": str(tmp_path / "straight")})
    train(straight, progress=False)
    monkeypatch.setattr(trainer, "evaluate", Interrupt(epoch, trainer.evaluate))
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    meta = read_checkpoint(os.path.join(config.out, "checkpoint.npz"))[1]["meta"]
    assert meta["pending"]["epoch"] == epoch and meta["step"] == 3 * epoch
    monkeypatch.undo()
    train(config, resume=True, progress=False)
    logs = [[json.loads(line) for line in open(os.path.join(c.out, "metrics.jsonl"))] for c in (config, straight)]
    assert [e["epoch"] for e in logs[0]] == [1, 2, 3] and logs[0] == logs[1]  # every epoch, validated, identical
    a, b = (read_checkpoint(os.path.join(c.out, "checkpoint.npz"))[1]["model"] for c in (config, straight))
    assert all(np.array_equal(a[k], b[k]) for k in a)



class KillAfterTheLogLine:
    """kill -9 at the worst moment: the epoch's line is in metrics.jsonl, the checkpoint saying so is not
    on disk yet. SystemExit passes the Ctrl-C handler by, so no checkpoint is written on the way out."""

    def __init__(self, real, half_line):
        self.real, self.half_line = real, half_line

    def __call__(self, path, config, model, optimizer, meta):
        if meta["metrics"] is not None and meta["pending"] is None:
            if self.half_line:  # died while appending the next line, too
                with open(os.path.join(os.path.dirname(path), "metrics.jsonl"), "a") as f:
                    f.write('{"epoch": 2, "st')
            raise SystemExit(137)
        return self.real(path, config, model, optimizer, meta)


@pytest.mark.parametrize("half_line", [False, True])
def test_a_kill_between_the_log_line_and_its_checkpoint_leaves_one_line_per_epoch(data, tmp_path, monkeypatch,
                                                                                  half_line):
    import minifcn.train as trainer
    config = TrainConfig(data=str(data), out=str(tmp_path / "broken"), model="fcn8s", width=1 / 16, fc_width=16,
                         input_mode="pad32", batch_size=2, crop=32, epochs=2, val_every=0, checkpoint_every=1)
    straight = TrainConfig(**{**config.__dict__, "out": str(tmp_path / "straight")})
    train(straight, progress=False)
    monkeypatch.setattr(trainer, "save_checkpoint", KillAfterTheLogLine(trainer.save_checkpoint, half_line))
    with pytest.raises(SystemExit):
        train(config, progress=False)
    assert open(os.path.join(config.out, "metrics.jsonl")).read().count("\n") == 1  # epoch 1 logged, not saved
    monkeypatch.undo()
    train(config, resume=True, progress=False)
    logs = [open(os.path.join(c.out, "metrics.jsonl")).read() for c in (config, straight)]
    assert logs[0] == logs[1] and [json.loads(line)["epoch"] for line in logs[0].splitlines()] == [1, 2]

# --- divergence and damaged checkpoints ----------------------------------------------------------------------

def test_divergence_with_no_checkpoint_says_so(data, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run(capsys, *train_args(data, out, "--lr", "1e6", "--epochs", "2"))
    assert code == 2 and "no checkpoint was written" in err and "last good" not in err
    assert not (out / "checkpoint.npz").exists()


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(b""), "not a minifcn checkpoint"),
    (lambda p: (np.savez(p, x=np.zeros(100)), p.write_bytes(p.read_bytes()[:200])), "not a minifcn checkpoint"),
    (lambda p: p.write_bytes(os.urandom(4096)), "not a minifcn checkpoint (not a .npz archive)"),
    (lambda p: np.savez(p, x=np.zeros(3)), "no config or meta record"),
    (lambda p: np.savez(p, config=np.array(json.dumps({"data": "", "nonsense": 1})), meta=np.array("{}")),
     "unknown settings ['nonsense']"),
])
def test_eval_on_a_damaged_checkpoint_is_one_line_naming_the_file(data, tmp_path, capsys, damage, why):
    path = tmp_path / "checkpoint.npz"
    damage(path)
    code, err = run(capsys, "eval", "--checkpoint", path, "--data", data)
    assert code == 2 and str(path) in err and why in err and "Traceback" not in err


def test_a_checkpoint_with_nan_weights_is_refused_by_eval(data, tmp_path, capsys):
    config = TrainConfig(data=str(data), out=str(tmp_path), width=1 / 16, fc_width=16, input_mode="pad32")
    from minifcn import models
    model = models.build("fcn8s", **config.model_config())
    model.conv1_1.weight.data[0, 0, 0, 0] = np.nan
    path = os.path.join(tmp_path, "nan.npz")
    save_checkpoint(path, config, model)
    code, err = run(capsys, "eval", "--checkpoint", path)
    assert code == 2 and "non-finite weights (conv1_1.weight)" in err


def test_tracebacks_only_when_asked(data, tmp_path, capsys, monkeypatch):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a minifcn checkpoint"):
        main(["--debug", "eval", "--checkpoint", str(path)])
    monkeypatch.setenv("MINIFCN_DEBUG", "1")
    with pytest.raises(ValueError):
        main(["eval", "--checkpoint", str(path)])


# --- predict --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    config = TrainConfig(data=dataset, out=str(out), width=1 / 16, fc_width=16, input_mode="pad32", batch_size=2,
                         crop=32, epochs=1)
    train(config, progress=False)
    return os.path.join(out, "checkpoint.npz")


def test_predict_never_writes_two_inputs_to_one_name(dataset, checkpoint, tmp_path, capsys):
    image = os.path.join(dataset, "JPEGImages", "synth_00000.jpg")
    for folder in ("a", "b"):
        os.makedirs(tmp_path / folder)
        shutil.copy(image, tmp_path / folder / "x.jpg")
    code, err = run(capsys, "predict", tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", "--checkpoint", checkpoint,
                    "-o", tmp_path / "out")
    assert code == 2 and "would both be written as x_mask.png" in err
    assert not (tmp_path / "out").exists()


def test_predict_into_a_file_is_one_line(dataset, checkpoint, tmp_path, capsys):
    (tmp_path / "taken").write_text("keep me")
    code, err = run(capsys, "predict", os.path.join(dataset, "JPEGImages", "synth_00000.jpg"), "--checkpoint",
                    checkpoint, "-o", tmp_path / "taken")
    assert code == 2 and "is a file" in err and (tmp_path / "taken").read_text() == "keep me"


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    assert image[..., 0].tolist() == [[0, 1, 128], [255, 4, 233]]


# --- the library ------------------------------------------------------------------------------------------------

def test_integer_logits_are_refused():
    with pytest.raises(ValueError, match="logits must be floating point, got dtype int32"):
        F.softmax_cross_entropy(np.ones((1, 3, 2, 2), np.int32), np.zeros((1, 2, 2), int))


@pytest.mark.parametrize("bad", [2.7, "2", (1, 2, 3), True])
def test_non_integer_strides_are_refused(bad):
    with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
        F.conv2d(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), stride=bad)


def test_a_backend_names_the_op_and_dtype_it_cannot_take():
    pytest.importorskip("numba")
    import minifcn
    previous = minifcn.get_backend()
    minifcn.set_backend("numba")
    try:
        with pytest.raises(TypeError, match="conv2d: the numba backend computes in float32 or float64, not float16"):
            F.conv2d(np.ones((1, 2, 5, 5), np.float16), np.ones((3, 2, 3, 3), np.float16))
    finally:
        minifcn.set_backend(previous)


# --- Ctrl-C and kill -9, through the command line, resume bit for bit -------------------------------------------

def _train_command(data, out):
    return [sys.executable, "-m", "minifcn.cli", "train", "--data", str(data), "--out", str(out), *TINY,
            "--epochs", "20", "--resume"]


def _ctrl_c_as_in_a_terminal():
    """A shell starts its background jobs with SIGINT ignored, and Python then installs no Ctrl-C handler;
    a user's run in a terminal has one. (Runs in the child, before it starts Python.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_signal_mid_run_then_resume_equals_a_run_that_never_stopped(data, tmp_path, sig):
    env = {**os.environ, "MINIFCN_BACKEND": "numpy"}  # no compile time: the signal lands mid-training
    subprocess.run(_train_command(data, tmp_path / "straight"), check=True, env=env, capture_output=True)
    process = subprocess.Popen(_train_command(data, tmp_path / "broken"), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, preexec_fn=_ctrl_c_as_in_a_terminal)
    ckpt = tmp_path / "broken" / "checkpoint.npz"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:  # wait for a checkpoint past step 2, then strike
        try:
            if read_checkpoint(str(ckpt))[1]["meta"]["step"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    process.send_signal(sig)
    code = process.wait(timeout=60)
    assert code in ((130, 1) if sig == signal.SIGINT else (-signal.SIGKILL,)), process.stderr.read()
    step = read_checkpoint(str(ckpt))[1]["meta"]["step"]
    subprocess.run(_train_command(data, tmp_path / "broken"), check=True, env=env, capture_output=True)
    a, b = (load_checkpoint(str(tmp_path / name / "checkpoint.npz"))[2] for name in ("straight", "broken"))
    assert a["meta"]["step"] == b["meta"]["step"] == 60 and step < 60
    assert all(np.array_equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(np.array_equal(a["optim"][k], b["optim"][k]) for k in a["optim"])
    logs = [open(tmp_path / name / "metrics.jsonl").read() for name in ("straight", "broken")]
    assert logs[0] == logs[1]


def test_train_diverged_is_a_runtime_error_for_library_users():
    assert issubclass(TrainingDiverged, RuntimeError)


def test_resuming_with_another_seed_is_refused_rather_than_mixing_two_runs(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *train_args(data, out, "--epochs", "1", "--seed", "1"))[0] == 0
    before = (out / "metrics.jsonl").read_text()
    code, err = run(capsys, *train_args(data, out, "--epochs", "2", "--seed", "2", "--resume"))
    assert code == 2 and "seed 1 -> 2" in err and (out / "metrics.jsonl").read_text() == before
