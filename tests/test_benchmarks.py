"""The training benchmark: its fused ensemble computes what its five members compute; it follows the presets; its
PyTorch peer builds the same networks and takes turns with the rest, or without torch is skipped with a line.
The vote ceiling: pooled networks vote as counted by hand. The ink figures: digits of known ink."""
import json
import sys

import numpy as np
import pytest

from benchmarks import ink
from benchmarks.train_throughput import fused_members
from mnist_cnn_progression.models.networks import build_network
from mnist_cnn_progression.pipeline.idx import write_idx
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID, STAGES


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


def test_the_benchmark_times_each_stage_at_its_own_preset_batch(tmp_path):
    """A preset may set the batch per stage (the fast preset trains conv1 at 64): the benchmark takes the stage's."""
    from benchmarks.train_throughput import main
    from mnist_cnn_progression.pipeline import config
    result = main(["--stages", "conv1", "--images", "640", "--repeats", "1", "--compare", "", "--precisions", "",
                   "--no-torch", "--out", str(tmp_path / "throughput.json")])
    batches = [row["batch"] for row in result["rows"]]
    assert batches == [config.for_stage(config.PRESETS[name], "batch_size", "conv1") for name in ("seed", "fast")]
    assert all(row["images_per_second_median"] > 0 for row in result["rows"])


def test_the_benchmark_times_each_mixed_policy_asked_for_beside_float32_and_names_the_cpus_flags(tmp_path, capsys):
    from benchmarks.train_throughput import main
    from mnist_cnn_progression.pipeline import precision
    result = main(["--stages", "baseline", "--images", "640", "--repeats", "1", "--compare", "", "--no-torch",
                   "--precisions", "mixed_bfloat16,mixed_float16", "--out", str(tmp_path / "throughput.json")])
    assert [(row["method"], row["batch"]) for row in result["rows"]] == [
        (method, batch) for batch in (10, 128)
        for method in ("own step", "own step, mixed_bfloat16", "own step, mixed_float16")]
    assert all(row["images_per_second_median"] > 0 for row in result["rows"])
    flags = sorted(precision.cpu_flags() & set(precision.BF16_CPU_FLAGS))
    written = json.loads((tmp_path / "throughput.json").read_text())
    assert written["cpu_bfloat16_flags"] == flags and written["mixed_precisions"] == ["mixed_bfloat16", "mixed_float16"]
    assert written["auto_precision"] == precision.resolve("auto", precision.this_machine()).as_entry()
    assert f"CPU bfloat16 flags: {', '.join(flags) or 'none'}" in capsys.readouterr().out


