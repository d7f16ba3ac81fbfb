"""The experiment scripts run end to end, on tiny settings, and write results in their documented schema."""

import importlib
import json
import os
import sys

import pytest

from test_experiment import SHARED, make_siftflow

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


def script(name, monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.syspath_prepend(BENCHMARKS)
    sys.modules.pop(name, None)  # the data folders are read from the environment at import
    return importlib.import_module(name)


@pytest.mark.slow
def test_siftflow_script_pretrains_stages_and_publishes(tmp_path, monkeypatch):
    root = make_siftflow(tmp_path / "sf", [f"img{i}" for i in range(9)], size=48)
    siftflow = script("siftflow", monkeypatch, MINIFCN_SIFTFLOW=root)
    results = tmp_path / "results"
    siftflow.main(["--size", "32", "--epochs", "1", "--later-epochs", "1", "--pretrain", "--pretrain-epochs", "1",
                   "--pretrain-crop", "32", "--jobs", "1", "--out", str(tmp_path / "runs"), "--results", str(results)])
    record = json.loads((results / "siftflow.json").read_text())  # the only variant run is the one published
    assert set(record["results"]) == {"fcn32s", "fcn16s", "fcn8s", "fcn32s-longer"}
    fcn8s = record["results"]["fcn8s"]
    assert all(0 <= fcn8s[k] <= 1 for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"))
    assert len(fcn8s["class_iu"]) == 33 and "boundary" in fcn8s
    assert record["train_minutes_total"] >= record["pretrain_minutes"] > 0
    assert (results / "siftflow-pretrained.png").stat().st_size > 10_000
    assert (results / "siftflow_predictions.npz").stat().st_size > 0  # published beside the figure


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "voc2012-masks")),
                    reason="the real VOC masks are not at ../shared/data/voc2012-masks")
def test_table2_script_runs_every_row(tmp_path, monkeypatch):
    table2 = script("table2", monkeypatch, MINIFCN_VOC_MASKS=os.path.join(SHARED, "voc2012-masks"))
    results = tmp_path / "results"
    table2.main(["--train", "12", "--val", "6", "--size", "48", "--epochs", "1", "--later-epochs", "1",
                 "--pretrain-epochs", "1", "--jobs", "1", "--out", str(tmp_path / "runs"), "--results", str(results)])
    record = json.loads((results / "table2.json").read_text())
    assert list(record["results"]) == ["pixelwise", "fcn32s-fixed", "fcn32s", "fcn16s", "fcn8s", "fcn32s-longer"]
    frozen = json.loads((tmp_path / "runs" / "pretrained" / "fcn32s-fixed" / "config.json").read_text())
    assert frozen["freeze_body"] and frozen["init"].endswith("classifier.npz")
    assert (results / "table2_predictions.npz").exists()


def test_the_published_siftflow_run_must_reach_both_numbers_of_the_goal_row(tmp_path, monkeypatch):
    siftflow = script("siftflow", monkeypatch)

    def write(variant, pixel_acc, mean_acc, mean_iu):
        record = {"results": {"fcn8s": {"pixel_acc": pixel_acc, "mean_acc": mean_acc, "mean_iu": mean_iu}}}
        (tmp_path / f"siftflow-{variant}.json").write_text(json.dumps(record))
        (tmp_path / f"siftflow-{variant}.png").write_bytes(variant.encode())

    write("scratch", 0.745, 0.227, 0.169)
    write("pretrained-balanced", 0.523, 0.307, 0.140)  # reaches the mean accuracy alone, at 52 % pixel accuracy
    siftflow.publish_best(str(tmp_path))
    assert (tmp_path / "siftflow.png").read_bytes() == b"scratch"
    write("pretrained", 0.80, 0.30, 0.10)  # both numbers of the row: published, even at a lower mean IU
    siftflow.publish_best(str(tmp_path))
    assert (tmp_path / "siftflow.png").read_bytes() == b"pretrained"
    write("imagenet", 0.81, 0.31, 0.20)  # siftflow_imagenet.py's run competes too, and brings its test predictions
    (tmp_path / "siftflow-imagenet_test_predictions.npz").write_bytes(b"every test photo")
    siftflow.publish_best(str(tmp_path))
    assert (tmp_path / "siftflow.png").read_bytes() == b"imagenet"
    assert (tmp_path / "siftflow_test_predictions.npz").read_bytes() == b"every test photo"


