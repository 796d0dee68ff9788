"""Pictures people send: photos and drawings of real held-out digits read as the clean digits do.

The corpus (tests/picture_corpus.py) renders 25 held-out digits as each of
eight kinds of picture. The small test bundle is about 90% right on clean
digits, so the measure is agreement: the ensemble's class for the picture
must be its class for the clean 28x28 digit.

The digits are those the test bundle reads firmly: the same class when the
digit moves by one pixel in any direction. Its fully connected networks
change their answer for 10-16% of digits moved by a single pixel (a
convolutional network for 0.1-0.3%), and MNIST's own centring by mass is
exact only to half a pixel (MNIST's centres of mass spread uniformly over
13.5-14.5), so on the other digits agreement would measure that rounding,
not the pictures.
"""
import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import TRAIN
from mnist_cnn_progression.inference.ensemble import Ensemble
from mnist_cnn_progression.inference.pictures import InputError, picture_from_bytes
from picture_corpus import KINDS, corpus, grey_paper_photo, png, small_in_large_frame

PER_KIND = 25
BLANK = "The image is blank: no digit stands out from the background."  # the sentence users see, pinned


@pytest.fixture(scope="module")
def ensemble(bundle):
    return Ensemble.load(bundle)


@pytest.fixture(scope="module")
def held_out(mnist_digits, ensemble):
    """Held-out digits (never trained on) that the test bundle reads firmly: float32 [N, 28, 28] and labels.

    About 640 of the 1,000.
    """
    images, labels = mnist_digits[0][TRAIN:, ..., 0], mnist_digits[1][TRAIN:]
    read = classes(ensemble, images)
    firm = np.all([classes(ensemble, np.roll(images, shift, axis=(1, 2))) == read
                   for shift in [(1, 0), (-1, 0), (0, 1), (0, -1)]], axis=0)
    return images[firm], labels[firm]


@pytest.fixture(scope="module")
def readings(held_out):
    """The corpus read back: kinds [N], recovered images [N, 28, 28], the clean digits [N, 28, 28]."""
    digits = held_out[0]
    pictures = corpus(digits, PER_KIND, seed=0)
    recovered = np.stack([read_or_black(picture.data) for picture in pictures])
    return np.array([p.kind for p in pictures]), recovered, digits[[p.source for p in pictures]]


def read_or_black(data: bytes) -> np.ndarray:
    """The picture made MNIST-like; a picture refused (as blank) reads as a black frame, which counts as wrong."""
    try:
        return picture_from_bytes(data)
    except InputError:
        return np.zeros((28, 28), np.float32)


def classes(ensemble: Ensemble, images: np.ndarray) -> np.ndarray:
    return ensemble.predict(np.asarray(images, np.float32)[..., None]).classes


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_every_kind_of_picture_reads_as_its_clean_digit(readings, ensemble):
    kinds, recovered, clean = readings
    agree = classes(ensemble, recovered) == classes(ensemble, clean)
    share = {kind: round(float(agree[kinds == kind].mean()), 2) for kind in KINDS}
    assert all(count == PER_KIND for count in np.unique(kinds, return_counts=True)[1])
    assert min(share.values()) >= 0.9 and agree.mean() >= 0.95, share


def test_recovered_pictures_look_like_their_digits_in_the_mnist_frame(readings):
    """White strokes on black in [0, 1], brightest pixel 1, fit 20x20, centre of mass at (14, 14)."""
    kinds, recovered, clean = readings
    assert recovered.dtype == np.float32 and recovered.shape == (len(kinds), 28, 28)
    assert recovered.min() == 0 and np.all(recovered.max(axis=(1, 2)) == 1)
    for image in recovered:
        _, _, width, height = cv2.boundingRect(np.uint8(image > 0))
        assert max(width, height) == 20
        moments = cv2.moments(image)
        assert abs(moments["m10"] / moments["m00"] - 14) <= 1.5 and abs(moments["m01"] / moments["m00"] - 14) <= 1.5
    similar = np.array([correlation(r, c) for r, c in zip(recovered, clean)])
    medians = {kind: round(float(np.median(similar[kinds == kind])), 2) for kind in KINDS}
    assert min(medians.values()) >= 0.85 and similar.min() >= 0.5, (medians, similar.min())


