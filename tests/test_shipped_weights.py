"""The classifier that ships inside the package: it loads with the checks any stranger's file gets, says
what its outputs mean, and its provenance agrees with the training history it carries."""

import os
import re

import numpy as np
import pytest

from minifcn import zoo
from minifcn.checkpoint import read_checkpoint
from minifcn.weights import pretrained

PHOTOS = os.path.join(os.path.dirname(__file__), "..", "tutorials", "photos")


@pytest.mark.parametrize("name", ["vgg16-tinyimagenet", "vgg16-tinyimagenet-12ep"])
def test_vgg16_tinyimagenet_ships_with_its_classes_and_provenance(name):
    about = zoo.available()[name]
    for key in ("summary", "dataset", "command", "epochs", "minutes", "top1", "top5", "machine", "use"):
        assert key in about, key
    classifier = pretrained(name)
    assert not classifier.training and classifier.head == "average" and classifier.batchnorm
    assert len(classifier.classes) == len(set(classifier.classes)) == about["classes"]
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in classifier.classes)
    assert len(classifier.names) == len(classifier.classes)
    config, state = read_checkpoint(zoo.path_of(name), config_class=None)
    history = state["meta"]["history"]
    assert len(history) == config.epochs == about["epochs"]
    assert np.isclose(history[-1]["val_accuracy"], about["top1"]) and np.isclose(history[-1]["val_top5"], about["top5"])
    assert state["optim"] == {}  # weights only: no optimiser state in the package
    assert f"--epochs {config.epochs} " in about["command"] and f"--init {name} " in about["use"]


def test_the_shipped_classifier_classifies_the_tutorial_photos():
    from PIL import Image
    classifier = pretrained("vgg16-tinyimagenet")
    files = sorted(os.listdir(PHOTOS))
    photos = [np.asarray(Image.open(os.path.join(PHOTOS, f)).convert("RGB")) for f in files]
    p = classifier.classify(photos)
    assert p.shape == (len(files), len(classifier.classes)) and np.allclose(p.sum(axis=1), 1)
    assert np.array_equal(p, classifier.classify(np.stack(photos)))
    truth = [classifier.classes.index(os.path.splitext(f)[0]) for f in files]  # each file is named by its wnid
    ranks = [int((np.argsort(-row) == t).nonzero()[0][0]) for row, t in zip(p, truth)]
    assert np.mean(ranks) < len(classifier.classes) / 4  # far better than chance (mean rank ~ K/2)


def test_an_unknown_name_lists_what_ships():
    with pytest.raises(ValueError, match="minifcn ships: .*vgg16-tinyimagenet"):
        pretrained("vgg19-imagenet")


def test_a_damaged_provenance_leaves_out_its_weights_only_and_names_the_file(tmp_path, monkeypatch, capsys):
    """A ship cut short (weights without provenance), a truncated, oversized, deeply nested or non-object
    provenance: each is left out with a warning naming its file, and the good entry still lists and loads.
    A provenance that lacks a field, or holds text where a number belongs, is listed with "?" there."""
    import json
    import shutil
    from minifcn.cli import main
    good = "vgg16-tinyimagenet"
    for ext in (".npz", ".json"):
        shutil.copyfile(os.path.join(zoo.DIRECTORY, good + ext), tmp_path / (good + ext))
    about = zoo.available()[good]
    damaged = {"truncated": '{"summary": "VGG16 at wid', "a-list": "[1, 2]",
               "huge": '{"pad": "' + "x" * zoo.MAX_PROVENANCE_BYTES + '"}', "nested": "[" * 200_000 + "]" * 200_000}
    odd = {"no-top1": {k: v for k, v in about.items() if k != "top1"},
           "text-top1": {**about, "top1": "35 %", "minutes": 10 ** 400}}
    for name, text in {"cut-short": None, **damaged, **{k: json.dumps(v) for k, v in odd.items()}}.items():
        shutil.copyfile(os.path.join(zoo.DIRECTORY, good + ".npz"), tmp_path / f"{name}.npz")
        if text is not None:
            (tmp_path / f"{name}.json").write_text(text)
    monkeypatch.setattr(zoo, "DIRECTORY", str(tmp_path))
    with pytest.warns(UserWarning) as caught:
        shipped = zoo.available()
    assert sorted(shipped) == sorted([good, *odd])
    said = " | ".join(str(w.message) for w in caught)
    for name in ("cut-short", *damaged):
        assert f"{name!r} left out: {tmp_path / name}.json" in said, name
    with pytest.warns(UserWarning):  # said again on every listing
        assert len(pretrained(good).classes) == shipped[good]["classes"]
    capsys.readouterr()
    assert main(["weights", "list"]) in (0, None)
    out, err = capsys.readouterr()
    assert "minifcn: warning: shipped weights 'truncated' left out" in err
    assert {line.split(":", 1)[0] for line in out.splitlines() if line and not line[0].isspace()} == {good, *odd}
    assert "top-1 35.9 %" in out and "top-1 ? %, top-5" in out  # the good one, then the one without top1
    assert out.count("? min on") == 1  # 10**400 minutes: not a number that prints
