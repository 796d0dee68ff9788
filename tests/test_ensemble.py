"""export.bundle / export.fuse / inference.ensemble: the fused graph is the vote of the members."""
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from conftest import TRAIN
from mnist_cnn_progression.inference.files import sha256
from mnist_cnn_progression.inference.ensemble import Ensemble, training_data_warning
from mnist_cnn_progression.export.fuse import member_output, vote_model
from mnist_cnn_progression.inference.vote import vote


def test_fused_graph_gives_the_vote_of_the_separate_members(bundle, mnist_digits):
    images = mnist_digits[0][TRAIN:]
    fused = Ensemble.load(bundle).predict(images)
    separate = Ensemble.load(bundle, fused=False).predict(images)
    members = [ort.InferenceSession(str(bundle / f"members/member_{k}.onnx")) for k in range(5)]
    classes, votes, mean = vote(np.stack([m.run(None, {"images": images})[0] for m in members]))
    for result in (fused, separate):
        assert (result.classes == classes).all() and (result.votes == votes).all()
        assert np.abs(result.probabilities - mean).max() <= 1e-6
    assert fused.classes.dtype == np.int64 and fused.votes.sum(axis=1).tolist() == [5] * len(images)


def test_vote_graph_breaks_ties_like_the_shared_rule():
    probabilities = np.random.default_rng(0).dirichlet(np.full(10, 0.3), size=(5, 2000)).astype(np.float32)
    split_votes = [(3, 3, 7, 7, 1), (2, 2, 5, 5, 5), (0, 1, 2, 3, 4), (9, 9, 0, 0, 4)]
    for row, classes in enumerate(split_votes):
        probabilities[:, row] = np.eye(10)[list(classes)] * 0.6 + 0.04
    probabilities[:, 0, 7] += 0.01  # the 3-3-7-7-1 tie goes to 7, the higher mean
    session = ort.InferenceSession(vote_model(5).SerializeToString())
    classes, votes, mean = session.run(None, {member_output(k): probabilities[k] for k in range(5)})
    expected = vote(probabilities)
    assert (classes == expected[0]).all() and (votes == expected[1]).all()
    assert classes[:4].tolist() == [7, 5, 0, 0]


