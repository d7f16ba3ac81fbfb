"""What is committed under benchmarks/results is what the code says it is: the SIFT Flow FCN-8s predictions
of every test photo, scored against the real test labels, give the metrics published beside them."""

import json
import os

import numpy as np
import pytest

from minifcn.data import SIFTFLOW_CLASSES, SIFTFlow
from minifcn.metrics import ConfusionMatrix

RESULTS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results")
SIFTFLOW = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "siftflow")
RUNS = [("siftflow.json", "siftflow_test_predictions.npz", ("results",)),  # the published run
        ("siftflow-imagenet.json", "siftflow-imagenet_test_predictions.npz", ("results",)),  # from Tiny ImageNet
        ("siftflow-imagenet-sqrt.json", "siftflow-imagenet-sqrt_test_predictions.npz", ("losses", "sqrt")),
        ("siftflow-imagenet-14ep.json", "siftflow-imagenet-14ep_test_predictions.npz", ("results",)),  # session 22
        ("siftflow-imagenet-20ep.json", "siftflow-imagenet-20ep_test_predictions.npz", ("results",)),  # session 23
        ("siftflow-imagenet-fourth-root.json", "siftflow-imagenet-fourth-root_test_predictions.npz",
         ("losses", "fourth-root")),
        ("siftflow-imagenet-24ep.json", "siftflow-imagenet-24ep_test_predictions.npz", ("results",)),  # session 24
        ("siftflow-imagenet-eighth-root.json", "siftflow-imagenet-eighth-root_test_predictions.npz",
         ("losses", "eighth-root"))]


@pytest.mark.skipif(not os.path.isdir(SIFTFLOW), reason="the SIFT Flow test labels are not at ../shared/data/siftflow")
@pytest.mark.parametrize("record, predictions, where", RUNS)
def test_the_committed_siftflow_predictions_reproduce_the_published_metrics(record, predictions, where):
    if not os.path.exists(os.path.join(RESULTS, predictions)):
        pytest.skip(f"{predictions} is not committed: the run published as {record} kept no predictions of every "
                    f"test photo (siftflow.py's runs do not)")
    with open(os.path.join(RESULTS, record)) as f:
        published = json.load(f)
    for key in where:  # the FCN-8s row: under "results", or under the loss of a rerun record
        published = published[key]
    published = published["fcn8s"]
    test = SIFTFlow(SIFTFLOW, "test")
    matrix = ConfusionMatrix(len(SIFTFLOW_CLASSES))
    with np.load(os.path.join(RESULTS, predictions)) as maps:
        assert sorted(maps.files) == sorted(test.ids)
        for i, name in enumerate(test.ids):
            _, label = test[i]
            pred = maps[name].astype(np.int64) - 1  # stored in the label files' values, 1-33
            assert pred.shape == label.shape and pred.min() >= 0
            matrix.update(pred[None], label[None])
    scores = matrix.scores(exclude_absent=True)
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert scores[key] == pytest.approx(published[key], abs=1e-9), key


@pytest.mark.parametrize("record, kind, table_file", [
    ("siftflow-imagenet-rerun.json", "seeds", "siftflow-imagenet.json"),
    ("siftflow-imagenet-sqrt.json", "losses", "siftflow-imagenet.json"),
    ("siftflow-imagenet-fourth-root.json", "losses", "siftflow-imagenet-20ep.json"),  # from the 20-epoch FCN-32s
    ("siftflow-imagenet-eighth-root.json", "losses", "siftflow-imagenet-24ep.json")])  # from the 24-epoch one
def test_a_rerun_record_pairs_with_its_table_and_its_gaps_are_its_rows(record, kind, table_file):
    """siftflow_rerun.py's records (another seed; a weighted loss): the table's own run is one of its two,
    row for row, the other changes only what it says, and each gap is FCN-8s minus the control."""
    with open(os.path.join(RESULTS, table_file)) as f:
        table = json.load(f)
    with open(os.path.join(RESULTS, record)) as f:
        rerun = json.load(f)
    if kind == "seeds":
        first, again = str(table["setup"]["seed"]), str(rerun["setup"]["rerun_seed"])
    else:
        first, again = "equal", rerun["setup"]["class_weights"]
        assert rerun["setup"]["seed"] == table["setup"]["seed"]
    assert rerun["setup"]["epochs"] == table["setup"]["epochs"]  # branched from that table's FCN-32s
    assert set(rerun[kind]) == {first, again} and first != again
    for name, row in rerun[kind][first].items():
        assert row == table["results"][name], name
    for label, rows in rerun[kind].items():
        for key, gap in rerun["gap_fcn8s_minus_control"][label].items():
            assert gap == pytest.approx(rows["fcn8s"][key] - rows["fcn32s-control"][key], abs=1e-12), (label, key)


def test_the_classifier_rerun_record_is_the_shipped_command_and_its_own_history():
    """benchmarks/results/tinyimagenet-rerun.json times the shipped classifier's command with later code: its
    headline figures are its last epoch's, and the command is the shipped provenance's, word for word."""
    with open(os.path.join(RESULTS, "tinyimagenet-rerun.json")) as f:
        rerun = json.load(f)
    shipped_path = os.path.join(os.path.dirname(__file__), "..", "minifcn", "pretrained", "vgg16-tinyimagenet.json")
    with open(shipped_path) as f:
        shipped = json.load(f)
    assert rerun["command"] == shipped["command"]
    last = rerun["history"][-1]
    assert rerun["epochs"] == last["epoch"] == shipped["epochs"] == len(rerun["history"])
    assert (rerun["minutes"], rerun["top1"], rerun["top5"]) == (last["seconds"] / 60, last["val_accuracy"],
                                                                last["val_top5"])
    assert [h["epoch"] for h in rerun["history"]] == list(range(1, rerun["epochs"] + 1))
