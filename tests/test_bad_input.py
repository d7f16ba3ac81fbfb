"""Bad input, round two: each case a clear one-line error naming the bad input (exit 2), or the right
behaviour, and nothing written that should not be."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minifcn import Tensor
from minifcn import functional as F
from minifcn.checkpoint import save_checkpoint
from minifcn.cli import main, parser
from minifcn.data import VOCSegmentation, synthesize
from minifcn.data.voc import read_image
from minifcn.models import FCN8s
from minifcn.train import TrainConfig, train

TINY = dict(width=1 / 16, fc_width=16, input_mode="pad32", batch_size=2, crop=32, epochs=1)


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    train(TrainConfig(data=dataset, out=str(out), **TINY), progress=False)
    return os.path.join(out, "checkpoint.npz")


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def one_line(err):
    return len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("subset", ["-1", "0", "2.5", "all"])
def test_eval_subset_must_be_a_positive_integer(checkpoint, subset, capsys):
    code, err, _ = run(capsys, "eval", "--checkpoint", checkpoint, "--subset", subset)
    assert code == 2 and f"expected a whole number >= 1, got {subset!r}" in err


@pytest.mark.parametrize("size", [["-5", "10"], ["10", "0"]])
def test_summary_refuses_a_size_that_is_not_positive(size, capsys):
    code, err, out = run(capsys, "summary", "--size", *size)
    assert code == 2 and "expected a whole number >= 1" in err and out == ""


@pytest.mark.parametrize("weight", [[-1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [np.nan, 1.0, 1.0], [np.inf, 1.0, 1.0]])
def test_class_weights_that_would_train_nothing_are_refused(weight):
    logits = Tensor(np.random.default_rng(0).standard_normal((1, 3, 2, 2)).astype(np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="class weights must be finite, >= 0 and not all 0"):
        F.softmax_cross_entropy(logits, np.zeros((1, 2, 2), np.int64), weight=np.array(weight, np.float32))


def test_an_empty_batch_has_a_clear_error_not_a_reshape_failure():
    with pytest.raises(ValueError, match=r"an empty batch \(logits of shape \(0, 3, 4, 4\)\) has no loss"):
        F.softmax_cross_entropy(Tensor(np.zeros((0, 3, 4, 4), np.float32)), np.zeros((0, 4, 4), np.int64))


@pytest.mark.parametrize("dtype", [object, np.complex64, "U3"])
def test_a_tensor_of_non_real_numbers_is_refused_naming_the_dtype(dtype):
    with pytest.raises(TypeError, match=f"not {np.dtype(dtype)}"):
        Tensor(np.zeros((1, 3, 4, 4), dtype))


def test_a_picture_too_large_to_predict_is_refused_before_decoding(checkpoint, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000)).save(big)
    code, err, _ = run(capsys, "predict", big, "--checkpoint", checkpoint, "-o", tmp_path / "out",
                       "--max-pixels", 1_000_000)
    assert code == 2 and one_line(err) and str(big) in err and "1200x1000 is more than 1,000,000 pixels" in err
    assert not os.listdir(tmp_path / "out") if (tmp_path / "out").exists() else True


def test_a_decompression_bomb_is_named(tmp_path, monkeypatch, capsys, checkpoint):
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (300, 300)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow refuses twice this: 300 x 300 is a bomb now
    with pytest.raises(ValueError, match=f"cannot read image {bomb}: .*decompression bomb"):
        read_image(bomb)
    code, err, _ = run(capsys, "predict", bomb, "--checkpoint", checkpoint, "-o", tmp_path / "out")
    assert code == 2 and one_line(err) and str(bomb) in err


def _cli(args, **env):
    return subprocess.run([sys.executable, "-m", "minifcn.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("variable, value, message", [
    ("MINIFCN_BACKEND", "nonsense", "MINIFCN_BACKEND='nonsense': unknown backend"),
    ("MINIFCN_WORKSPACE_MB", "abc", "MINIFCN_WORKSPACE_MB='abc' must be a whole number of MiB >= 1"),
    ("MINIFCN_WORKSPACE_MB", "0", "MINIFCN_WORKSPACE_MB='0' must be a whole number of MiB >= 1"),
    ("MINIFCN_DEBUG", "maybe", "MINIFCN_DEBUG='maybe' must be 1/true/yes/on or 0/false/no/off"),
])
def test_a_bad_environment_is_one_line_and_never_breaks_help(variable, value, message):
    assert _cli(["--help"], **{variable: value}).returncode == 0
    assert _cli(["summary", "--help"], **{variable: value}).returncode == 0
    done = _cli(["summary", "--width", "0.125"], **{variable: value})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"minifcn: error: {message}" or \
        (message in done.stderr and "Traceback" not in done.stderr and
         done.stderr.strip().splitlines()[-1].startswith("minifcn: error: "))


def test_minifcn_debug_false_means_false(tmp_path):
    done = _cli(["eval", "--checkpoint", str(tmp_path / "missing.npz")], MINIFCN_DEBUG="false")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "not found" in done.stderr
    done = _cli(["eval", "--checkpoint", str(tmp_path / "missing.npz")], MINIFCN_DEBUG="true")
    assert "Traceback" in done.stderr


def test_importing_minifcn_with_a_bad_environment_warns_and_uses_the_default():
    code = "import minifcn; print(minifcn.get_backend(), minifcn.workspace_limit())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MINIFCN_BACKEND": "nonsense", "MINIFCN_WORKSPACE_MB": "0"})
    assert done.returncode == 0 and done.stdout.split()[1] == str(128 << 20)
    assert "RuntimeWarning: MINIFCN_WORKSPACE_MB='0'" in done.stderr and "MINIFCN_BACKEND='nonsense'" in done.stderr


def _write_list(data, split, raw):
    (data / "ImageSets" / "Segmentation" / f"{split}.txt").write_bytes(raw)


def test_ids_are_whole_lines_with_spaces_and_the_bom_dropped(data):
    first = (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    for folder, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
        shutil.copy(data / folder / f"{first}.{ext}", data / folder / f"my photo 1.{ext}")
    _write_list(data, "spaced", "\ufeff".encode() + f"{first}\r\n  my photo 1  \n\n".encode())
    ds = VOCSegmentation(data, "spaced")
    assert ds.ids == [first, "my photo 1"]
    assert ds[1][0].shape == (32, 32, 3)


def test_a_list_that_is_not_utf8_names_the_file_and_line(data):
    _write_list(data, "latin", "synth_00000\ncaf\xe9\n".encode("latin-1"))
    path = data / "ImageSets" / "Segmentation" / "latin.txt"
    with pytest.raises(ValueError, match=f"split list {path}, line 2: not UTF-8 text"):
        VOCSegmentation(data, "latin")


def test_eval_of_a_checkpoint_with_other_classes_says_so(data, tmp_path, capsys):
    config = TrainConfig(data=str(data), out=str(tmp_path), num_classes=5, **TINY)
    path = str(tmp_path / "five.npz")
    save_checkpoint(path, config, FCN8s(**config.model_config()), meta={"step": 0})
    code, err, _ = run(capsys, "eval", "--checkpoint", path)
    assert code == 2 and one_line(err) and f"{path} scores 5 classes but {data} has 21" in err


def test_plot_skips_a_half_written_last_line_with_a_warning(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "step": 4, "loss": 2.0, "mean_iu": 0.1}\n'
                                           '{"epoch": 2, "step": 8, "loss": 1.5, "mean_iu": 0.2}\n{"epoch": 3, "st')
    code, err, out = run(capsys, "plot", run_dir)
    assert code == 0 and (run_dir / "curves.png").exists()
    assert "half-written last line" in err and "metrics.jsonl, line 3" in err
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "step": 4, "loss": 2.0}\nnot json\n{"epoch": 3}\n')
    code, err, _ = run(capsys, "plot", run_dir)
    assert code == 2 and "metrics.jsonl, line 2 is not an epoch record" in err


def test_predict_with_a_classifier_says_what_to_do_with_it(dataset, tmp_path, capsys):
    from minifcn.config import PretrainConfig
    from minifcn.pretrain import pretrain
    config = PretrainConfig(data=dataset, out=str(tmp_path / "cls"), width=1 / 16, fc_width=8, crop=32,
                            epochs=1, batch_size=4, crops_per_image=1)
    pretrain(config, progress=False, log=lambda *a: None)
    path = os.path.join(config.out, "classifier.npz")
    image = os.path.join(dataset, "JPEGImages", "synth_00000.jpg")
    code, err, _ = run(capsys, "predict", image, "--checkpoint", path, "-o", tmp_path / "out")
    assert code == 2 and one_line(err)
    assert f"{path} is a classifier from 'minifcn pretrain', not an FCN" in err and "--init" in err
    assert "--fc6-kernel 1" in err


@pytest.mark.parametrize("args, message", [
    (["--size", "0"], "--size: expected a whole number >= 1, got '0'"),
    (["--size", "-3"], "--size: expected a whole number >= 1, got '-3'"),
    (["--train", "-5"], "--train: expected a whole number >= 1, got '-5'"),
    (["--train", "0"], "--train: expected a whole number >= 1, got '0'"),
    (["--val", "-1"], "--val: expected a whole number >= 1, got '-1'"),
])
def test_data_synth_with_bad_sizes_writes_nothing(tmp_path, capsys, args, message):
    code, err, _ = run(capsys, "data", "synth", "--root", tmp_path / "d", *args)
    assert code == 2 and message in err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("size", [0, -3, 4])
def test_synthesize_checks_its_sizes_before_writing(tmp_path, size):
    with pytest.raises(ValueError, match=f"size must be an integer >= 8, got {size}"):
        synthesize(str(tmp_path / "d"), 2, 1, size, progress=False)
    assert not (tmp_path / "d").exists()


def test_every_option_says_what_it_does():
    vague = []

    def walk(p, where):
        for action in p._actions:
            if action.dest == "help":
                continue
            if action.choices and isinstance(action.choices, dict):  # sub-commands
                for name, sub in action.choices.items():
                    walk(sub, f"{where} {name}")
                continue
            text = (action.help or "").strip()
            if not text or text.startswith("(default"):
                vague.append(f"{where} {'/'.join(action.option_strings) or action.dest}")

    walk(parser(), "minifcn")
    assert vague == []
