"""SIFT Flow reader, texture painting, the boundary band, the pixelwise baseline and staged resumable runs."""

import colorsys
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from minifcn.data import SIFTFlow, VOCSegmentation, synthesize
from minifcn.data.synth import tint
from minifcn.experiment import Stage, load_predictions, run_stages, save_predictions
from minifcn.metrics import boundary_band, confusion_matrix, scores
from minifcn.models import build
from minifcn.autograd import Tensor
from minifcn.train import TrainConfig, load_checkpoint

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def make_siftflow(root, ids, size=16):
    os.makedirs(root / "images"), os.makedirs(root / "labels")
    rng = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        label = rng.integers(0, 34, (size, size), dtype=np.uint8)
        Image.fromarray(label).save(root / "labels" / f"{i}.png")
    (root / "trainval.txt").write_text("\n".join(ids[:-1]) + "\n")
    (root / "test.txt").write_text(ids[-1] + "\n")
    return root


def test_siftflow_maps_void_to_ignore_and_shifts_classes(tmp_path):
    root = make_siftflow(tmp_path / "sf", ["a", "b", "c"])
    data = SIFTFlow(root, "trainval")
    assert len(data) == 2 and len(SIFTFlow(root, "test")) == 1
    image, label = data[0]
    raw = np.array(Image.open(root / "labels" / "a.png"))
    assert image.shape == (16, 16, 3)
    np.testing.assert_array_equal(label == 255, raw == 0)
    np.testing.assert_array_equal(label[raw > 0], raw[raw > 0] - 1)
    assert SIFTFlow(root, "test", size=8)[0][1].shape == (8, 8)


def test_siftflow_errors_name_the_problem(tmp_path):
    root = make_siftflow(tmp_path / "sf", ["a", "b"])
    with pytest.raises(FileNotFoundError, match="valid.txt"):
        SIFTFlow(root, "valid")
    Image.fromarray(np.full((16, 16), 40, np.uint8)).save(root / "labels" / "a.png")
    with pytest.raises(ValueError, match="a.png"):
        SIFTFlow(root, "trainval")[0]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "siftflow")),
                    reason="the real SIFT Flow set is not at ../shared/data/siftflow")
def test_real_siftflow_split_sizes_and_label_range():
    test = SIFTFlow(os.path.join(SHARED, "siftflow"), "test")
    assert len(test) == 200 and len(SIFTFlow(os.path.join(SHARED, "siftflow"), "trainval")) == 2486
    image, label = test[0]
    assert image.shape == (256, 256, 3) and label.shape == (256, 256)
    assert set(np.unique(label)) <= set(range(33)) | {255}


def test_boundary_band_is_the_pixels_near_label_changes():
    label = np.zeros((9, 9), np.uint8)
    label[3:6, 3:6] = 7
    band = boundary_band(label, 1)
    distance = np.zeros((9, 9), int)  # brute force: chessboard distance to a pixel whose 4-neighbour differs
    edges = [(r, c) for r in range(9) for c in range(9) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
             if 0 <= r + dr < 9 and 0 <= c + dc < 9 and label[r + dr, c + dc] != label[r, c]]
    for r in range(9):
        for c in range(9):
            distance[r, c] = min(max(abs(r - a), abs(c - b)) for a, b in edges)
    np.testing.assert_array_equal(band, distance <= 1)
    label[0, 0] = 255
    assert not boundary_band(label, 1)[0, 0]  # void is never scored