def drawn_on_canvas(digit: np.ndarray, ink: tuple, canvas: tuple | None = None, side: int = 400) -> bytes:
    """A drawing pad's export: the digit drawn in `ink` on an opaque `canvas` colour (RGB PNG), or without one as
    alpha over a transparent canvas whose hidden pixels are black (RGBA PNG)."""
    alpha = np.zeros((side, side), np.float32)
    alpha[60:340, 60:340] = np.clip(cv2.resize(digit, (280, 280), interpolation=cv2.INTER_CUBIC), 0, 1)
    if canvas is not None:
        rgb = np.float32(canvas) / 255 + (np.float32(ink) - np.float32(canvas)) / 255 * alpha[..., None]
        return png(np.round(rgb * 255).astype(np.uint8))[0]
    rgb = np.where(alpha[..., None] > 0, np.float32(ink) / 255, 0)
    return png(np.round(np.dstack([rgb, alpha]) * 255).astype(np.uint8))[0]


@pytest.mark.parametrize("ink", [(255, 255, 255), (0, 0, 0), (255, 220, 0)], ids=["white", "black", "yellow"])
def test_strokes_on_a_transparent_canvas_read_right_in_any_ink(held_out, ensemble, ink):
    """What a dark-themed drawing pad exports, white ink on transparent, was refused as blank."""
    digits = held_out[0][200:210]
    recovered = np.stack([picture_from_bytes(drawn_on_canvas(digit, ink)) for digit in digits])
    similar = [correlation(r, d) for r, d in zip(recovered, digits)]
    assert np.median(similar) > 0.9 and min(similar) > 0.75, similar
    assert list(classes(ensemble, recovered)) == list(classes(ensemble, digits))


@pytest.mark.parametrize("ink, canvas", [((255, 255, 255), (0, 0, 0)), ((240, 240, 240), (18, 18, 18)),
                                         ((255, 220, 0), (30, 30, 46)), ((20, 20, 20), (255, 255, 255))],
                         ids=["white_on_black", "white_on_dark_grey", "yellow_on_navy", "black_on_white"])
def test_strokes_on_an_opaque_canvas_read_right_light_on_dark_too(held_out, ensemble, ink, canvas):
    """A dark-themed drawing exported opaque (no transparency): light strokes on black were refused as blank."""
    digits = held_out[0][200:210]
    recovered = np.stack([picture_from_bytes(drawn_on_canvas(digit, ink, canvas)) for digit in digits])
    similar = [correlation(r, d) for r, d in zip(recovered, digits)]
    assert np.median(similar) > 0.9 and min(similar) > 0.75, similar
    assert list(classes(ensemble, recovered)) == list(classes(ensemble, digits))


def mnist_png(digit: np.ndarray, side: int, *, white_on_black: bool, rgb: bool, noise: float, rng) -> bytes:
    """A real MNIST digit saved as a PNG: enlarged (bicubic) to side x side, in MNIST's own polarity (white on
    black) or inverted, grey or RGB, with Gaussian sensor noise of `noise` of the full range (clipped)."""
    pixels = cv2.resize(digit, (side, side), interpolation=cv2.INTER_CUBIC) if side != 28 else digit
    pixels = pixels if white_on_black else 1 - pixels
    pixels = np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 1) if noise else np.clip(pixels, 0, 1)
    pixels = np.round(pixels * 255).astype(np.uint8)
    return png(np.dstack([pixels] * 3))[0] if rgb else cv2.imencode(".png", pixels)[1].tobytes()


