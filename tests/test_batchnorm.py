"""BatchNorm2d as a layer of the engine: gradients against finite differences and PyTorch, train and eval
modes, running statistics saved with the weights, and fold_batchnorm exact."""

import dataclasses

import numpy as np
import pytest

from minifcn import Tensor, gradcheck, nn, no_grad
from minifcn import functional as F


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (1, 3, 2, 5), (4, 1, 1, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_finite_differences(shape, training):
    rng = np.random.default_rng(sum(shape))
    x = Tensor(rng.standard_normal(shape) * 3 + 1, requires_grad=True)
    gamma = Tensor(rng.standard_normal(shape[1]), requires_grad=True)
    beta = Tensor(rng.standard_normal(shape[1]), requires_grad=True)
    mean, var = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    assert gradcheck(lambda a, g, b: F.batch_norm(a, g, b, mean.copy(), var.copy(), training), x, gamma, beta)


def test_training_normalises_each_channel_and_moves_the_running_statistics():
    bn = nn.BatchNorm2d(3, momentum=0.25)
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)) * np.array([1, 2, 3])[None, :, None, None] + 5
    y = bn(Tensor(x.astype(np.float32))).numpy()
    assert np.allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5) and np.allclose(y.std(axis=(0, 2, 3)), 1, atol=1e-3)
    assert np.allclose(bn.running_mean, 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert np.allclose(bn.running_var, 0.75 + 0.25 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)  # unbiased
    bn.eval()
    before = bn.running_mean.copy()
    z = bn(Tensor(x.astype(np.float32))).numpy()
    assert np.array_equal(bn.running_mean, before)  # eval never moves them
    want = (x - bn.running_mean[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    assert np.allclose(z, want, rtol=1e-4, atol=1e-4)


def test_one_value_per_channel_is_refused_in_training():
    with pytest.raises(ValueError, match="no variance"):
        nn.BatchNorm2d(2)(Tensor(np.zeros((1, 2, 1, 1), np.float32)))


@dataclasses.dataclass
class Settings:  # save_checkpoint stores a run's settings (a dataclass) as JSON beside the arrays
    width: float = 1.0


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(0))
        self.bn = nn.BatchNorm2d(4)


def test_running_statistics_are_saved_and_loaded_with_the_weights(tmp_path):
    from minifcn.checkpoint import save_checkpoint
    net = ConvBN()
    net.bn(net.conv(Tensor(np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32))))
    state = net.state_dict()
    assert {"bn.running_mean", "bn.running_var", "bn.weight", "conv.weight"} <= set(state)
    other = ConvBN().load_state_dict(state)
    assert np.array_equal(other.bn.running_mean, net.bn.running_mean) and other.bn.running_mean is not state[
        "bn.running_mean"]
    with pytest.raises(ValueError, match="missing.*bn.running_var"):
        ConvBN().load_state_dict({k: v for k, v in state.items() if k != "bn.running_var"})
    with pytest.raises(ValueError, match="bn.running_mean: checkpoint shape"):
        ConvBN().load_state_dict({**state, "bn.running_mean": np.zeros(5)})
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, Settings(), net)
    with np.load(path) as z:
        assert np.array_equal(z["model/bn.running_var"], net.bn.running_var)


@pytest.mark.parametrize("stride, padding, bias", [(1, 1, True), (2, 0, False), (2, 2, True)])
def test_fold_batchnorm_is_exact(stride, padding, bias):
    rng = np.random.default_rng(stride + padding)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=padding, bias=bias, rng=rng)
    bn = nn.BatchNorm2d(5)
    bn.weight.data[:] = rng.uniform(0.5, 2, 5)
    bn.bias.data[:] = rng.standard_normal(5)
    bn.running_mean[:] = rng.standard_normal(5)
    bn.running_var[:] = rng.uniform(0.2, 3, 5)
    bn.eval()
    x = Tensor(rng.standard_normal((2, 3, 9, 8)).astype(np.float32))
    folded = nn.fold_batchnorm(conv, bn)
    with no_grad():
        want, got = bn(conv(x)).numpy(), folded(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert folded.weight.shape == conv.weight.shape and folded.bias.shape == (5,)


@pytest.mark.torch
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_matches_pytorch(training):
    torch = pytest.importorskip("torch", reason="the PyTorch cross-check needs the 'crosscheck' extra")
    rng = np.random.default_rng(5)
    mine, ref = nn.BatchNorm2d(4, momentum=0.2), torch.nn.BatchNorm2d(4, momentum=0.2).double()
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    mine.weight.data, mine.bias.data = gamma.copy(), beta.copy()  # float64 throughout, as the oracle
    mine.running_mean, mine.running_var = mine.running_mean.astype(np.float64), mine.running_var.astype(np.float64)
    with torch.no_grad():
        ref.weight[:], ref.bias[:] = torch.tensor(gamma), torch.tensor(beta)
    for step in range(3):  # three training batches move the running statistics
        x = rng.standard_normal((3, 4, 5, 6)) * 2 + step
        mine(Tensor(x)), ref(torch.tensor(x))
    mine.train(training), ref.train(training)
    x = rng.standard_normal((3, 4, 5, 6)) * 2
    g = rng.standard_normal(x.shape)
    xm, xt = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ym, yt = mine(xm), ref(xt)
    (ym * Tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(ym.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(mine.weight.grad, ref.weight.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(mine.bias.grad, ref.bias.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(mine.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(mine.running_var, ref.running_var.numpy(), rtol=1e-12)
