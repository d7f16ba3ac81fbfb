"""One writer per run folder, and files that are whole or absent: the lock on --out, temporary names of
each writer's own, and what a full disk or a kill mid-write leaves behind."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import forge
from helpers import run
from minifcn import atomic, runlock
from minifcn.checkpoint import read_checkpoint, save_checkpoint
from minifcn.cli import main
from minifcn.models import FCN32s
from minifcn.train import TrainConfig

TINY = ["--width", "0.0625", "--fc-width", "16", "--input-mode", "pad32", "--batch-size", "2", "--crop", "32"]


HOLDER = ("import sys\nfrom minifcn import runlock\nwith runlock.hold(sys.argv[1]):\n"
          "    print('held', flush=True)\n    sys.stdin.read()\n")


def test_a_second_run_into_a_held_folder_is_refused_naming_folder_and_holder(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, err = run(capsys, "train", "--data", dataset, "--out", out, *TINY, "--epochs", "1")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"{out} is in use by another run (pid {holder.pid} on " in err
        assert sorted(os.listdir(out)) == [".minifcn.lock", "notes.txt"]  # nothing of the refused run's
        code, err = run(capsys, "demo", "--out", out, "--train", "2", "--val", "1", "--epochs", "1")
        assert code == 2 and "in use by another run" in err and sorted(os.listdir(out)) == [".minifcn.lock",
                                                                                             "notes.txt"]
    finally:
        holder.communicate("", timeout=60)
    code, err = run(capsys, "train", "--data", dataset, "--out", out, *TINY, "--epochs", "1")  # released
    assert code == 0, err
    assert not (out / ".minifcn.lock").exists()  # released cleanly: no lock file left


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    with runlock.hold(str(tmp_path)):
        with runlock.hold(str(tmp_path)):
            pass
        assert str(os.getpid()) in (tmp_path / ".minifcn.lock").read_text()  # still held by the outer block
    assert not (tmp_path / ".minifcn.lock").exists()


def test_two_runs_started_together_never_share_a_folder(dataset, tmp_path):
    out = tmp_path / "run"
    commands = [[sys.executable, "-m", "minifcn.cli", "train", "--data", dataset, "--out", str(out), *TINY,
                 "--epochs", "20", "--seed", str(seed), "--resume"] for seed in (1, 2)]  # long enough to overlap
    env = {**os.environ, "MINIFCN_BACKEND": "numpy"}
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is in use by another run" in refused and str(out) in refused
    winner = [seed for (code, _), seed in zip(results, (1, 2)) if code == 0][0]
    assert read_checkpoint(str(out / "checkpoint.npz"))[0].seed == winner
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 21))  # one run's epochs, once each


def test_a_lock_left_by_a_killed_run_is_taken_over_and_said(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = {"pid": 999999999, "host": "elsewhere", "started": "yesterday", "command": "minifcn train"}
    (out / ".minifcn.lock").write_text(json.dumps(dead))  # non-empty, but nobody holds the flock
    lines = []
    with runlock.hold(str(out), log=lines.append):
        pass
    assert len(lines) == 1 and "pid 999999999 on elsewhere" in lines[0] and "ended without releasing" in lines[0]


def test_temporary_names_are_unique_to_the_writer(tmp_path):
    path = str(tmp_path / "checkpoint.npz")
    names = {atomic.temporary_name(path) for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(f"{path}.tmp-{os.getpid()}-") and n.endswith(".npz") for n in names)


def _small_model():
    return FCN32s(num_classes=3, width=1 / 64, fc_width=4, input_mode="pad32")


def _config(tmp_path):
    return TrainConfig(data="d", out=str(tmp_path), model="fcn32s", num_classes=3, width=1 / 64, fc_width=4,
                       input_mode="pad32")


def test_a_full_disk_keeps_the_last_checkpoint_and_removes_the_partial_file(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, _config(tmp_path), _small_model(), meta={"step": 1})
    before = open(path, "rb").read()
    real = np.savez

    def full_disk(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match=rf"could not write {path} \(No space left on device\); the previous "
                                      r"checkpoint.npz is intact"):
        save_checkpoint(path, _config(tmp_path), _small_model(), meta={"step": 2})
    monkeypatch.setattr(np, "savez", real)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # no partial file left


def _fcn_pth(path, num_classes=3, poison=None):
    state = {k: v for k, v in FCN32s(num_classes=num_classes, width=1 / 64, fc_width=4).state_dict().items()}
    if poison:
        state[poison] = state[poison].copy()
        state[poison].flat[0] = np.nan
    return forge.state_dict_file(path, state)


def test_weights_import_removes_what_a_killed_import_left_and_says_so(tmp_path, capsys):
    pth, out = _fcn_pth(tmp_path / "fcn.pth"), tmp_path / "imported.npz"
    leftover = tmp_path / "imported.npz.tmp-999999999-0badf00d.npz"  # the writer is long gone
    leftover.write_bytes(b"PK\x03\x04 a killed import")
    running = tmp_path / f"imported.npz.tmp-{os.getpid()}-12345678.npz"  # a live writer's: left alone
    running.write_bytes(b"in progress")
    assert main(["weights", "import", str(pth), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "removed 1 partial file left by a run that was stopped mid-write: " + leftover.name in said
    assert not leftover.exists() and running.exists() and out.exists()


def test_weights_import_refuses_non_finite_weights_naming_the_tensor(tmp_path, capsys):
    pth, out = _fcn_pth(tmp_path / "nan.pth", poison="fc7.weight"), tmp_path / "imported.npz"
    code, err = run(capsys, "weights", "import", pth, "--out", out)
    assert code == 2 and "tensor fc7.weight holds NaN or infinite values" in err and "nothing was written" in err
    assert not out.exists()


def test_a_killed_writer_never_leaves_a_truncated_image_under_its_final_name(tmp_path, monkeypatch):
    from PIL import Image

    from minifcn.viz import save_png
    target = tmp_path / "x_overlay.png"

    def killed(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_png(str(target), np.zeros((4, 4, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def _synth_under_a_file_size_limit(root, limit):
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "minifcn.cli", "data", "synth", "--root", str(root), "--train", "3",
                           "--val", "1", "--size", "64"], preexec_fn=limited, capture_output=True, text=True,
                          timeout=120)


def test_data_synth_on_a_full_disk_fails_naming_the_file(tmp_path):
    done = _synth_under_a_file_size_limit(tmp_path / "data", 1500)  # a 64-px JPEG is about 4 KB
    assert done.returncode == 2, done.stderr
    assert "minifcn: error: could not write " in done.stderr and ".jpg" in done.stderr
    assert "wrote a VOC-format dataset" not in done.stdout
    jpegs = [f for f in os.listdir(tmp_path / "data" / "JPEGImages")]
    assert jpegs == []  # no truncated JPEG under a final name
    assert _synth_under_a_file_size_limit(tmp_path / "roomy", 1 << 30).returncode == 0  # the test can pass


def test_train_resume_with_overwrite_is_refused(dataset, tmp_path, capsys):
    code, err = run(capsys, "train", "--data", dataset, "--out", tmp_path / "run", *TINY, "--resume", "--overwrite")
    assert code == 2 and "give one of them" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["synth", "predict"])
def test_data_synth_and_predict_hold_their_folder_too(tmp_path, capsys, command):
    folder = tmp_path / "folder"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        if command == "synth":
            argv = ["data", "synth", "--root", folder, "--train", "2", "--val", "1", "--size", "32"]
        else:
            ckpt = str(tmp_path / "c.npz")
            save_checkpoint(ckpt, _config(tmp_path), _small_model(), meta={"step": 0})
            image = tmp_path / "x.png"
            from PIL import Image
            Image.new("RGB", (32, 32)).save(image)
            argv = ["predict", image, "--checkpoint", ckpt, "-o", folder]
        code, err = run(capsys, *argv)
        assert code == 2 and f"{folder} is in use by another run (pid {holder.pid}" in err
        assert os.listdir(folder) == [".minifcn.lock"]
    finally:
        holder.communicate("", timeout=60)
