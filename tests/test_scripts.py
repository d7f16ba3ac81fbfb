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
