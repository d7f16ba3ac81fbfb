import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minifcn import Tensor, no_grad
from minifcn.models import (FCN8s, FCN16s, FCN32s, VGGClassifier, bilinear_kernel, convolutionalize, summary)
from minifcn import functional as F
from minifcn.functional import conv_transpose2d

TINY = dict(width=1 / 64, fc_width=8, num_classes=5)


def run(model, x):
    with no_grad():
        return model(Tensor(x)).data


def test_crop_offsets_are_derived_as_in_the_paper():
    assert FCN32s(**TINY).offset == (19, 19)
    assert FCN16s(**TINY).offsets == {"score_pool4": (5, 5), "upscore16": (27, 27)}
    assert FCN8s(**TINY).offsets == {"score_pool4": (5, 5), "score_pool3": (9, 9), "upscore8": (31, 31)}
    assert set(FCN8s(input_mode="pad32", **TINY).offsets.values()) == {(0, 0)}


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
@pytest.mark.parametrize("mode", ["pad100", "pad32"])
@settings(max_examples=8)
@given(h=st.integers(1, 80), w=st.integers(1, 80))
def test_any_input_size_gives_the_same_size_out(cls, mode, h, w):
    model = cls(input_mode=mode, **TINY)
    assert run(model, np.zeros((1, 3, h, w), np.float32)).shape == (1, 5, h, w)


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
@pytest.mark.parametrize("mode", ["pad100", "pad32"])
@settings(max_examples=6, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_the_last_upsampling_skips_only_what_the_crop_drops(cls, mode, h, w, seed):
    """upsample_to upsamples only the coarse scores the kept window needs: its scores and every gradient
    equal the plain crop(up(scores)), on random weights (learned upsamplers) and sizes."""
    rng = np.random.default_rng(seed)
    model = cls(input_mode=mode, upsampling="learned", **TINY).eval()
    for p in model.parameters():
        p.data = (0.5 * rng.standard_normal(p.data.shape)).astype(np.float64)
    x = rng.standard_normal((2, 3, h, w))
    probe = rng.standard_normal((2, 5, h, w))
    results = []
    for fused in (True, False):
        if not fused:  # the plain way: the whole upsampled map, then the crop
            model.upsample_to = lambda up, scores, offset, size: F.crop(up(scores), *offset, *size)
        for p in model.parameters():
            p.grad = None
        y = model(Tensor(x))
        (y * Tensor(probe)).sum().backward()
        results.append([y.data] + [p.grad for p in model.parameters()])
    for fused, plain in zip(*results):
        np.testing.assert_allclose(fused, plain, rtol=1e-10, atol=1e-10 * np.abs(plain).max())


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 8), s=st.integers(1, 4), p=st.integers(0, 2), data=st.data())
def test_upsample_to_is_the_crop_of_the_upsampling_at_any_offset(n, k, s, p, data):
    """Any window of a transposed convolution's output, near either border or in the middle, rows and
    columns apart: upsample_to gives crop(up(scores)) and its gradients."""
    from minifcn import nn
    full = (n - 1) * s - 2 * p + k
    assume(full >= 1)
    size = tuple(data.draw(st.integers(1, full)) for _ in range(2))
    offset = tuple(data.draw(st.integers(0, full - m)) for m in size)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    up = nn.ConvTranspose2d(2, 3, k, s, p, rng=rng)
    up.weight.data, up.bias.data = rng.standard_normal(up.weight.shape), rng.standard_normal(3)
    scores, probe = rng.standard_normal((2, 2, n, n)), rng.standard_normal((2, 3, *size))
    results = []
    for way in (FCN8s.upsample_to, lambda _, up, x, o, size: F.crop(up(x), *o, *size)):
        x = Tensor(scores, requires_grad=True)
        up.weight.grad = up.bias.grad = None
        y = way(None, up, x, offset, size)
        (y * Tensor(probe)).sum().backward()
        results.append([y.data, x.grad, up.weight.grad, up.bias.grad])
    for fused, plain in zip(*results):
        np.testing.assert_allclose(fused, plain, rtol=1e-10, atol=1e-10 * np.abs(plain).max())


