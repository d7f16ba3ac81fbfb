"""The paper's recipe in miniature: a classifier on crops, convolutionalized into an FCN's body."""

import os

import numpy as np
import pytest

from minifcn import Tensor, no_grad
from minifcn.checkpoint import initialize
from minifcn.config import PretrainConfig
from minifcn.data import synthesize
from minifcn.models import FCN32s, FCN8s
from minifcn.pretrain import crops_of, pretrain

from helpers import Interrupt


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(str(tmp_path_factory.mktemp("voc")), 8, 4, 64, progress=False)


def test_a_crop_is_labelled_with_the_class_covering_most_of_it():
    label = np.zeros((64, 64), np.uint8)
    label[:, 40:] = 7  # a car on the right, 24 columns wide
    label[:, 38:40] = 255  # its void border
    image = np.zeros((64, 64, 3), np.uint8)
    config = PretrainConfig(data="", crop=32, crops_per_image=200)
    crops = crops_of(image, label, config, np.random.default_rng(0))
    assert len(crops) == 200 and crops[0][0].shape == (3, 32, 32)
    labels = np.array([k for _, k in crops])
    assert set(labels.tolist()) == {0, 7}
    assert 0.3 < np.mean(labels == 7) < 0.7  # centres drawn class by class, not pixel by pixel (car: 37 %)
    assert crops_of(image, label, config, np.random.default_rng(0))[5][1] == labels[5]  # seeded


def test_crop_size_must_give_an_odd_fc6_window():
    with pytest.raises(ValueError, match="crop must be 32 times an odd number"):
        PretrainConfig(data="", crop=64)
    assert PretrainConfig(data="", crop=160).fc6_kernel == 5


def test_a_convolutionalized_classifier_is_the_fcn_body(data, tmp_path):
    """After --init, the FCN computes the classifier's own fc7 features at every window of pool5."""
    config = PretrainConfig(data=data, out=str(tmp_path / "cls"), width=1 / 16, fc_width=16, crop=96,
                            crops_per_image=2, epochs=1, batch_size=8, scale=(1.5, 2.0))
    classifier, history = pretrain(config, progress=False)
    assert len(history) == 1 and 0 <= history[0]["val_accuracy"] <= 1
    fcn = FCN8s(width=1 / 16, fc_width=16, input_mode="pad32", fc6_kernel=3)
    copied, fresh = initialize(fcn, os.path.join(config.out, "classifier.npz"))
    assert "fc6.weight" in copied and "conv5_3.weight" in copied and "score_fr.weight" in fresh
    assert np.array_equal(fcn.fc6.weight.data.reshape(16, -1), classifier.fc6.weight.data)
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    classifier.eval(), fcn.eval()
    with no_grad():
        relu7, _ = fcn.run(Tensor(x), fcn.path[:fcn.path.index("relu7") + 1])
        pool5, _ = classifier.run(Tensor(x), classifier.backbone_names)
        fc7 = np.maximum(np.maximum(pool5.data.reshape(1, -1) @ classifier.fc6.weight.data.T
                                    + classifier.fc6.bias.data, 0) @ classifier.fc7.weight.data.T
                         + classifier.fc7.bias.data, 0)
    np.testing.assert_allclose(relu7.data[0, :, 1, 1], fc7[0], rtol=1e-4, atol=1e-5)  # the centre window
    with pytest.raises(ValueError, match="needs fc6_kernel=3"):
        initialize(FCN32s(width=1 / 16, fc_width=16, input_mode="pad32"), os.path.join(config.out, "classifier.npz"))


def test_pretraining_resumes_bit_for_bit_and_refuses_other_settings(data, tmp_path, monkeypatch):
    import minifcn.pretrain as stage
    config = PretrainConfig(data=data, out=str(tmp_path / "cls"), width=1 / 16, fc_width=16, crop=32,
                            crops_per_image=2, epochs=2, batch_size=8)
    straight, _ = pretrain(PretrainConfig(**{**config.__dict__, "out": str(tmp_path / "straight")}), progress=False)
    # Ctrl-C while epoch 2 is being scored: its checkpoint is not written
    monkeypatch.setattr(stage, "accuracy", Interrupt(2, stage.accuracy))
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, progress=False)
    monkeypatch.undo()
    resumed, history = pretrain(config, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert np.array_equal(a.data, b.data), name
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(**{**config.__dict__, "lr": 2e-3}), progress=False)
