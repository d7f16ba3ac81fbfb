"""Pre-training on a classification set's photos (Tiny ImageNet's layout, built in a fixture): the
augmentation against a brute-force oracle, top-1/top-5 logs, exact mid-epoch resume with batch-norm
statistics, the folded FCN, ``classify`` and the shipped-weights registry."""

import json
import os

import numpy as np
import pytest

from minifcn import zoo
from minifcn.autograd import Tensor, no_grad
from minifcn.checkpoint import initialize
from minifcn.config import PretrainConfig
from minifcn.data import TinyImageNet, normalize
from minifcn.models import FCN8s, VGGClassifier, convolutionalize
from minifcn.pretrain import Photos, normalize_batch, pretrain

from helpers import WNIDS, Interrupt, run


def photo_config(tiny, tmp_path, **changes):
    settings = dict(data=str(tiny), out=str(tmp_path / "cls"), dataset="tiny-imagenet", num_classes=3,
                    width=1 / 16, fc_width=8, crop=64, head="average", batchnorm=True, epochs=2, batch_size=4,
                    checkpoint_every=1, warmup_steps=0)
    return PretrainConfig(**{**settings, **changes})


@pytest.mark.parametrize("train_crop", [None, 48])
def test_each_training_photo_is_a_flip_and_shift_of_its_own_photo(tiny, tmp_path, train_crop):
    config = photo_config(tiny, tmp_path, pad=3, train_crop=train_crop)
    side, offsets = train_crop or 64, 64 + 6 - (train_crop or 64) + 1
    photos = Photos(config, "train")
    order = np.random.default_rng([config.seed, 1]).permutation(len(photos))
    seen = set()
    for k, (x, y) in enumerate(photos.epoch(1)):
        for j, (got, label) in enumerate(zip(x, y)):
            source = photos.images[order[k * config.batch_size + j]]
            assert label == photos.labels[order[k * config.batch_size + j]]
            padded = np.pad(source, ((3, 3), (3, 3), (0, 0)), mode="reflect")
            matches = [(dy, dx, flip) for dy in range(offsets) for dx in range(offsets) for flip in (False, True)
                       if np.allclose(normalize(np.ascontiguousarray(
                           padded[dy: dy + side, dx: dx + side][:, ::-1 if flip else 1])), got)]
            assert matches, f"batch {k} row {j} is no flip and shift of its photo"
            seen.add(matches[0][2])
    assert sum(len(y) for _, y in photos.epoch(1)) == len(photos) == 6
    val = np.concatenate([x for x, _ in photos.validation(batch_size=4)])
    assert np.allclose(val, np.stack([normalize(image) for image in photos.images]))  # validation: untouched


def test_the_batch_lookup_is_normalize_bit_for_bit():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 17, 3), dtype=np.uint8)
    images[0].reshape(-1)[:256 * 3] = np.repeat(np.arange(256, dtype=np.uint8), 3)  # every value, every channel
    got = normalize_batch(images)
    assert got.dtype == np.float32 and got.shape == (5, 3, 16, 17)
    assert np.array_equal(got, np.stack([normalize(image) for image in images]))


def test_photo_pretraining_logs_top5_and_resumes_mid_epoch_bit_for_bit(tiny, tmp_path, monkeypatch):
    import minifcn.pretrain as stage
    config = photo_config(tiny, tmp_path)
    straight, history = pretrain(PretrainConfig(**{**config.__dict__, "out": str(tmp_path / "straight")}),
                                 progress=False)
    lines = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
    assert [h["epoch"] for h in lines] == [1, 2] and lines == json.loads(json.dumps(history))
    assert all(0 <= h["val_accuracy"] <= h["val_top5"] <= 1 for h in lines)
    assert (tmp_path / "straight" / "curves.png").stat().st_size > 1000

    # Ctrl-C in the middle of epoch 2 (2 steps an epoch; a checkpoint every step)
    monkeypatch.setattr(stage, "train_step", Interrupt(4, stage.train_step))
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, progress=False)
    monkeypatch.undo()
    logged = []
    resumed, again = pretrain(config, progress=False, log=logged.append)
    assert any("after epoch 1, step 3" in line for line in logged)
    assert [h["epoch"] for h in again] == [1, 2] and again[1]["loss"] == history[1]["loss"]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert np.array_equal(a, b), name  # weights and the running batch-norm statistics


