"""The PyTorch speed peer computes the same function as vaejax (skipped without torch)."""

import sys

import pytest
from conftest import ROOT

pytest.importorskip("torch")
sys.path.insert(0, str(ROOT))
from benchmarks.train_speed import same_function  # noqa: E402


@pytest.mark.parametrize("name", ["conv_vae", "dense_ae"])
def test_peer_has_the_same_parameters_and_loss(mnist, name):
    check = same_function(name, mnist.test_images)
    assert check["params_vaejax"] == check["params_torch"]
    assert check["loss_relative_difference"] < 1e-5