def shifted_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The best correlation over shifts of up to one pixel: centring by mass is exact only to half a pixel."""
    return max(correlation(np.roll(a, (dy, dx), axis=(0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@pytest.mark.parametrize("noise", [0, 0.06], ids=["clean", "noisy"])
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
@pytest.mark.parametrize("side", [28, 112, 280])
def test_a_mnist_digit_saved_as_png_reads_alike_in_either_polarity(held_out, ensemble, side, rgb, noise):
    """MNIST's own form, white on black, was refused as blank while the inverted digit read right.

    Either way the frame is the digit's own MNIST frame (correlation with the
    original 28x28 digit, up to a pixel's shift), the two polarities give
    nearly the same frame, and the ensemble reads the digit's class (but for
    one in ten: the test bundle's fully connected networks change their
    answer for some digits moved by a pixel, see the module's docstring).
    """
    digits = held_out[0][230:250]
    rng = np.random.default_rng([side, rgb, int(noise * 100)])
    frames = {polarity: np.stack([picture_from_bytes(mnist_png(digit, side, white_on_black=polarity, rgb=rgb,
                                                               noise=noise, rng=rng)) for digit in digits])
              for polarity in (True, False)}
    for polarity, recovered in frames.items():
        similar = [shifted_correlation(r, d) for r, d in zip(recovered, digits)]
        assert np.median(similar) > 0.97 and min(similar) > 0.85, (polarity, similar)
        assert np.mean(classes(ensemble, recovered) == classes(ensemble, digits)) >= 0.9, polarity
    alike = [shifted_correlation(w, b) for w, b in zip(frames[True], frames[False])]
    assert np.median(alike) > 0.98 and min(alike) > 0.85, alike


def test_the_issue_photo_a_five_on_grey_paper_with_the_light_falling_off_reads_as_five(held_out, ensemble):
    """Three such photos all came back wrong (one 5 as a 4) while the same digits evenly lit were right."""
    digits, labels = held_out
    fives = digits[labels == 5][:5]
    pictures = [grey_paper_photo(five, np.random.default_rng([9, k]))[0] for k, five in enumerate(fives)]
    recovered = np.stack([picture_from_bytes(picture) for picture in pictures])
    assert list(classes(ensemble, recovered)) == list(classes(ensemble, fives))


def test_a_small_digit_in_a_large_frame_fills_the_mnist_box(held_out, ensemble):
    digits = held_out[0][210:215]
    pictures = [small_in_large_frame(digit, np.random.default_rng([7, k]))[0] for k, digit in enumerate(digits)]
    recovered = np.stack([picture_from_bytes(picture) for picture in pictures])
    assert all(correlation(r, d) > 0.8 for r, d in zip(recovered, digits))
    assert list(classes(ensemble, recovered)) == list(classes(ensemble, digits))


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "lined_paper"])
def test_every_kind_of_picture_without_a_digit_is_blank(kind):
    """The same paper, light, board, dust, desk and noise with no digit: nothing to classify.

    Not an empty lined page: its grid of lines and margin reads as a mark
    (a known limit; its prediction then carries a low confidence).
    """
    for k in range(3):
        data, _ = KINDS[kind](np.zeros((28, 28), np.float32), np.random.default_rng([5, k]))
        with pytest.raises(InputError, match="^" + BLANK + "$"):
            picture_from_bytes(data)


def test_a_phone_photo_is_decoded_at_a_reduced_scale_and_read_right(held_out, monkeypatch):
    """A 12-megapixel JPEG reaches the picture steps already shrunk (JPEG draft), no smaller than the working size.

    (The time this saves is measured by benchmarks/pictures.py, not asserted here.)
    """
    import mnist_cnn_progression.inference.pictures as pictures
    digit = held_out[0][220]
    photo = np.full((3000, 4000, 3), 200, np.uint8)
    photo[1000:2120, 1500:2620] = 200 - (150 * cv2.resize(digit, (1120, 1120))[..., None]).astype(np.uint8)
    data = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    decoded = []
    steps = pictures.mnist_like
    monkeypatch.setattr(pictures, "mnist_like", lambda image: decoded.append(image.size) or steps(image))
    image = picture_from_bytes(data)
    assert correlation(image, digit) > 0.9
    assert pictures.WORKING_SIDE <= max(decoded[0]) < 4000, decoded


def test_a_picture_with_transparent_corners_reads_as_the_opaque_one(held_out):
    """A photo whose corners were cut away (transparent): those pixels are paper, not ink."""
    encoded = KINDS["uneven_lighting"](held_out[0][221], np.random.default_rng(3))[0]
    photo = cv2.cvtColor(cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    cut = min(photo.shape[:2]) // 5
    for rows in (slice(None, cut), slice(-cut, None)):
        for columns in (slice(None, cut), slice(-cut, None)):
            alpha[rows, columns] = 0
    cut_corners = picture_from_bytes(png(np.dstack([photo, alpha]))[0])
    assert correlation(cut_corners, picture_from_bytes(encoded)) > 0.95


@pytest.mark.parametrize("pen", [4, 10, 16, 22])
def test_a_straight_upright_stroke_is_a_1_however_thin_the_pen(pen):
    """What a drawing pad sends for a 1: not a ruled line to set aside, and a 1-2 pixel wide digit to centre."""
    pad = Image.new("RGB", (320, 320), "white")
    ImageDraw.Draw(pad).line([(160, 58), (160, 262)], fill=(20, 20, 20), width=pen)
    png = io.BytesIO()
    pad.save(png, "PNG")
    seen = picture_from_bytes(png.getvalue())
    rows, columns = np.nonzero(seen > 0.5)
    assert rows.max() - rows.min() + 1 == 20 and columns.max() - columns.min() + 1 <= 3
    assert abs((np.arange(28) * seen.sum(axis=0)).sum() / seen.sum() - 14) <= 1
