"""What is committed under benchmarks/results is what the code says it is: the published SIFT Flow FCN-8s
predictions, scored against the real test labels, give the published metrics."""

import json
import os

import numpy as np
import pytest

from minifcn.data import SIFTFLOW_CLASSES, SIFTFlow
from minifcn.metrics import ConfusionMatrix

RESULTS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results")
SIFTFLOW = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "siftflow")
PREDICTIONS = os.path.join(RESULTS, "siftflow_test_predictions.npz")


@pytest.mark.skipif(not os.path.isdir(SIFTFLOW), reason="the SIFT Flow test labels are not at ../shared/data/siftflow")
@pytest.mark.skipif(not os.path.exists(PREDICTIONS),
                    reason="the published SIFT Flow run has no predictions of every test photo "
                           "(siftflow_imagenet.py writes them; siftflow.py's runs do not)")
def test_the_committed_siftflow_predictions_reproduce_the_published_metrics():
    with open(os.path.join(RESULTS, "siftflow.json")) as f:
        published = json.load(f)["results"]["fcn8s"]
    test = SIFTFlow(SIFTFLOW, "test")
    matrix = ConfusionMatrix(len(SIFTFLOW_CLASSES))
    with np.load(PREDICTIONS) as maps:
        assert sorted(maps.files) == sorted(test.ids)
        for i, name in enumerate(test.ids):
            _, label = test[i]
            pred = maps[name].astype(np.int64) - 1  # stored in the label files' values, 1-33
            assert pred.shape == label.shape and pred.min() >= 0
            matrix.update(pred[None], label[None])
    scores = matrix.scores(exclude_absent=True)
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert scores[key] == pytest.approx(published[key], abs=1e-9), key
