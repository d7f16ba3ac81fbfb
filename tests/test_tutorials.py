"""Every tutorial runs top to bottom and writes its figures (into a temporary folder, not the repo's), and
its exercises work as exercises: each check fails on the learner's empty answer and on a plausible wrong
one, and passes on the solution.

An exercise is three cells, tagged ``exercise-N`` (the learner's answer), ``check-N`` (asserts) and
``solution-N``: a markdown cell with the solution folded in ``<details>``, after the check, so that Run
All never runs it. The test runs each notebook once, as saved (every check must fail), with cells added
at its end: each mutant answer then its check (must fail), the solution then its check (must pass).
"""

import os
import re

import pytest

nbformat = pytest.importorskip("nbformat", reason="executing notebooks needs the dev extra (nbformat)")
from nbclient import NotebookClient  # noqa: E402

TUTORIALS = os.path.join(os.path.dirname(__file__), "..", "tutorials")
FIGURES = {
    "01_fully_convolutional": ["fig01_convolutionalization", "fig02_1x1_vs_fc", "fig03_any_input_size"],
    "02_transposed_convolution": ["fig04_transposed_conv_example", "fig05_conv_arithmetic"],
    "03_convolution_as_matrix": ["fig06_conv_matrix", "fig07_transposed_matrix",
                                 "fig08_gradient_is_transposed_conv"],
    "04_upsampling_and_sizes": ["fig09_size_mismatch", "fig10_pad_and_crop"],
    "05_skip_architecture": ["fig11_low_and_high_level_features", "fig12_fcn_32s_16s_8s"],
    "06_training_and_results": ["fig13_results"],
    "07_features_from_real_photos": ["fig14_tinyimagenet_conv1", "fig15_tinyimagenet_top5",
                                     "fig16_tinyimagenet_heatmap"],
}

# For each exercise, plausible wrong answers: each is run after the exercise's own cell, as a learner's
# edit would be, and its check must fail.
MUTANTS = {
    "01_fully_convolutional": {
        1: ["def receptive_field_of(layers):\n    r, j = 1, 1\n    for k, s in layers:\n        j *= s\n"
            "        r += (k - 1) * j  # stride applied before the window: one step too far\n    return r, j",
            "def receptive_field_of(layers):\n    r, j = 1, 1\n    for k, s in layers:\n        r += k - 1\n"
            "        j *= s  # the jump forgotten in r\n    return r, j"],
        2: ["conv_weight = W7.T.reshape(W7.shape[1], W7.shape[0], 1, 1)  # in and out swapped"],
    },
    "02_transposed_convolution": {
        1: ["def scatter(x, k, s):\n    n, m = x.shape\n    out = np.zeros(((n - 1) * s + k.shape[0], (m - 1) * s + k.shape[1]))\n"
            "    for i in range(n):\n        for j in range(m):\n"
            "            out[i: i + k.shape[0], j: j + k.shape[1]] += x[i, j] * k  # the stride forgotten\n    return out"],
        2: ["my_sizes = [(i - 1) * s - 2 * p + k for i, k, s, p, a in cases]  # output padding forgotten",
            "my_sizes = [(i - 1) * s + 2 * p + k + a for i, k, s, p, a in cases]  # padding's sign flipped"],
    },
    "03_convolution_as_matrix": {
        1: ["def column(ih, iw, w, H, W, s=1, p=0):\n    kh, kw = w.shape\n"
            "    OH, OW = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1\n    col = np.zeros(OH * OW)\n"
            "    for oh in range(OH):\n        for ow in range(OW):\n"
            "            i, j = ih - oh * s, iw - ow * s  # the padding forgotten\n"
            "            if 0 <= i < kh and 0 <= j < kw:\n                col[oh * OW + ow] = w[i, j]\n    return col",
            "def column(ih, iw, w, H, W, s=1, p=0):\n    kh, kw = w.shape\n"
            "    OH, OW = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1\n    col = np.zeros(OH * OW)\n"
            "    for oh in range(OH):\n        for ow in range(OW):\n            i, j = ih - oh * s + p, iw - ow * s + p\n"
            "            if 0 <= i < kh and 0 <= j < kw:\n"
            "                col[oh * OW + ow] = w[kh - 1 - i, kw - 1 - j]  # the flipped kernel: that is C^T's\n"
            "    return col"],
        2: ["def nonzeros(H, W):\n    return 9 * H * W  # the padding's missing taps forgotten",
            "def nonzeros(H, W):\n    return (3 * H - 2) * (3 * H - 2)  # W forgotten"],
    },
    "04_upsampling_and_sizes": {
        1: ["def land(layers, x=0.0):\n    for kind, k, s, p in layers:\n"
            "        x = s * x - (k - 1) / 2 + p if kind == 'up' else (x + p - (k - 1) / 2) / s  # signs flipped\n"
            "    return x\n\nafter_up2 = land(BODY + FC + [('up', 4, 2, 0)])\n"
            "offset_pool4 = land(to_pool4) - after_up2\n"
            "offset_final = land(BODY + FC + [('up', 4, 2, 0), ('up', 32, 16, 0)])",
            "def land(layers, x=0.0):\n    for kind, k, s, p in layers:\n"
            "        x = s * x + (k - 1) / 2 - p if kind == 'up' else (x + p - k / 2) / s  # the centre off by half\n"
            "    return x\n\nafter_up2 = land(BODY + FC + [('up', 4, 2, 0)])\n"
            "offset_pool4 = land(to_pool4) - after_up2\n"
            "offset_final = land(BODY + FC + [('up', 4, 2, 0), ('up', 32, 16, 0)])"],
        2: ["smallest = 100  # the released nets' value, not the smallest"],
    },
    "05_skip_architecture": {
        1: ["cm = ConfusionMatrix(21)\nfor i in range(len(val)):\n    y = val[i][1]\n"
            "    cm.update(seen_at_stride(y, 2, net.upsampler(4, 2))[None], y[None])  # stride 2\n"
            "seen_4 = cm.scores()['mean_iu']",
            "cm = ConfusionMatrix(21)\nfor i in range(len(val)):\n    y = val[i][1]\n"
            "    cm.update(seen_at_stride(y, 4, net.upsampler(8, 4))[None], y[None])\n"
            "seen_4 = cm.scores()['pixel_acc']  # the wrong metric",
            "cm = ConfusionMatrix(21)\nfor i in range(len(val)):\n    y = val[i][1]\n"
            "    cm.update(seen_at_stride(y, 4, net.upsampler(8, 4))[None], y[None])\n"
            "seen_4 = cm.scores()['mean_acc']  # the wrong metric"],
        2: ["with no_grad():\n    up2 = net.upscore2(score_fr) + net.score_pool4(t['pool4'])\n"
            "    fused = net.upscore8(net.upscore_pool4(up2))[:, :, :64, :64]  # pool3's scores forgotten"],
    },
    "06_training_and_results": {
        1: ["tp = np.diag(n)\nclass_acc = tp / n.sum(axis=0)  # of each predicted class: precision, not accuracy\n"
            "class_iu = tp / (n.sum(axis=1) + n.sum(axis=0) - tp)",
            "tp = np.diag(n)\nclass_acc = tp / n.sum(axis=1)\nclass_iu = tp / (n.sum(axis=1) + n.sum(axis=0))  # tp twice"],
        2: ["loss_if_void_were_background = F.softmax_cross_entropy(z, t).item()  # void still ignored",
            "loss_if_void_were_background = 0.0"],
    },
    "07_features_from_real_photos": {
        1: ["def top_k(p, k):\n    return np.argsort(p)[:k]  # the smallest, not the largest",
            "def top_k(p, k):\n    return np.argsort(p)[-k:]  # the right five, least probable first"],
        2: ["def tile_of(m):\n    return np.unravel_index(m.argmax(), m.shape)  # the block, not its tile",
            "def tile_of(m):\n    y, x = np.unravel_index(m.argmax(), m.shape)\n    return x // 2, y // 2  # swapped"],
    },
}


