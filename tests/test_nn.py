import numpy as np
import pytest

from minifcn import Tensor, nn
from minifcn.functional import softmax_cross_entropy
from minifcn.optim import SGD, Adam


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, rng=rng)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 2, 1, rng=rng))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.body(self.conv(x)))


def test_state_dict_names_follow_attribute_paths():
    assert list(Tiny().state_dict()) == ["conv.weight", "conv.bias", "body.1.weight", "body.1.bias"]


def test_state_dict_round_trip_and_errors():
    a, b = Tiny(), Tiny()
    b.conv.weight.data += 1
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(ValueError, match=r"missing \['conv.bias'\]"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "conv.bias"})
    with pytest.raises(ValueError, match=r"conv.weight: checkpoint shape \(1,\)"):
        b.load_state_dict({**a.state_dict(), "conv.weight": np.zeros(1)})


def test_train_and_eval_switch_dropout():
    m, x = Tiny(), Tensor(np.ones((1, 3, 4, 4), np.float32))
    m.eval()
    assert not m.drop.training and np.array_equal(m(x).data, m(x).data)
    m.train()
    assert m.body.training and not np.array_equal(m(x).data, m(x).data)


def test_sgd_momentum_and_weight_decay_by_hand():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    # g = grad + 0.5 p; v = 0.9 v + g; p -= 0.1 v
    for expected in ([0.85, -2.2], [0.5725, -2.57]):
        p.grad = np.array([1.0, 3.0])
        opt.step()
        np.testing.assert_allclose(p.data, expected)


def test_adam_matches_the_update_rule_written_out_per_element():
    p = nn.Parameter(np.array([1.0, -2.0, 0.5]))
    opt = Adam([p], lr=0.1, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.5)
    grads = [[1.0, 3.0, 0.0], [-2.0, 0.5, 0.0], [0.1, 0.1, 4.0]]
    expected, m, v = [1.0, -2.0, 0.5], [0.0] * 3, [0.0] * 3
    for t, g in enumerate(grads, start=1):
        for i in range(3):  # plain Python floats, one element at a time
            m[i] = 0.8 * m[i] + 0.2 * g[i]
            v[i] = 0.9 * v[i] + 0.1 * g[i] ** 2
            decayed = expected[i] - 0.1 * 0.5 * expected[i]
            expected[i] = decayed - 0.1 * (m[i] / (1 - 0.8 ** t)) / ((v[i] / (1 - 0.9 ** t)) ** 0.5 + 1e-3)
        p.grad = np.array(g)
        opt.step()
        np.testing.assert_allclose(p.data, expected, rtol=1e-12)


def test_adam_state_round_trips_through_state_dict():
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(3))
    first, second = Adam([a], lr=0.1), Adam([b], lr=0.1)
    a.grad = b.grad = np.array([1.0, -1.0, 2.0])
    first.step()
    second.load_state_dict(first.state_dict())
    b.data = a.data.copy()
    first.step(), second.step()
    np.testing.assert_array_equal(a.data, b.data)


def test_sgd_groups_and_frozen_parameters():
    w, b, frozen = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2), requires_grad=False)
    opt = SGD([{"params": [w, frozen]}, {"params": [b], "lr": 0.2}], lr=0.1)
    for p in (w, b, frozen):
        p.grad = np.ones(2)
    opt.step()
    assert w.data.tolist() == [0.9, 0.9] and b.data.tolist() == [0.8, 0.8] and frozen.data.tolist() == [1, 1]


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.02)])
def test_a_few_steps_lower_the_loss(make):
    m = Tiny()
    m.eval()
    rng = np.random.default_rng(0)
    x, y = Tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32)), rng.integers(0, 2, (2, 6, 6))
    opt = make(m.parameters())
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = softmax_cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
