"""The training benchmark's fused ensemble computes what its five members compute."""
import numpy as np
import pytest

from benchmarks.train_throughput import fused_members
from models.networks import build_network
from pipeline.stages import STAGE_BY_ID


@pytest.mark.parametrize("grouped_conv2", [False, True])
def test_fused_members_compute_what_the_members_compute(grouped_conv2):
    stage = STAGE_BY_ID["ensemble"]
    members = [build_network(stage.network, seed=seed) for seed in range(stage.members)]
    rng = np.random.default_rng(0)
    for member in members:  # the softmax layer starts at zero: every member would answer 0.1 for every class
        output = member.layers[-1]
        output.kernel.assign(rng.normal(0, 0.01, output.kernel.shape).astype(np.float32))
    images = rng.random((16, 28, 28, 1), dtype=np.float32)
    expected = np.stack([member(images, training=False) for member in members], axis=1)
    assert np.abs(expected[:, 0] - expected[:, 1]).max() > 0.01  # members differ, so a wrong channel split shows

    fused = fused_members(members, grouped_conv2)
    np.testing.assert_allclose(fused(images, training=False), expected, atol=1e-5)