@settings(max_examples=60, deadline=None)
@given(C=st.integers(2, 5), k=st.integers(1, 8), s=st.integers(1, 4), p=st.integers(0, 2), n=st.integers(1, 5),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_a_frozen_class_by_class_upsampler_equals_the_full_transposed_convolution(C, k, s, p, n, bias, seed):
    """A frozen weight with one kernel on the diagonal and zeros elsewhere runs channel by channel
    (ConvTranspose2d.shared_kernel): the same output and input gradient as the full product; any other
    weight, or a learning one, takes the full way."""
    from minifcn import nn
    assume((n - 1) * s - 2 * p + k >= 1)
    rng = np.random.default_rng(seed)
    up = nn.ConvTranspose2d(C, C, k, s, p, bias=bias, rng=rng)
    kernel = rng.standard_normal((k, k))
    weight = np.zeros((C, C, k, k))
    weight[np.arange(C), np.arange(C)] = kernel
    up.weight.data, up.weight.requires_grad = weight, False
    if bias:
        up.bias.data = rng.standard_normal(C)
    assert np.array_equal(up.shared_kernel(), kernel)
    x, probe = rng.standard_normal((2, C, n, n)), None
    results = []
    for way in (up, lambda t: conv_transpose2d(t, weight, up.bias, s, p)):
        t = Tensor(x, requires_grad=True)
        y = way(t)
        probe = rng.standard_normal(y.shape) if probe is None else probe
        (y * Tensor(probe)).sum().backward()
        results.append((y.data, t.grad))
    for fast, full in zip(*results):
        np.testing.assert_allclose(fast, full, rtol=1e-10, atol=1e-10 * np.abs(full).max())
    other = weight.copy()
    other[0, 1, 0, 0] = 1.0  # one weight off the diagonal
    changed = weight.copy()
    changed[1, 1, 0, 0] += 1.0  # one diagonal kernel not like the others
    for w in (other, changed):
        up.weight.data = w
        assert up.shared_kernel() is None
    up.weight.data, up.weight.requires_grad = weight, True
    assert up.shared_kernel() is None


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
def test_only_the_frozen_upsamplers_run_class_by_class(cls):
    from minifcn import nn
    paper, fixed = cls(**TINY), cls(upsampling="fixed", **TINY)
    ups = [name.rstrip(".") for name, m in paper.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    final = max(ups, key=lambda name: getattr(paper, name).stride[0])
    assert len(ups) == {FCN32s: 1, FCN16s: 2, FCN8s: 3}[cls]
    for name in ups:
        assert (getattr(paper, name).shared_kernel() is not None) == (name == final)
        assert getattr(fixed, name).shared_kernel() is not None


def test_bilinear_kernel_interpolates():
    """A 2x upsampler with the bilinear kernel reproduces a linear ramp away from the borders."""
    assert bilinear_kernel(4)[1].tolist() == pytest.approx([0.1875, 0.5625, 0.5625, 0.1875])
    assert bilinear_kernel(3).tolist() == [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]]
    ramp = np.tile(np.arange(8.0), (8, 1))[None, None]
    up = conv_transpose2d(ramp, bilinear_kernel(4)[None, None].astype(np.float64), stride=2, padding=1).data[0, 0]
    inner = up[4:-4, 2:-2]
    np.testing.assert_allclose(np.diff(inner, axis=1), 0.5)


def test_upsamplers_are_bilinear_per_class_and_can_be_frozen():
    m = FCN8s(**TINY)
    w = m.upscore8.weight.data
    assert np.array_equal(w[2, 2], bilinear_kernel(16)) and not w[2, 3].any() and m.upscore8.bias is None
    assert not m.score_fr.weight.data.any() and not m.score_pool3.weight.data.any()
    fixed = FCN32s(learnable=False, **TINY)
    x = Tensor(np.random.default_rng(0).standard_normal((1, 3, 20, 20)).astype(np.float32))
    fixed.score_fr.weight.data[:] = 0.1
    fixed(x).sum().backward()
    assert fixed.upscore.weight.grad is None and fixed.score_fr.weight.grad is not None


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
def test_positional_arguments_keep_their_order(cls):
    """num_classes, width, fc_width, input_mode, learnable, seed: the order callers have used since 0.1."""
    m = cls(5, 0.0625, 32, "pad32", False, 3)
    assert m.config == cls(num_classes=5, width=0.0625, fc_width=32, input_mode="pad32", learnable=False,
                           seed=3).config
    assert m.score_fr.weight.shape[0] == 5 and m.fc7.weight.shape[0] == 32 and m.input_mode == "pad32"
    assert m.upsampling == "fixed" and np.array_equal(m.conv1_1.weight.data, cls(5, 0.0625, 32, "pad32", False,
                                                                                   3).conv1_1.weight.data)


def test_staged_training_copies_what_carries_over():
    m32 = FCN32s(seed=1, **TINY)
    m32.score_fr.weight.data[:] = 0.5
    m16 = FCN16s.from_fcn32s(m32)
    m8 = FCN8s.from_fcn16s(m16)
    for m in (m16, m8):
        assert np.array_equal(m.conv3_1.weight.data, m32.conv3_1.weight.data)
        assert np.array_equal(m.score_fr.weight.data, m32.score_fr.weight.data)
        assert not m.score_pool4.weight.data.any()
    # with zero skip scores, 16s predicts what 32s did (up to the different upsampling path)
    x = np.random.default_rng(0).standard_normal((1, 3, 40, 40)).astype(np.float32)
    assert run(m16, x).shape == run(m32, x).shape


def test_state_dict_names_match_pytorch_fcn():
    names = list(FCN8s(**TINY).state_dict())
    assert names[:4] == ["conv1_1.weight", "conv1_1.bias", "conv1_2.weight", "conv1_2.bias"]
    assert names[26:] == ["fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias", "score_fr.weight", "score_fr.bias",
                          "score_pool3.weight", "score_pool3.bias", "score_pool4.weight", "score_pool4.bias",
                          "upscore2.weight", "upscore8.weight", "upscore_pool4.weight"]


def test_convolutionalized_classifier_equals_classifier_and_maps_larger_inputs():
    clf = VGGClassifier(num_classes=4, width=1 / 32, fc_width=16, input_size=64, seed=3)
    clf.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    fcn = convolutionalize(clf)
    np.testing.assert_allclose(run(fcn, x)[:, :, 0, 0], run(clf, x), rtol=1e-4, atol=1e-5)
    assert run(fcn, np.zeros((1, 3, 160, 128), np.float32)).shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match="built for 64x64"):
        run(clf, np.zeros((1, 3, 96, 96), np.float32))