def read(name):
    return nbformat.read(os.path.join(TUTORIALS, f"{name}.ipynb"), as_version=4)


def tagged(book, prefix):
    """{N: (index, cell)} of the cells tagged ``prefix-N``."""
    found = {}
    for i, cell in enumerate(book.cells):
        for tag in cell.metadata.get("tags", []):
            match = re.fullmatch(rf"{prefix}-(\d+)", tag)
            if match:
                found[int(match.group(1))] = (i, cell)
    return found


def solution_code(cell):
    match = re.search(r"<details>.*?```python\n(.*?)\n```.*?</details>", cell.source, re.S)
    assert match, cell.source[:200]
    return match.group(1)


def failed(cell):
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def test_the_tutorials_folder_holds_exactly_these_notebooks():
    assert sorted(f[:-6] for f in os.listdir(TUTORIALS) if f.endswith(".ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_each_solution_is_folded_after_its_check_where_run_all_cannot_run_it(name):
    book = read(name)
    answers, checks, solutions = (tagged(book, p) for p in ("exercise", "check", "solution"))
    assert sorted(answers) == sorted(checks) == sorted(solutions) == sorted(MUTANTS[name]) and len(answers) >= 2
    for n in answers:
        assert answers[n][0] < checks[n][0] < solutions[n][0]
        assert answers[n][1].cell_type == checks[n][1].cell_type == "code"
        assert solutions[n][1].cell_type == "markdown" and solution_code(solutions[n][1]).strip()
    assert not any("solution" in " ".join(c.metadata.get("tags", [])) for c in book.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_tutorial_runs_writes_its_figures_and_its_exercises_can_fail(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIFCN_FIGURES", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = read(name)
    answers, checks, solutions = (tagged(book, p) for p in ("exercise", "check", "solution"))
    added = []  # (cell, must the cell fail?)
    for n in sorted(answers):
        stub, check = answers[n][1].source, checks[n][1].source
        for mutant in MUTANTS[name][n]:
            added += [(nbformat.v4.new_code_cell(stub + "\n" + mutant), False),
                      (nbformat.v4.new_code_cell(check), True)]
        added += [(nbformat.v4.new_code_cell(stub + "\n" + solution_code(solutions[n][1])), False),
                  (nbformat.v4.new_code_cell(check), False)]
    saved = len(book.cells)
    book.cells += [cell for cell, _ in added]
    NotebookClient(book, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": TUTORIALS}}).execute()
    own_checks = {i for i, _ in checks.values()}
    for i, cell in enumerate(book.cells[:saved]):
        assert failed(cell) == (i in own_checks), f"cell {i}: {cell.source[:120]!r}"  # only the checks fail
    for k, (cell, must_fail) in enumerate(added):
        assert failed(book.cells[saved + k]) == must_fail, (cell.source[:300], book.cells[saved + k].outputs)
    written = sorted(f[:-4] for f in os.listdir(tmp_path) if f.endswith(".png"))
    assert written == sorted(FIGURES[name])
    assert all(os.path.getsize(tmp_path / f"{f}.png") > 10_000 for f in written)  # a real picture, not a blank