def test_train_crop_trains_smaller_and_validates_whole_photos(tiny, tmp_path):
    config = photo_config(tiny, tmp_path, train_crop=40, epochs=1)
    x, _ = next(Photos(config, "train").epoch(0))
    assert x.shape[2:] == (40, 40)
    _, history = pretrain(config, progress=False)
    assert 0 <= history[0]["val_accuracy"] <= 1
    for bad in (dict(train_crop=72), dict(train_crop=16), dict(train_crop=48, head="flatten", crop=96)):
        with pytest.raises(ValueError, match="train-crop"):
            photo_config(tiny, tmp_path, **bad)


def test_the_class_count_comes_from_the_data(tiny, tmp_path):
    with pytest.raises(ValueError, match="wnids.txt lists 3 classes; pass --num-classes 3"):
        pretrain(photo_config(tiny, tmp_path, num_classes=5), progress=False)


def trained_classifier(seed=0):
    """A batch-norm classifier with non-trivial statistics and scales, as training leaves them."""
    rng = np.random.default_rng(seed)
    classifier = VGGClassifier(5, 1 / 16, 8, 64, seed, batchnorm=True, head="average")
    for name, module in classifier.named_modules():
        if name.startswith("bn"):
            module.running_mean[...] = rng.standard_normal(module.running_mean.shape)
            module.running_var[...] = rng.uniform(0.5, 2, module.running_var.shape)
            module.weight.data[...] = rng.uniform(0.5, 1.5, module.weight.shape)
            module.bias.data[...] = rng.standard_normal(module.bias.shape) * 0.1
    classifier.eval()
    return classifier