@pytest.mark.parametrize("head", ["flatten", "average"])
def test_classifier_trains_in_float32(head):
    """A float32 batch keeps the logits and every gradient float32 (the average head's mean once made them
    float64, and the whole backward ran in double precision at twice the cost)."""
    clf = VGGClassifier(num_classes=4, width=1 / 32, fc_width=16, input_size=64, batchnorm=True, head=head)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    logits = clf(Tensor(x))
    assert logits.dtype == np.float32
    F.softmax_cross_entropy(logits, np.array([1, 3])).backward()
    assert {p.grad.dtype for p in clf.parameters()} == {np.dtype(np.float32)}


def test_summary_gives_the_table1_row():
    s = summary(FCN8s(width=1 / 16, fc_width=64))
    assert (s["receptive_field"], s["max_stride"], s["conv_layers"]) == (404, 32, 16)
    assert s["parameters"] == sum(s["parameters_per_layer"].values())


@pytest.mark.slow
def test_full_fcn8s_has_134m_parameters():
    s = summary(FCN8s())
    assert s["parameters"] == 134_489_759  # VGG16 convs 14.7M + fc6 102.8M + fc7 16.8M + scores + upsamplers
    assert s["parameters_per_layer"]["fc6"] == 512 * 4096 * 49 + 4096


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="'pad7'"):
        FCN8s(input_mode="pad7")
    with pytest.raises(ValueError, match=r"\(1, 4, 10\)"):
        run(FCN8s(**TINY), np.zeros((1, 4, 10), np.float32))
