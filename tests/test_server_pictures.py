"""Per-picture errors and blank-image warnings, as a client of the real server process sees them (REST and gRPC).

One picture that cannot be read fails alone: its row of the `error` output
says why (and holds no prediction: class -1, zero votes), the others are
answered. An `images` input that is blank or nearly so comes back with a
warning instead of a silent, confident answer. The server is started as
tests/test_server.py starts it (a subprocess on free ports of 127.0.0.1).
"""
import base64
import io
import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import TRAIN
from mnist_cnn_progression.inference.ensemble import BLANK_WARNING, MIN_INK, Ensemble, image_ink
from mnist_cnn_progression.inference.pictures import picture_from_bytes
from test_server import PROTOCOLS, infer, metadata, png, run_dir, server  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow  # every test here talks to a server process

NOT_AN_IMAGE = "The file is not an image (PNG, JPEG, ...), a .npy array or an IDX file."
BLANK_PICTURE = "The image is blank: no digit stands out from the background."


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (84, 84), 255).save(buffer, "PNG")
    return buffer.getvalue()


def texts(values) -> list[str]:
    """A BYTES output as text: text in JSON, bytes over gRPC."""
    return [value.decode() if isinstance(value, bytes) else value for value in values]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_picture_fails_alone_and_the_others_are_answered(server, protocol, bundle, mnist_digits):
    digits = mnist_digits[0][TRAIN:TRAIN + 3]
    pictures = np.array([png(digits[0]), b"not a picture", png(digits[1]), blank_png(), png(digits[2])], dtype=object)
    good = [0, 2, 4]
    seen = np.stack([picture_from_bytes(pictures[index]) for index in good])[..., None]
    expected = Ensemble.load(bundle).predict(seen)
    answer = infer(server, protocol, {"pictures": ("BYTES", pictures)})
    assert texts(answer["error"]) == ["", NOT_AN_IMAGE, "", BLANK_PICTURE, ""]
    np.testing.assert_array_equal(answer["class"][good], expected.classes)
    np.testing.assert_array_equal(answer["votes"][good], expected.votes)
    np.testing.assert_allclose(answer["probabilities"][good], expected.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(answer["images"][good], seen)
    assert answer["warning"][::2] == expected.warnings
    failed = [1, 3]  # no prediction: nothing that could pass for one
    assert list(answer["class"][failed]) == [-1, -1]
    assert not answer["votes"][failed].any() and not answer["probabilities"][failed].any()
    assert not answer["confidence"][failed].any() and not answer["images"][failed].any()
    assert [answer["warning"][index] for index in failed] == ["", ""]


def test_rest_a_picture_that_is_not_base64_fails_alone(server, mnist_digits):
    url = f"http://127.0.0.1:{server['ports']['http']}/v2/models/ensemble/infer"
    picture = base64.b64encode(png(mnist_digits[0][TRAIN])).decode()
    body = json.dumps({"inputs": [{"name": "pictures", "datatype": "BYTES", "shape": [2], "data": ["%%", picture]}],
                       "outputs": [{"name": "class"}, {"name": "error"}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"})) as answer:
        outputs = {output["name"]: output["data"] for output in json.load(answer)["outputs"]}
    assert outputs["error"] == ["The picture is not base64 text; over REST each picture is a base64 string.", ""]
    assert outputs["class"][0] == -1 and 0 <= outputs["class"][1] <= 9


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_error_output_is_in_the_metadata_and_only_for_pictures(server, protocol):
    outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in
               metadata(server, protocol, "ensemble")["outputs"]}
    assert outputs["error"] == ("BYTES", [-1])
    answer = infer(server, protocol, {"images": ("FP32", np.zeros((1, 28, 28, 1), np.float32))})
    assert "error" not in answer and "images" not in answer


def faint(digit: np.ndarray, ink: float) -> np.ndarray:
    """The digit dimmed until it holds `ink` (the sum of its pixels)."""
    return digit * np.float32(ink / digit.sum())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_blank_or_nearly_blank_images_are_answered_with_a_warning(server, protocol, bundle, mnist_digits):
    """An all-zero image came back as a confident 8 with no warning."""
    digits = mnist_digits[0][TRAIN:TRAIN + 2]
    images = np.stack([np.zeros((28, 28, 1), np.float32), faint(digits[0], MIN_INK / 2), digits[0], digits[1]])
    answer = infer(server, protocol, {"images": ("FP32", images)})
    expected = Ensemble.load(bundle).predict(images[2:])
    assert answer["warning"] == [BLANK_WARNING, BLANK_WARNING, *expected.warnings]
    assert BLANK_WARNING not in expected.warnings
    np.testing.assert_array_equal(answer["class"][2:], expected.classes)  # the real digits answered as before


def test_no_real_digit_is_near_empty_and_the_ensemble_warns_in_process(bundle, mnist_digits):
    """MIN_INK lies below the ink of every real digit of the sample (full MNIST's 70,000: 19.9, benchmarks.ink)."""
    digits = mnist_digits[0]
    assert image_ink(digits).min() > 1.5 * MIN_INK
    images = np.stack([np.zeros((28, 28, 1), np.float32), faint(digits[0], MIN_INK * 0.9), digits[0]])
    warnings = Ensemble.load(bundle).predict(images).warnings
    assert warnings[:2] == [BLANK_WARNING, BLANK_WARNING] and warnings[2] != BLANK_WARNING