def test_without_torch_the_benchmark_says_it_skipped_the_pytorch_peer_and_times_the_rest(tmp_path, capsys,
                                                                                        monkeypatch):
    import benchmarks
    from benchmarks.train_throughput import main
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` meets where torch is not installed
    monkeypatch.delitem(sys.modules, "benchmarks.torch_peer", raising=False)
    monkeypatch.delattr(benchmarks, "torch_peer", raising=False)
    result = main(["--stages", "baseline", "--images", "640", "--repeats", "1", "--compare", "",
                   "--precisions", "mixed_bfloat16", "--out", str(tmp_path / "throughput.json")])
    assert "PyTorch eager peer skipped: torch is not installed" in capsys.readouterr().out
    assert [row["method"] for row in result["rows"]] == ["own step", "own step, mixed_bfloat16"] * 2
    assert json.loads((tmp_path / "throughput.json").read_text())["torch"] is None


def keras_weights_into(torch_model, keras_model):
    """The Keras network's weights, in order, laid out as torch holds them (kernels [out, in, ...])."""
    import torch
    layouts = {4: (3, 2, 0, 1), 2: (1, 0), 1: (0,)}
    names = [name for name in torch_model.state_dict() if not name.endswith("num_batches_tracked")]
    assert len(names) == len(keras_model.weights)
    weights = [np.ascontiguousarray(np.transpose(weight, layouts[weight.ndim])) for weight in keras_model.get_weights()]
    torch_model.load_state_dict({name: torch.from_numpy(weight) for name, weight in zip(names, weights)}, strict=False)


@pytest.fixture
def torch_peer():
    pytest.importorskip("torch", reason="the PyTorch peer is optional: pip install torch to test it")
    from benchmarks import torch_peer
    return torch_peer


@pytest.mark.parametrize("stage_id", [stage.id for stage in STAGES])
def test_the_pytorch_peer_builds_the_stages_network(torch_peer, stage_id):
    """The same weights, and with the Keras network's weights the same probabilities (pooling before the bias, L2
    pooling, the flatten order, batch normalisation's epsilon)."""
    import torch
    network = STAGE_BY_ID[stage_id].network
    keras_model, torch_model = build_network(network), torch_peer.torch_network(network).eval()
    assert sum(p.numel() for p in torch_model.parameters()) == sum(
        int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    rng = np.random.default_rng(0)
    output = keras_model.layers[-1]  # it starts at zero: every network would answer 0.1 for every class
    output.kernel.assign(rng.normal(0, 0.05, output.kernel.shape).astype(np.float32))
    keras_weights_into(torch_model, keras_model)
    images = rng.random((8, 28, 28, 1), dtype=np.float32)
    with torch.no_grad():
        probabilities = torch.softmax(torch_model(torch.from_numpy(images).permute(0, 3, 1, 2)), dim=1).numpy()
    np.testing.assert_allclose(probabilities, keras_model(images, training=False), atol=1e-5)


def test_the_benchmark_times_the_pytorch_peer_beside_own_step(torch_peer, tmp_path, capsys):
    from benchmarks.train_throughput import main
    result = main(["--stages", "conv2_relu_l2pool", "--images", "640", "--repeats", "1", "--compare", "",
                   "--precisions", "mixed_bfloat16", "--out", str(tmp_path / "throughput.json")])
    methods = ["own step", "own step, mixed_bfloat16", "PyTorch eager", "PyTorch eager, bf16 autocast"]
    assert [(row["method"], row["batch"], row["optimizer"]) for row in result["rows"]] == [
        (method, batch, optimizer) for batch, optimizer in ((10, "sgd"), (128, "adam")) for method in methods]
    assert all(row["images_per_second_median"] > 0 and row["ratio_to_own_step_median"] > 0 for row in result["rows"])
    assert json.loads((tmp_path / "throughput.json").read_text())["torch"] == torch_peer.describe()
    printed = capsys.readouterr().out
    assert "skipped" not in printed and "| conv2_relu_l2pool | PyTorch eager, bf16 autocast | 128 | adam |" in printed


def fake_run(root, name: str, correct: np.ndarray, labels: np.ndarray):
    """A run directory whose networks answer each test digit right where `correct` [networks, digits] says."""
    wrong_class = (labels + 1) % 10
    answers = np.where(correct, labels, wrong_class)
    probabilities = np.eye(10, dtype=np.float32)[answers] * 0.9 + 0.01
    (root / name / "stages" / "ensemble").mkdir(parents=True)
    (root / name / "data").mkdir()
    np.save(root / name / "stages" / "ensemble" / "member_probabilities.npy", probabilities)
    np.save(root / name / "data" / "test_labels.npy", labels)
    return root / name


def test_the_vote_ceiling_pools_the_networks_of_several_runs(tmp_path):
    """Five networks in two runs; digit 1 is right only for networks a1 and b2, so 3 of the 10 votes of 3 get it."""
    from benchmarks.vote_ceiling import main
    labels = np.array([3, 5, 7])
    a = fake_run(tmp_path, "a", np.array([[1, 0, 1], [0, 1, 1]], bool), labels)
    b = fake_run(tmp_path, "b", np.array([[1, 0, 1], [1, 0, 1], [1, 1, 1]], bool), labels)
    result = main([str(a), str(b), "--size", "3", "--out", str(tmp_path / "ceiling.json")])
    assert [run["networks"] for run in result["runs"]] == [[2 / 3, 2 / 3], [2 / 3, 2 / 3, 1.0]]
    assert result["vote_of_pool"] == 2 / 3 and result["digits_most_networks_miss"] == 1
    spread = result["vote_of_size"]
    assert spread["choices"] == 10 and (spread["min"], spread["max"]) == (2 / 3, 1.0)
    assert spread["mean"] == pytest.approx((3 * 1.0 + 7 * 2 / 3) / 10)
    assert json.loads((tmp_path / "ceiling.json").read_text()) == result


def test_the_ink_figures_cover_both_files_and_count_the_images_under_the_threshold(tmp_path):
    """Digits of known ink (k full pixels hold k): the least, the median and the count under MIN_INK."""
    def digits(*inks):
        images = np.zeros((len(inks), 28 * 28), np.uint8)
        for image, k in zip(images, inks):
            image[:k] = 255
        return images.reshape(-1, 28, 28)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", digits(50, 20, 5))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", digits(30, 70), compress=False)
    result = ink.main([str(tmp_path), "--out", str(tmp_path / "ink.json")])
    assert (result["digits"], result["min"], result["median"], result["below_min_ink"]) == (5, 5.0, 30.0, 1)
    assert json.loads((tmp_path / "ink.json").read_text()) == result