@pytest.mark.slow
def test_a_classifier_is_shipped_and_the_siftflow_table_starts_from_it(tmp_path, monkeypatch, tiny):
    """ship_classifier puts a finished pretrain run into the registry; siftflow_imagenet trains its stages
    from it and publishes the documented schema, scored at the photos' native size, with FCN-8s's
    predictions for every test photo in the label files' values."""
    import numpy as np
    from minifcn import zoo
    from minifcn.config import PretrainConfig
    from minifcn.pretrain import pretrain
    monkeypatch.setattr(zoo, "DIRECTORY", str(tmp_path / "pretrained"))
    config = PretrainConfig(data=str(tiny), out=str(tmp_path / "cls"), dataset="tiny-imagenet", num_classes=3,
                            width=1 / 16, fc_width=8, crop=64, head="average", batchnorm=True, epochs=1,
                            batch_size=4)
    pretrain(config, progress=False)
    ship = script("ship_classifier", monkeypatch)
    ship.main([config.out, "--name", "vgg16-tinyimagenet", "--command", "minifcn pretrain (the test's settings)"])
    about = zoo.available()["vgg16-tinyimagenet"]
    assert about["classes"] == 3 and about["width"] == 1 / 16 and 0 <= about["top1"] <= about["top5"] <= 1
    assert "--init vgg16-tinyimagenet --fc6-kernel 1" in about["use"]

    root = make_siftflow(tmp_path / "sf", [f"img{i}" for i in range(9)], size=48)
    table = script("siftflow_imagenet", monkeypatch, MINIFCN_SIFTFLOW=root)
    results = tmp_path / "results"
    options = ["--size", "32", "--epochs", "1", "--fixed-epochs", "1", "--later-epochs", "1", "--jobs", "1",
               "--out", str(tmp_path / "runs"), "--results", str(results), "--weights", "vgg16-tinyimagenet"]
    table.main(options)
    record = json.loads((results / "siftflow-imagenet.json").read_text())
    assert set(record["results"]) == {"fcn32s-fixed", "fcn32s", "fcn16s", "fcn8s", "fcn32s-control"}
    assert set(record["from_random"]) == {"fcn32s-fixed", "fcn8s"}
    assert record["pretrain"]["dataset"] == "tiny-imagenet" and record["pretrain"]["top1"] == about["top1"]
    assert record["pretrain"]["weights"] == "vgg16-tinyimagenet"
    for row in [*record["results"].values(), *record["from_random"].values()]:
        assert all(0 <= row[k] <= 1 for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"))
        assert len(row["class_iu"]) == 33 and row["train_minutes"] > 0
    with np.load(results / "siftflow-imagenet_test_predictions.npz") as maps:
        test_ids = (tmp_path / "sf" / "test.txt").read_text().split()
        assert sorted(maps.files) == sorted(test_ids)
        assert all(maps[k].shape == (48, 48) and maps[k].dtype == np.uint8 and 1 <= maps[k].min()
                   and maps[k].max() <= 33 for k in maps.files)
    assert (results / "siftflow-imagenet.png").stat().st_size > 10_000
    # the only SIFT Flow run here, so the published one: its record and its predictions of every test photo
    assert json.loads((results / "siftflow.json").read_text()) == json.loads(
        (results / "siftflow-imagenet.json").read_text())
    assert (results / "siftflow_test_predictions.npz").read_bytes() == (
        results / "siftflow-imagenet_test_predictions.npz").read_bytes()

    # the rerun noise: 16s -> 8s and the control again from the same FCN-32s under another seed (same options)
    rerun = script("siftflow_rerun", monkeypatch, MINIFCN_SIFTFLOW=root)
    with pytest.raises(SystemExit):
        rerun.main([*options, "--rerun-seed", "0"])  # the table's own seed measures nothing
    trained = (tmp_path / "runs" / "fcn32s" / "checkpoint.npz").stat().st_mtime_ns
    rerun.main([*options, "--rerun-seed", "3"])
    assert (tmp_path / "runs" / "fcn32s" / "checkpoint.npz").stat().st_mtime_ns == trained  # reused, not retrained
    noise = json.loads((results / "siftflow-imagenet-rerun.json").read_text())
    branches = ("fcn16s", "fcn8s", "fcn32s-control")
    assert noise["seeds"]["0"] == {name: record["results"][name] for name in branches}
    for seed, rows in noise["seeds"].items():
        assert set(rows) == set(branches)
        assert noise["gap_fcn8s_minus_control"][seed]["mean_iu"] == pytest.approx(
            rows["fcn8s"]["mean_iu"] - rows["fcn32s-control"]["mean_iu"])
    for name in branches:
        first, again = (json.loads((tmp_path / "runs" / folder / "config.json").read_text())
                        for folder in (name, f"{name}-seed3"))
        assert {k for k in first if first[k] != again[k]} <= {"seed", "out", "init"} and again["seed"] == 3
    assert json.loads((tmp_path / "runs" / "fcn16s-seed3" / "config.json").read_text())["init"].endswith(
        os.path.join("runs", "fcn32s", "checkpoint.npz"))

    # the same branches under a loss that lifts rare classes, seed unchanged; one change at a time
    with pytest.raises(SystemExit):
        rerun.main([*options, "--rerun-seed", "3", "--class-weights", "sqrt"])
    rerun.main([*options, "--class-weights", "sqrt"])
    assert (tmp_path / "runs" / "fcn32s" / "checkpoint.npz").stat().st_mtime_ns == trained
    lifted = json.loads((results / "siftflow-imagenet-sqrt.json").read_text())
    assert set(lifted["losses"]) == {"equal", "sqrt"}
    assert (results / "siftflow-imagenet-sqrt.png").stat().st_size > 10_000
    with np.load(results / "siftflow-imagenet-sqrt_test_predictions.npz") as maps:
        assert sorted(maps.files) == sorted(test_ids)
        assert all(1 <= maps[k].min() and maps[k].max() <= 33 for k in maps.files)
    assert lifted["losses"]["equal"] == noise["seeds"]["0"]
    assert lifted["gap_fcn8s_minus_control"]["sqrt"]["mean_acc"] == pytest.approx(
        lifted["losses"]["sqrt"]["fcn8s"]["mean_acc"] - lifted["losses"]["sqrt"]["fcn32s-control"]["mean_acc"])
    for name in branches:
        first, again = (json.loads((tmp_path / "runs" / folder / "config.json").read_text())
                        for folder in (name, f"{name}-sqrt"))
        assert {k for k in first if first[k] != again[k]} <= {"class_weights", "out", "init"}
        assert again["class_weights"] == "sqrt" and again["seed"] == first["seed"]
    assert json.loads((tmp_path / "runs" / "fcn8s-sqrt" / "config.json").read_text())["init"].endswith(
        os.path.join("runs", "fcn16s-sqrt", "checkpoint.npz"))