def test_exclude_absent_drops_predicted_but_absent_classes_from_the_mean():
    hist = confusion_matrix(np.array([0, 1, 2]), np.array([0, 1, 1]), 3)
    assert scores(hist)["mean_iu"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores(hist, exclude_absent=True)["mean_iu"] == pytest.approx((1 + 0.5) / 2)


def test_pixelwise_net_sees_one_pixel():
    net = build("pixelwise", num_classes=4, width=1 / 16)
    for p in net.parameters():
        p.data = np.random.default_rng(0).standard_normal(p.shape).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    y = net(Tensor(x)).data
    x2 = x.copy()
    x2[0, :, 2, 2] += 5  # change one pixel: only that pixel's scores may move
    moved = np.abs(net(Tensor(x2)).data - y).sum(axis=(0, 1)) > 0
    assert moved[2, 2] and moved.sum() == 1


def test_texture_style_colours_carry_no_class_information(tmp_path):
    root = synthesize(str(tmp_path), 40, 0, 48, seed=1, style="texture", progress=False)
    data = VOCSegmentation(root, "train")
    means = {}
    for i in range(len(data)):
        image, label = data[i]
        for c in np.unique(label):
            if c not in (0, 255):
                means.setdefault(int(c), []).append(image[label == c].mean(axis=0))
    spread = [np.std(v, axis=0).mean() for v in means.values() if len(v) >= 3]
    assert spread and min(spread) > 25  # each class's mean colour varies a lot from instance to instance


def test_tinted_style_gives_two_classes_each_hue():
    def mean_hue(cls):
        rng = np.random.default_rng(cls)
        hues = [colorsys.rgb_to_hsv(*(tint(cls, rng) / 255))[0] for _ in range(300)]
        return np.angle(np.mean(np.exp(2j * np.pi * np.array(hues)))) / (2 * np.pi) % 1  # circular mean

    def gap(a, b):
        return min(abs(a - b), 1 - abs(a - b))

    assert gap(mean_hue(5), mean_hue(15)) < 0.01  # bottle and person: one hue, told apart by texture only
    assert gap(mean_hue(5), mean_hue(6)) > 0.08   # neighbouring hues are a tenth of the circle apart


def test_staged_run_resumes_and_skips_finished_stages(tmp_path):
    data = synthesize(str(tmp_path / "data"), 8, 4, 32, progress=False)
    base = TrainConfig(data=data, out="", width=1 / 16, fc_width=16, input_mode="pad32", epochs=1, batch_size=4,
                       val_every=0)
    plan = [Stage("a", dataclasses.replace(base, out=str(tmp_path / "a"), model="fcn32s")),
            Stage("b", dataclasses.replace(base, out=str(tmp_path / "b"), model="fcn16s"), "a")]
    with pytest.raises(RuntimeError, match="has not finished"):
        run_stages(plan, log=lambda *a: None, only=["b"])
    first = run_stages(plan, log=lambda *a: None)
    assert set(first) == {"a", "b"} and 0 <= first["b"]["boundary"]["mean_iu"] <= 1
    with open(tmp_path / "a" / "result.json") as f:
        stored = json.load(f)
    os.remove(tmp_path / "b" / "result.json")  # as if stopped after training b, before its evaluation
    again = run_stages(plan, log=lambda *a: None)
    assert again["a"] == stored and again["b"]["mean_iu"] == pytest.approx(first["b"]["mean_iu"])
    assert set(run_stages(plan, log=lambda *a: None, only=["b"])) == {"b"}
    with pytest.raises(ValueError, match="no stages named"):
        run_stages(plan, only=["c"])
    changed = [Stage("a", dataclasses.replace(plan[0].config, lr=0.5))]
    with pytest.raises(ValueError, match="other settings \\(lr differ\\)"):
        run_stages(changed, log=lambda *a: None)


def test_stages_run_side_by_side_in_processes_match_a_serial_run(tmp_path):
    data = synthesize(str(tmp_path / "data"), 8, 4, 32, progress=False)
    base = TrainConfig(data=data, out="", width=1 / 16, fc_width=16, input_mode="pad32", epochs=1, batch_size=4,
                       val_every=0)

    def plan(root):
        return [Stage("c", dataclasses.replace(base, out=str(root / "c"), model="pixelwise")),
                Stage("a", dataclasses.replace(base, out=str(root / "a"), model="fcn32s")),
                Stage("b", dataclasses.replace(base, out=str(root / "b"), model="fcn16s"), "a")]

    lines = []
    parallel = run_stages(plan(tmp_path / "par"), log=lines.append, jobs=2)
    run_stages(plan(tmp_path / "ser"), log=lambda *a: None)
    assert list(parallel) == ["c", "a", "b"]  # the plan's order, whatever order they finished in
    started = [line.split(":")[0] for line in lines if ": started (" in line]
    assert started == ["a", "c", "b"]  # the longer chain (a -> b) first, b once a is done
    for name in "abc":  # same training, other thread counts: equal up to float rounding
        _, p, _ = load_checkpoint(str(tmp_path / "par" / name / "checkpoint.npz"))
        _, s, _ = load_checkpoint(str(tmp_path / "ser" / name / "checkpoint.npz"))
        for (k, v), w in zip(p.state_dict().items(), s.state_dict().values()):
            np.testing.assert_allclose(v, w, rtol=1e-4, atol=1e-6, err_msg=f"{name}.{k}")
    broken = [Stage("d", dataclasses.replace(base, data=str(tmp_path / "missing"), out=str(tmp_path / "d")))]
    with pytest.raises(Exception, match="missing"):
        run_stages(broken + plan(tmp_path / "par"), log=lambda *a: None, jobs=2)


def test_a_stage_that_runs_alone_gets_every_core(tmp_path, monkeypatch):
    """Side by side, stages share the cores; a stage nothing else can run beside takes them all."""
    data = synthesize(str(tmp_path / "data"), 4, 2, 32, progress=False)
    base = TrainConfig(data=data, out="", width=1 / 16, fc_width=16, input_mode="pad32", epochs=1, batch_size=4,
                       val_every=0)
    plan = [Stage("a", dataclasses.replace(base, out=str(tmp_path / "a"), model="fcn32s")),
            Stage("c", dataclasses.replace(base, out=str(tmp_path / "c"), model="pixelwise")),
            Stage("b", dataclasses.replace(base, out=str(tmp_path / "b"), model="fcn16s"), "a")]
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    lines = []
    run_stages(plan, log=lines.append, jobs=2)
    started = dict(line.split(": started ") for line in lines if ": started (" in line)
    assert started["a"] == started["c"] == "(2 threads)"  # two ready at once: half the cores each
    run_stages([Stage("solo", dataclasses.replace(base, out=str(tmp_path / "solo"), model="fcn32s"))],
               log=lines.append, jobs=2)
    assert "solo: started (4 threads)" in lines


def test_saved_predictions_come_back_in_order(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), rng.integers(0, 21, (h, w), dtype=np.uint8),
             {name: rng.integers(0, 21, (h, w), dtype=np.uint8) for name in ("fcn32s", "fcn16s", "fcn8s")})
            for h, w in [(5, 7), (9, 4), (3, 3), (6, 6), (4, 8), (7, 5), (8, 8), (2, 9), (5, 5), (6, 3), (4, 4)]]
    save_predictions(str(tmp_path / "p.npz"), rows)
    back = load_predictions(str(tmp_path / "p.npz"))
    assert len(back) == len(rows)  # eleven rows: "10" must sort after "9", not after "1"
    for (image, label, preds), (image2, label2, preds2) in zip(rows, back):
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_array_equal(label, label2)
        assert list(preds2) == ["fcn32s", "fcn16s", "fcn8s"]
        for name in preds:
            np.testing.assert_array_equal(preds[name], preds2[name])
