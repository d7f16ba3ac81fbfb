"""Every tutorial runs top to bottom and writes its figures (into a temporary folder, not the repo's)."""

import os

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
}


def test_the_tutorials_folder_holds_exactly_these_notebooks():
    assert sorted(f[:-6] for f in os.listdir(TUTORIALS) if f.endswith(".ipynb")) == sorted(FIGURES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_tutorial_runs_and_writes_its_figures(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIFCN_FIGURES", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(os.path.join(TUTORIALS, f"{name}.ipynb"), as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": TUTORIALS}}).execute()
    written = sorted(f[:-4] for f in os.listdir(tmp_path) if f.endswith(".png"))
    assert written == sorted(FIGURES[name])
    assert all(os.path.getsize(tmp_path / f"{f}.png") > 10_000 for f in written)  # a real picture, not a blank