@pytest.mark.parametrize("size", [64, 96, 160])
def test_the_average_head_is_its_folded_convolutionalization_then_a_mean(size):
    classifier = trained_classifier()
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    with no_grad():
        logits = classifier(Tensor(x)).numpy()
        conv = convolutionalize(classifier)
        scores = conv(Tensor(x)).numpy()
    assert not any(name.startswith("bn") for name in conv.backbone_names)  # the paper's layers only
    assert scores.shape == (2, 5, -(-size // 32), -(-size // 32))
    np.testing.assert_allclose(scores.mean(axis=(2, 3)), logits, rtol=1e-4, atol=1e-4)


def test_an_fcn_started_from_the_classifier_computes_its_features(tmp_path):
    classifier = trained_classifier()
    fcn = FCN8s(num_classes=3, width=1 / 16, fc_width=8, input_mode="pad32", fc6_kernel=1)
    fcn.load_classifier(classifier)
    fcn.eval()
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with no_grad():
        relu7, _ = fcn.run(Tensor(x), fcn.path[:fcn.path.index("relu7") + 1])
        conv = convolutionalize(classifier)
        expected, _ = conv.run(Tensor(x), conv.path[:conv.path.index("relu7") + 1])
    np.testing.assert_allclose(relu7.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def softmax(z):
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_classify_takes_uint8_photos_and_restores_the_mode():
    classifier = trained_classifier()
    classifier.train()
    rng = np.random.default_rng(3)
    photos = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    p = classifier.classify(photos)
    assert classifier.training and p.shape == (3, 5)
    classifier.eval()
    with no_grad():
        expected = softmax(classifier(Tensor(np.stack([normalize(image) for image in photos]))).numpy())
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)
    from PIL import Image
    big = rng.integers(0, 256, (100, 80, 3), dtype=np.uint8)
    small = np.asarray(Image.fromarray(big).resize((64, 64), Image.BILINEAR))
    np.testing.assert_allclose(classifier.classify([big]), classifier.classify(small[None]), rtol=1e-6)
    for bad, what in ((photos[0], "wrap a single photo"), (photos.astype(np.float32), "photo 0 must be uint8")):
        with pytest.raises(ValueError, match=what):
            classifier.classify(bad)


@pytest.fixture
def shipped(tiny, tmp_path, monkeypatch):
    """A registry of one set of weights, trained on the fixture, where minifcn looks for shipped ones."""
    config = photo_config(tiny, tmp_path, epochs=1)
    pretrain(config, progress=False)
    folder = tmp_path / "pretrained"
    folder.mkdir()
    os.replace(os.path.join(config.out, "classifier.npz"), folder / "tiny-test.npz")
    (folder / "tiny-test.json").write_text(json.dumps({
        "summary": "a test classifier", "top1": 0.25, "top5": 0.75, "evaluated_on": "3 photos", "epochs": 1,
        "minutes": 0.01, "machine": "this one", "command": "pretrain ...", "use": "--init tiny-test"}))
    monkeypatch.setattr(zoo, "DIRECTORY", str(folder))
    return "tiny-test"


def test_pretrained_returns_the_shipped_classifier_with_its_classes(shipped, tiny):
    from minifcn.weights import pretrained
    classifier = pretrained(shipped)
    assert not classifier.training and classifier.classes == WNIDS
    assert classifier.names == TinyImageNet(tiny).names
    assert classifier.classify([TinyImageNet(tiny, "val")[0][0]]).shape == (1, 3)
    with pytest.raises(ValueError, match="no shipped weights named 'vgg99'; minifcn ships: tiny-test"):
        pretrained("vgg99")


def test_weights_list_and_train_init_by_name(shipped, capsys):
    from minifcn.cli import main
    assert main(["weights", "list"]) in (0, None)
    out = capsys.readouterr().out
    assert "tiny-test: a test classifier" in out and "top-1 25.0 %, top-5 75.0 %" in out and "--init tiny-test" in out
    code, err = run(capsys, "train", "--data", "nowhere", "--init", "vgg99")
    assert code != 0 and "--init vgg99: no such file, and no shipped weights named 'vgg99'" in err
    fcn = FCN8s(num_classes=3, width=1 / 16, fc_width=8, input_mode="pad32", fc6_kernel=1)
    copied, fresh = initialize(fcn, shipped)
    assert "conv1_1.weight" in copied and "fc7.weight" in copied and "score_fr.weight" in fresh
    with pytest.raises(ValueError, match="needs fc6_kernel=1"):
        initialize(FCN8s(num_classes=3, width=1 / 16, fc_width=8, input_mode="pad32"), shipped)


def test_the_command_line_pretrains_on_photos_and_says_how_to_start_an_fcn(tiny, tmp_path, capsys):
    from minifcn.cli import main
    out = tmp_path / "cmd"
    main(["pretrain", "--dataset", "tiny-imagenet", "--data", str(tiny), "--out", str(out), "--num-classes", "3",
          "--width", "0.0625", "--fc-width", "8", "--crop", "64", "--head", "average", "--batchnorm", "true",
          "--epochs", "1", "--batch-size", "4"])
    said = capsys.readouterr().out
    assert "top-1" in said and "top-5" in said and f"--init {out / 'classifier.npz'} --fc6-kernel 1" in said
    assert (out / "metrics.jsonl").exists() and (out / "curves.png").exists()
    code, err = run(capsys, "pretrain", "--dataset", "tiny-imagenet", "--data", str(tiny), "--out",
                    str(tmp_path / "flat"), "--num-classes", "3", "--crop", "64")
    assert code == 2 and "32 times an odd number" in err and "--head average" in err
