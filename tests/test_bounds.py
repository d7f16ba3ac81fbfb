"""What a file from a stranger may ask for: a checkpoint's settings are checked against its arrays before
any model is built, record sizes against their headers before anything is read, and settings made on
the command line are bounded too (a width of 1e6 or inf, 300 classes)."""

import io
import json
import os
import zipfile

import numpy as np
import pytest

from minifcn import models
from minifcn.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from minifcn.cli import main
from minifcn.config import PretrainConfig, TrainConfig
from minifcn.models import FCN8s
from minifcn.models.shapes import model_shapes
from minifcn.models.vgg import VGGClassifier


def small(tmp_path, **changes):
    config = TrainConfig(data="d", out=str(tmp_path), width=1 / 16, fc_width=16, input_mode="pad32", **changes)
    return config, models.build(config.model, **config.model_config())


def rewrite(path, **records):
    """The same .npz with some records replaced (each as np.save would write it)."""
    with zipfile.ZipFile(path) as z:
        content = {n: z.read(n) for n in z.namelist()}
    for name, value in records.items():
        buffer = io.BytesIO()
        np.save(buffer, value)
        content[f"{name}.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in content.items():
            z.writestr(name, data)


@pytest.fixture
def checkpoint(tmp_path):
    config, model = small(tmp_path)
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, config, model, meta={"step": 0})
    return path, config


@pytest.fixture
def no_model_may_be_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built from unchecked settings")
    monkeypatch.setattr(models, "build", refuse)
    monkeypatch.setattr(FCN8s, "__init__", refuse)


@pytest.mark.parametrize("width", [1e6, 2.0, 0.25])
def test_settings_that_disagree_with_the_arrays_are_refused_before_a_model_is_built(checkpoint, width, capsys,
                                                                                    no_model_may_be_built):
    path, config = checkpoint
    settings = json.loads(json.dumps({**config.__dict__, "width": width}))
    rewrite(path, config=np.array(json.dumps(settings)))
    assert os.path.getsize(path) < 1_000_000
    with pytest.raises(CheckpointError, match="its arrays do not match its settings: conv1_1.weight is "
                                              r"\(4, 3, 3, 3\) where the settings make|invalid"):
        read_checkpoint(path)
    assert main(["eval", "--checkpoint", path]) == 2
    err = capsys.readouterr().err
    assert path in err and len(err.strip().splitlines()) == 1


def test_a_header_that_claims_more_than_its_record_holds_is_refused(checkpoint, no_model_may_be_built):
    path, _ = checkpoint
    with zipfile.ZipFile(path) as z:
        content = {n: z.read(n) for n in z.namelist()}
    name = "model/fc7.weight.npy"
    head = np.lib.format.header_data_from_array_1_0(np.zeros((16, 16, 1, 1), np.float32))
    head["shape"] = (1 << 17, 1 << 17)  # 64 GB of float32 claimed; 1 KB there
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, head)
    content[name] = buffer.getvalue() + content[name][len(buffer.getvalue()):]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in content.items():
            z.writestr(n, data)
    with pytest.raises(CheckpointError, match=r"array model/fc7.weight claims \(131072, 131072\) of float32, "
                                              "more than its record holds"):
        read_checkpoint(path)


def test_a_compressed_record_is_refused(checkpoint):
    path, _ = checkpoint
    with zipfile.ZipFile(path) as z:
        content = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, data in content.items():
            z.writestr(n, data)
    with pytest.raises(CheckpointError, match="is compressed"):
        read_checkpoint(path)


def test_a_checkpoint_that_agrees_with_itself_still_loads(checkpoint):
    path, config = checkpoint
    assert read_checkpoint(path)[0] == config


@pytest.mark.parametrize("model", ["fcn32s", "fcn16s", "fcn8s", "pixelwise"])
@pytest.mark.parametrize("width, fc, k", [(1 / 16, 16, 7), (0.3, 24, 3), (1 / 64, 4, 1)])
def test_the_shapes_by_arithmetic_are_the_shapes_of_the_built_model(model, width, fc, k):
    config = dict(num_classes=5, width=width, fc_width=fc, fc6_kernel=k, input_mode="pad32")
    built = {n: p.shape for n, p in models.build(model, **config).named_parameters()}
    expected = model_shapes(model, **config)
    assert expected and all(built[n] == s for n, s in expected.items())


@pytest.mark.parametrize("crop", [32, 96, 160])
def test_the_classifier_shapes_by_arithmetic_are_the_built_ones(tmp_path, crop):
    from minifcn.checkpoint import expected_shapes
    config = PretrainConfig(data="d", width=1 / 16, fc_width=8, crop=crop, num_classes=4)
    built = {n: p.shape for n, p in VGGClassifier(4, 1 / 16, 8, crop).named_parameters()}
    assert all(built[n] == s for n, s in expected_shapes(config).items())


@pytest.mark.parametrize("change, message", [
    (dict(width=float("inf")), "width must be a finite number > 0"),
    (dict(width=float("nan")), "width must be a finite number > 0"),
    (dict(width=3.0, fc_width=4096), "more than the 268,435,456 minifcn builds"),
    (dict(num_classes=300), "num-classes must be at most 255"),
    (dict(image_size=100_000), "image-size must be at most 4096"),
    (dict(momentum=float("nan")), "momentum"),
    (dict(scale=(1.0, float("inf"))), "scale must be a pair 0 < low <= high"),
])
def test_settings_are_bounded_when_made(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d", **change)


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "d", "--width", "inf"], "width must be a finite number > 0, got inf"),
    (["train", "--data", "d", "--width", "nan"], "width must be a finite number > 0, got nan"),
    (["train", "--data", "d", "--num-classes", "300"], "num-classes must be at most 255"),
    (["summary", "--num-classes", "300"], "--num-classes must be at most 255"),
])
def test_bounded_settings_on_the_command_line_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_predict_never_wraps_class_256_into_background():
    from minifcn.train import predict
    model = FCN8s(num_classes=300, width=1 / 64, fc_width=4, input_mode="pad32")
    with pytest.raises(ValueError, match="scores 300 classes; label maps hold at most 255"):
        predict(model, np.zeros((32, 32, 3), np.uint8))


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--data", "d", "--crops-per-image", "1000000000"], "crops-per-image must be at most 256"),
    (["pretrain", "--data", "d", "--batch-size", "1000000000"], "batch-size must be at most 4096"),
    (["train", "--data", "d", "--batch-size", "1000000000"], "batch-size must be at most 4096 images"),
])
def test_settings_that_would_hold_unbounded_crops_are_refused(argv, message, capsys):
    assert main(argv) == 2 and message in capsys.readouterr().err


def test_data_synth_refuses_an_image_side_that_would_not_fit_in_memory(tmp_path, capsys):
    assert main(["data", "synth", "--root", str(tmp_path / "d"), "--size", "100000"]) == 2
    assert "size must be at most 4096 pixels" in capsys.readouterr().err
    assert not (tmp_path / "d" / "JPEGImages").exists()
