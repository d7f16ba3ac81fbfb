import dataclasses
import json
import os

import numpy as np
import pytest

from minifcn import Tensor
from minifcn.cli import main
from minifcn.data import synthesize
from minifcn.train import TrainConfig, TrainingDiverged, learning_rate, load_checkpoint, make_optimizer, train

SMALL = dict(model="fcn8s", width=1 / 16, fc_width=32, input_mode="pad32", batch_size=2, epochs=2,
             checkpoint_every=1, crop=32, scale=(0.8, 1.2))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(str(tmp_path_factory.mktemp("synth")), 6, 2, 32, progress=False)


def weights(path):
    return load_checkpoint(path)[2]


@pytest.mark.parametrize("optimizer", [dict(), dict(optimizer="adam", lr=1e-3, warmup_steps=3)])
def test_interrupted_and_resumed_equals_uninterrupted(data, tmp_path, optimizer):
    straight = TrainConfig(data=data, out=str(tmp_path / "a"), **SMALL, **optimizer)
    train(straight, progress=False)
    broken = TrainConfig(data=data, out=str(tmp_path / "b"), **SMALL, **optimizer)
    train(broken, max_steps=4, progress=False)  # stops mid-epoch 2 of 2 (3 steps an epoch)
    assert weights(os.path.join(broken.out, "checkpoint.npz"))["meta"]["step"] == 4
    train(broken, resume=True, progress=False)
    a, b = weights(os.path.join(straight.out, "checkpoint.npz")), weights(os.path.join(broken.out, "checkpoint.npz"))
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert np.array_equal(a["model"][key], b["model"][key]), key
    for key in a["optim"]:
        assert np.array_equal(a["optim"][key], b["optim"][key]), key
    log = [json.loads(line) for line in open(os.path.join(broken.out, "metrics.jsonl"))]
    assert [entry["epoch"] for entry in log] == [1, 2] and 0 <= log[-1]["mean_iu"] <= 1


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_learning_rate_warms_up_linearly_then_follows_the_policy():
    config = TrainConfig(data="", lr=0.1, warmup_steps=4, lr_policy="fixed")
    assert [learning_rate(config, s, 100) for s in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    poly = TrainConfig(data="", lr=0.1, warmup_steps=0)
    assert learning_rate(poly, 50, 100) == pytest.approx(0.1 * 0.5 ** 0.9)
    with pytest.raises(ValueError, match="optimizer must be"):
        make_optimizer(TrainConfig(data="", optimizer="rmsprop"), None)


def test_divergence_before_any_good_checkpoint_writes_none(data, tmp_path):
    config = TrainConfig(data=data, out=str(tmp_path / "nan"), **{**SMALL, "lr": 1e30})
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        train(config, progress=False)
    assert not os.path.exists(os.path.join(config.out, "checkpoint.npz"))


def test_divergence_keeps_the_last_good_checkpoint_and_names_it(data, tmp_path):
    """A checkpoint is written only after a forward pass with its weights came out finite."""
    good = TrainConfig(data=data, out=str(tmp_path / "run"), **SMALL)
    train(good, progress=False, max_steps=2)
    path = os.path.join(good.out, "checkpoint.npz")
    with pytest.raises(TrainingDiverged, match=f"last good checkpoint {path} \\(step 2\\) is kept"):
        train(dataclasses.replace(good, lr=1e30), resume=True, progress=False)
    config, model, state = load_checkpoint(path)
    assert state["meta"]["step"] == 2
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert np.isfinite(model(Tensor(x)).data).all()


def test_staged_init_copies_matching_weights(data, tmp_path):
    first = TrainConfig(data=data, out=str(tmp_path / "s32"), **{**SMALL, "model": "fcn32s", "epochs": 1})
    m32, _ = train(first, progress=False)
    second = TrainConfig(data=data, out=str(tmp_path / "s16"),
                         **{**SMALL, "model": "fcn16s", "epochs": 1, "init": os.path.join(first.out, "checkpoint.npz")})
    lines = []
    m16, _ = train(second, progress=False, max_steps=0, log=lines.append)  # initialised, not yet trained
    assert np.array_equal(m16.conv1_1.weight.data, m32.conv1_1.weight.data)
    assert not m16.score_pool4.weight.data.any()  # the new skip starts at zero
    assert ("copied 32 tensors; 4 start fresh (score_pool4.bias, score_pool4.weight, upscore16.weight, "
            "upscore2.weight)") in lines[0]  # FCN-16s has its own upsamplers


def test_cli_train_eval_predict_summary(data, tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["train", "--data", data, "--out", out, "--width", "0.0625", "--fc-width", "16",
                 "--input-mode", "pad32", "--epochs", "1", "--batch-size", "3"]) == 0
    ckpt = os.path.join(out, "checkpoint.npz")
    assert main(["eval", "--checkpoint", ckpt]) == 0
    assert "mean IU" in capsys.readouterr().out
    image = os.path.join(data, "JPEGImages", "synth_00000.jpg")
    assert main(["predict", image, "--checkpoint", ckpt, "-o", str(tmp_path / "pred")]) == 0
    assert os.path.isfile(tmp_path / "pred" / "synth_00000_mask.png")
    assert os.path.isfile(tmp_path / "pred" / "synth_00000_overlay.png")
    assert main(["summary", "--width", "0.125", "--fc-width", "512"]) == 0
    assert "receptive field 404, max stride 32" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz not found" in capsys.readouterr().err


def test_gradient_accumulation_matches_the_larger_batch(data, tmp_path):
    """Two micro-batches of 1 (loss scaled by 1/2, lr doubled) take the step one batch of 2 takes."""
    plain = dict(SMALL, epochs=1, loss_reduction="sum", momentum=0.0, weight_decay=0.0, lr=1e-5, lr_policy="fixed")
    big = TrainConfig(data=data, out=str(tmp_path / "big"), **{**plain, "batch_size": 2})
    accumulated = TrainConfig(data=data, out=str(tmp_path / "acc"),
                              **{**plain, "batch_size": 1, "accum_steps": 2, "lr": 2e-5})
    m_big, _ = train(big, progress=False)
    m_acc, _ = train(accumulated, progress=False)
    before = TrainConfig(data=data, out=str(tmp_path / "none"), **plain)
    m0, _ = train(before, progress=False, max_steps=0)
    for (name, a), b, c in zip(m_big.named_parameters(), m_acc.parameters(), m0.parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-4, atol=1e-6, err_msg=name)
    assert any(not np.array_equal(a.data, c.data) for a, c in zip(m_big.parameters(), m0.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("pretrain", [[], ["--pretrain", "--pretrain-epochs", "1"]])
def test_the_main_job_writes_its_checkpoint_metrics_and_pictures(tmp_path, capsys, pretrain):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train", "8", "--val", "4", "--size", "32", "--epochs", "1",
                 *pretrain]) == 0
    printed = capsys.readouterr().out
    assert "mean IU" in printed and "curves" in printed
    for name in ("checkpoint.npz", "metrics.json", "predictions.png", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert 0 <= json.load(open(out / "metrics.json"))["mean_iu"] <= 1
    config = load_checkpoint(str(out / "checkpoint.npz"))[0]
    assert config.fc6_kernel == (3 if pretrain else 7) and bool(config.init) == bool(pretrain)
    os.remove(out / "curves.png")
    assert main(["plot", str(out)]) == 0 and (out / "curves.png").stat().st_size > 10_000


def test_balanced_weights_give_every_class_the_same_total_weight():
    from minifcn.train import BALANCED_CEILING, class_weights

    class Labels:  # three labels: class 0 on 90 pixels, class 1 on 9, class 2 on 1; class 3 absent; void ignored
        ids = ["a"]

        def label(self, image_id):
            return np.array([0] * 90 + [1] * 9 + [2] * 1 + [255] * 40, np.uint8).reshape(10, 14)

    w = class_weights(Labels(), 4)
    counts = np.array([90, 9, 1])
    np.testing.assert_allclose(w[:2], 100 / (3 * counts[:2]), rtol=1e-6)  # 1 / (K' f_c)
    np.testing.assert_allclose(w[:2] * counts[:2], 100 / 3, rtol=1e-6)  # the same total for each class...
    assert w[2] == BALANCED_CEILING < 100 / 3 and w[3] == 1  # ...up to the ceiling; an absent class keeps 1


def test_sqrt_weights_lift_a_class_by_the_root_of_its_rarity_and_keep_a_pixels_mean_weight_one():
    from minifcn.train import CLASS_WEIGHT_POWER, class_weights

    class Labels:  # class 0 on 90 pixels, class 1 on 9, class 2 on 1, over two images; void ignored
        ids = ["a", "b"]

        def label(self, image_id):
            return np.array([0] * 90 + [255] * 10 if image_id == "a" else [1] * 9 + [2] + [255] * 90, np.uint8)

    w = class_weights(Labels(), 3, power=0.5)
    share = np.array([0.9, 0.09, 0.01])
    np.testing.assert_allclose(w[1] / w[0], 10 ** 0.5, rtol=1e-6)  # 10 times rarer: sqrt(10) times heavier
    np.testing.assert_allclose(w[2] / w[1], 9 ** 0.5, rtol=1e-6)
    np.testing.assert_allclose(np.dot(share, w), 1, rtol=1e-6)  # the loss keeps its scale
    balanced = class_weights(Labels(), 3, power=1.0)  # power 1 is "balanced": the same total per class...
    assert np.allclose(balanced[:2] * share[:2], 1 / 3) and balanced[2] == 25  # ...up to the ceiling
    fourth = class_weights(Labels(), 3, power=CLASS_WEIGHT_POWER["fourth-root"])
    np.testing.assert_allclose(fourth[1] / fourth[0], 10 ** 0.25, rtol=1e-6)  # halfway to sqrt on the log scale
    np.testing.assert_allclose(np.dot(share, fourth), 1, rtol=1e-6)
    eighth = class_weights(Labels(), 3, power=CLASS_WEIGHT_POWER["eighth-root"])
    np.testing.assert_allclose(eighth[1] / eighth[0], 10 ** 0.125, rtol=1e-6)  # halfway again