# Five members' classes for four images, and what the vote must give, worked out by hand: most votes win, and
# among tied classes the highest mean probability (the probability FIXED_EXTRA adds decides rows 0 and 2).
FIXED_MEMBER_CLASSES = [(3, 3, 7, 7, 1), (2, 2, 5, 5, 5), (0, 1, 2, 3, 4), (9, 9, 9, 9, 0)]
FIXED_EXTRA = {(0, 0, 7): 0.01, (4, 2, 4): 0.1}  # (member, image, class): added probability
FIXED_CLASSES = [7, 5, 4, 9]
FIXED_VOTES = [[0, 1, 0, 2, 0, 0, 0, 2, 0, 0], [0, 0, 2, 0, 0, 3, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
               [1, 0, 0, 0, 0, 0, 0, 0, 0, 4]]


def fixed_probabilities() -> np.ndarray:
    """[5 members, 4 images, 10]: 0.64 on the member's class, 0.04 elsewhere, plus FIXED_EXTRA."""
    probabilities = np.full((5, 4, 10), 0.04, np.float32)
    for image, classes in enumerate(FIXED_MEMBER_CLASSES):
        for member, digit in enumerate(classes):
            probabilities[member, image, digit] = 0.64
    for (member, image, digit), extra in FIXED_EXTRA.items():
        probabilities[member, image, digit] += extra
    return probabilities


def test_the_vote_and_the_vote_graph_give_the_classes_and_votes_worked_out_by_hand():
    probabilities = fixed_probabilities()
    classes, votes, mean = vote(probabilities)
    assert classes.tolist() == FIXED_CLASSES and votes.tolist() == FIXED_VOTES
    np.testing.assert_allclose(mean[0, [3, 7]], [0.28, 0.282], atol=1e-6)  # (2 x 0.64 + 3 x 0.04) / 5, and + 0.01 / 5
    session = ort.InferenceSession(vote_model(5).SerializeToString())
    graph_classes, graph_votes, graph_mean = session.run(None, {member_output(k): probabilities[k] for k in range(5)})
    assert graph_classes.tolist() == FIXED_CLASSES and graph_votes.tolist() == FIXED_VOTES
    np.testing.assert_allclose(graph_mean[0, [3, 7]], [0.28, 0.282], atol=1e-6)


def test_mean_mode_takes_the_highest_mean_probability(bundle, mnist_digits):
    result = Ensemble.load(bundle).predict(mnist_digits[0][TRAIN:], mode="mean")
    assert (result.classes == result.probabilities.argmax(axis=1)).all()


def test_int8_ensemble_is_smaller_and_about_as_accurate(bundle, mnist_digits):
    manifest = json.loads((bundle / "manifest.json").read_text())
    accuracy = manifest["test_accuracy"]
    assert accuracy["float32"] > 0.8 and abs(accuracy["int8"] - accuracy["float32"]) <= 0.02
    assert manifest["calibration_images"] == 1000 and manifest["test_images"] == len(mnist_digits[0]) - TRAIN
    assert (bundle / "ensemble_int8.onnx").stat().st_size < (bundle / "ensemble.onnx").stat().st_size / 2
    images, labels = mnist_digits[0][TRAIN:], mnist_digits[1][TRAIN:]
    for fused in (True, False):
        result = Ensemble.load(bundle, int8=True, fused=fused).predict(images)
        assert (result.classes == labels).mean() == pytest.approx(accuracy["int8"])


def test_manifest_lists_every_file_with_its_hash(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"] == {"name": "images", "dtype": "float32", "shape": ["N", 28, 28, 1], "range": [0.0, 1.0]}
    assert len(manifest["members"]) == 5 and len(manifest["files"]) == 12
    for file, entry in manifest["files"].items():
        assert sha256(bundle / file) == entry["sha256"]


def test_a_run_directory_or_a_copied_bundle_loads_and_a_damaged_one_is_refused(bundle, tmp_path, mnist_digits):
    run = tmp_path / "run"
    shutil.copytree(bundle, run / "bundle")
    images = mnist_digits[0][:10]
    assert (Ensemble.load(run).predict(images).classes == Ensemble.load(bundle).predict(images).classes).all()
    with open(run / "bundle" / "members" / "member_2.onnx", "r+b") as file:
        file.seek(100)
        file.write(b"\0")
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        Ensemble.load(run, fused=False)
    with pytest.raises(FileNotFoundError, match="neither an ensemble bundle nor a run directory"):
        Ensemble.load(tmp_path)


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32)), "shape"),
    (np.full((1, 28, 28, 1), np.nan), "NaN"),
    (np.full((1, 28, 28), 255.0), r"\[0, 1\]")])
def test_bad_arrays_are_refused_with_a_plain_message(bundle, images, message):
    with pytest.raises(ValueError, match=message):
        Ensemble.load(bundle).predict(images)


def test_fused_graphs_carry_metadata_and_an_empty_batch_is_fine(bundle):
    import onnx
    properties = {p.key: p.value for p in onnx.load(bundle / "ensemble_int8.onnx").metadata_props}
    assert properties["stage"] == "ensemble" and properties["weights"] == "int8" and properties["opset"] == "17"
    assert Ensemble.load(bundle).predict(np.zeros((0, 28, 28, 1))).classes.shape == (0,)


def test_a_split_vote_or_a_low_probability_gets_a_warning():
    from mnist_cnn_progression.inference.ensemble import Prediction
    votes = np.array([[0, 5, 0, 0, 0, 0, 0, 0, 0, 0], [0, 3, 2, 0, 0, 0, 0, 0, 0, 0], [0, 5, 0, 0, 0, 0, 0, 0, 0, 0]])
    probabilities = np.full((3, 10), 0.02, np.float32)
    probabilities[:, 1] = [0.9, 0.7, 0.4]
    prediction = Prediction(np.array([1, 1, 1]), votes, probabilities)
    assert np.allclose(prediction.confidence, [0.9, 0.7, 0.4])
    assert prediction.warnings == ["", "Hard to read: only 3 of 5 networks voted 1.",
                                   "Hard to read: the networks give 1 a probability of only 40%."]


@pytest.mark.parametrize("place", ["bundle", "stages/beyond/bundle"])
def test_a_bundle_whose_run_holds_other_data_now_is_called_out_of_date(tmp_path, place):
    """The run's bundle/ and a voting stage's stages/<id>/bundle/ both look at their run's data/."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "data.json").write_text(json.dumps({"digest": "new"}))
    manifest = {"metadata": {"data": {"digest": "old"}}}
    assert "out of date" in training_data_warning(run / place, manifest)
    assert training_data_warning(run / place, {"metadata": {"data": {"digest": "new"}}}) == ""
