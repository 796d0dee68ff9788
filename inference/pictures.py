"""Turn the files people have (PNG/JPEG, .npy, IDX, directories) into MNIST-like images, safely.

Every bad input becomes an InputError with one plain sentence; nothing is
unpickled, and sizes are checked from headers before any pixel is decoded.
"""
import functools
import gzip
import io
import math
import zlib
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_cnn_progression.inference.contract import IMAGE_SHAPE
from mnist_cnn_progression.inference.idx import GZIP_MAGIC, IdxError, looks_like_idx, read_idx

MAX_PIXELS = 50_000_000        # a 50-megapixel photo; a larger image (or a decompression bomb) is refused unread
MAX_ARRAY_BYTES = 512 << 20    # the largest .npy / IDX payload read
WORKING_SIDE = 1000            # pictures are worked on with their long side shrunk to this (a 12-megapixel
                               # JPEG decodes at a quarter of its size, 1000 x 750, at once)
POLARITY_SIDE = 256            # whether the ink is darker or lighter than the paper is decided on a copy this small
STRONG_MARK = 0.5              # marks this share of the highest contrast or more decide the polarity
BACKGROUND_SIDE = 128          # the paper's light is estimated on a copy this small: light varies slowly
PAPER_KERNEL = 0.4             # ... by a closing this share of its short side wide: wider than any stroke of a digit
                               # that fills the picture (a quarter left the thick strokes of MNIST digits as paper)
BLACK_LEVEL = 0.05             # added to both sides of every brightness ratio: near black, noise is not ink (below)
MIN_CONTRAST = 0.125           # ink this much darker (or lighter) than its paper, or less, is not a mark
INK_THRESHOLD = 0.25           # the digit's pixels fainter than this fraction of its strokes' ink are background
NOISE_SIGMAS = 5               # a mark stands out this many noise deviations above the paper
LINE_ASPECT = 10               # a mark this many times longer than wide is a line (if it runs LINE_SPAN along) ...
LINE_SPAN = 0.8                # ... of the picture: a ruled line crosses the page; a 1 drawn upright does not
CLUTTER_SHARE = 0.05           # marks other than edges and lines need this share of the edges' ink to be looked at
MIN_DIGIT = 0.02               # marks spanning less than this fraction of the picture are dust, not a digit
GROUP_REACH = 0.25             # marks within this fraction of the digit's size from it belong to it
FRAME = IMAGE_SHAPE[0]
DIGIT_BOX, CENTRE = 20, FRAME / 2  # MNIST: fit 20x20, centre of mass at pixel 14 of 28
NPY_MAGIC = b"\x93NUMPY"
BLANK = "The image is blank: no digit stands out from the background."


class InputError(ValueError):
    """One input that cannot be classified; the message is a plain sentence for the user."""


def read_inputs(path: Path) -> Iterator[tuple[str, np.ndarray | InputError]]:
    """Yield (label, float32 [28, 28] image in [0, 1]) or (label, InputError) for every image under path.

    Directories are walked recursively in sorted order, skipping hidden names.
    A file holding several images labels them path[i].
    """
    path = Path(path)
    for file in files_under(path) if path.is_dir() else [path]:
        yield from read_file(file)


def files_under(directory: Path) -> list[Path]:
    """A directory's files, recursively and sorted, hidden names skipped: what mnist-predict and mnist-batch read."""
    return sorted(file for file in directory.rglob("*")
                  if file.is_file() and not any(part.startswith(".") for part in file.relative_to(directory).parts))


def read_file(path: Path) -> Iterator[tuple[str, np.ndarray | InputError]]:
    try:
        if not path.exists():
            raise InputError("No such file or directory.")
        if not path.is_file():
            raise InputError("This is not a regular file.")
        with open(path, "rb") as file:
            head = file.read(8)
        if not head:
            raise InputError("The file is empty.")
        if head.startswith(NPY_MAGIC):
            yield from array_images(path, npy_array(path))
        elif head.startswith(GZIP_MAGIC):
            with gzip.open(path) as stream:
                yield from array_images(path, idx_array(stream))
        elif looks_like_idx(head):
            with open(path, "rb") as stream:
                yield from array_images(path, idx_array(stream))
        else:
            yield str(path), image_file(path)
    except InputError as error:
        yield str(path), error
    except PermissionError:
        yield str(path), InputError("The file cannot be read: permission denied.")
    except (OSError, EOFError, zlib.error):
        yield str(path), InputError("The file is truncated or corrupt.")


def image_file(path: Path) -> np.ndarray:
    """A picture file made MNIST-like (see picture_from_bytes)."""
    with open(path, "rb") as file:
        return picture_from_bytes(file.read())


def picture_from_bytes(data: bytes) -> np.ndarray:
    """An encoded picture (PNG, JPEG, ...; any size or mode) -> float32 [28, 28] in [0, 1], MNIST-like.

    The one entry point shared by the prediction command, the server and the
    page. The size is checked from the header before any pixel is decoded;
    a large JPEG is decoded at a reduced scale (draft) no smaller than the
    working size, which is several times faster.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError(f"The image is {width} x {height} pixels, more than the {MAX_PIXELS:,} accepted.")
            shrink = min(WORKING_SIDE / max(width, height), 1)
            image.draft(None, (math.ceil(width * shrink), math.ceil(height * shrink)))
            image.load()
            return mnist_like(image)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"The image declares more than {MAX_PIXELS:,} pixels, which is refused.") from None
    except UnidentifiedImageError:
        raise InputError("The file is not an image (PNG, JPEG, ...), a .npy array or an IDX file.") from None
    except (OSError, SyntaxError, ValueError):
        raise InputError("The image file is truncated or corrupt.") from None


def mnist_like(image: Image.Image) -> np.ndarray:
    """A picture of a digit as MNIST made its images: white strokes on black, fit 20x20, centred by mass in 28x28.

    Four steps, each a function below: the picture at a working size
    (working_pixels); its ink, as each pixel's contrast against the paper's
    own estimated light (ink_on_paper), or the alpha channel of a drawing on
    a transparent canvas; the digit's strokes, found by connected components
    above the noise, apart from edges, lines and specks (digit_strokes); and
    MNIST's frame (mnist_frame).
    """
    rgb, alpha = working_pixels(image)
    ink = alpha if drawn_on_transparent(alpha) else ink_on_paper(opaque(rgb, alpha))
    return mnist_frame(digit_strokes(ink))


def working_pixels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Upright, long side shrunk to WORKING_SIDE: float32 [H, W, C] in [0, 1] (C = 1 grey or 3 RGB), alpha or None.

    The digit of a phone photo keeps tens of pixels at this size, and every
    later step costs milliseconds instead of seconds. 16-bit images keep
    their full range.
    """
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels, top = np.asarray(image, np.float32), 65535
    else:
        transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        mode = "RGBA" if transparent else "L" if image.mode in ("1", "L") else "RGB"
        pixels, top = np.asarray(image.convert(mode)), 255
    pixels = resized(pixels, WORKING_SIDE).astype(np.float32) / top
    if pixels.shape[2] == 4:
        return pixels[..., :3], pixels[..., 3]
    return pixels, None


def resized(pixels: np.ndarray, side: int) -> np.ndarray:
    """pixels [H, W(, C)] shrunk (area-averaged) so that the long side is at most `side`; always [H, W, C]."""
    height, width = pixels.shape[:2]
    scale = side / max(height, width)
    if scale < 1:
        size = (max(round(width * scale), 1), max(round(height * scale), 1))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return pixels.reshape(*pixels.shape[:2], -1)


def drawn_on_transparent(alpha: np.ndarray | None) -> bool:
    """Most of the picture transparent: strokes on a transparent canvas, whose alpha is the ink, whatever its colour.

    A drawing pad with a dark theme exports white strokes over transparent
    (often black) pixels: the colour of transparent pixels means nothing.
    """
    return alpha is not None and np.count_nonzero(alpha < 0.5) > alpha.size / 2


def opaque(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """A mostly opaque picture with some transparent pixels: those show the paper (the opaque pixels' median)."""
    if alpha is None or alpha.min() == 1:
        return rgb
    paper = np.median(rgb[alpha >= 0.5], axis=0)
    return rgb * alpha[..., None] + paper * (1 - alpha[..., None])


def ink_on_paper(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's ink, float32 [H, W] in [0, 1]: its contrast against the paper's light at that place.

    The picture is reflectance times light, so measuring the ink against the
    estimated paper cancels the light: ink reads alike in a dark corner,
    under a shadow or on the bright side of the page (see darker_ink and
    lighter_ink). Each colour channel counts, and the one where the ink
    stands out most wins: yellow ink on white paper is dark in blue only.
    Channels where the ink has the other polarity are left out (see polarity).
    """
    darker, channels = polarity(rgb)
    rgb = rgb[..., channels] if len(channels) < rgb.shape[2] else rgb  # a copy only when channels are left out
    paper = np.maximum(paper_light(rgb, darker), 0)  # extended past the border by reflection, it may overshoot black
    return np.clip(strongest(darker_ink(rgb, paper) if darker else lighter_ink(rgb, paper)), 0, 1)


def darker_ink(pixels: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """Dark ink's contrast per channel: the share of the paper's light it takes away, 1 - pixel / paper.

    BLACK_LEVEL (the darkness that sensor noise, flare and compression leave
    in any picture) is added to both: a plain ratio breaks down where the
    paper is black, where every black pixel would be fully dark ink. Against
    lit paper (0.3 and above) the ratio is nearly unchanged.
    """
    return 1 - (pixels + BLACK_LEVEL) / (paper + BLACK_LEVEL)


def lighter_ink(pixels: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """Light ink's contrast per channel (chalk; MNIST's own white on black): what it adds to the paper, over the light.

    The light at a place is the paper's there against the picture's typical
    paper (BLACK_LEVEL keeps it 1 all over a black canvas), and at least the
    pixel itself (nothing reflects more light than it gets): chalk reads
    alike in a board's dim corner and under the lamp. Not a ratio to the
    paper, nearly nothing on a black canvas, where every speck of noise
    would be fully ink; nor to the pixel alone, which makes faint edges as
    strong as strokes: a white digit on black reads as its negative does.
    """
    light = (paper + BLACK_LEVEL) / (np.median(paper, axis=(0, 1)) + BLACK_LEVEL)
    return (pixels - paper) / np.maximum(light, pixels)


def polarity(rgb: np.ndarray) -> tuple[bool, list[int]]:
    """Do the strong marks stand out darker than the paper around them (ink) or lighter (chalk)? And in which channels?

    Decided on a copy POLARITY_SIDE pixels long, against a wide median (of a
    yet smaller copy: it follows the light and ignores strokes, the paper
    being the majority around most pixels). Strong marks reach STRONG_MARK
    of the highest contrast over a few pixels (a lone noisy pixel is not a
    mark): the light's slopes that a median misses (next to a dark desk, in
    a corner) are wide but weak. Then the strong marks' total contrast wins,
    not the higher peak: a digit that fills the picture (MNIST's own, a
    thick 0) is the majority around its hole, which stands out of it as
    sharply as its strokes stand out of the paper, but over fewer pixels.
    The channels kept are those where the ink stands out more in the winning
    polarity: yellow on navy is lighter in red and green but darker in blue,
    where the paper under the strokes cannot be told from them.
    """
    rgb = resized(rgb, POLARITY_SIDE)
    small = as_bytes(resized(rgb, BACKGROUND_SIDE))
    surroundings = cv2.medianBlur(small, odd(min(small.shape[:2]) // 2))
    surroundings = enlarged(surroundings.astype(np.float32) / 255, rgb.shape)
    darker, lighter = (cv2.GaussianBlur(contrast, (0, 0), 1.0).reshape(contrast.shape)
                       for contrast in (darker_ink(rgb, surroundings), lighter_ink(rgb, surroundings)))
    strong = STRONG_MARK * max(darker.max(), lighter.max())
    darker, lighter = (np.where(contrast > strong, contrast, 0).sum(axis=(0, 1)) for contrast in (darker, lighter))
    is_darker = darker.max() >= lighter.max()
    kept = darker >= lighter if is_darker else lighter > darker
    return bool(is_darker), [int(channel) for channel in np.flatnonzero(kept)]


def strongest(contrast: np.ndarray) -> np.ndarray:
    """The highest channel of every pixel, [H, W] (as fast as numpy goes: max(axis=2) is ten times slower)."""
    return functools.reduce(np.maximum, [contrast[..., channel] for channel in range(contrast.shape[2])])


def noise_level(values: np.ndarray) -> float:
    """The noise's standard deviation, from the median absolute deviation: the marks, a minority, do not sway it."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def enlarged(small: np.ndarray, shape: tuple) -> np.ndarray:
    """A smooth field computed on a small copy, brought back to the picture's size: [H, W, C]."""
    return cv2.resize(small, shape[1::-1], interpolation=cv2.INTER_LINEAR).reshape(*shape[:2], -1)


def paper_light(rgb: np.ndarray, ink_is_darker: bool) -> np.ndarray:
    """The paper's brightness under the light at every pixel, as if there were no ink: float32 [H, W, C].

    On a small copy (the light varies slowly), a closing (for dark ink; an
    opening for light ink) wider than any stroke removes the strokes however
    much of the picture they cover; it is then enlarged back. The copy is
    first extended past its border by point reflection, which continues the
    light's slope: a closing would otherwise fill the dark band along the
    border of a vignetted photo as if it were a stroke.
    """
    small = resized(rgb, BACKGROUND_SIDE)
    width = odd(int(min(small.shape[:2]) * PAPER_KERNEL))
    pad = ((width, width), (width, width), (0, 0))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width))
    paper = cv2.morphologyEx(np.pad(small, pad, mode="reflect", reflect_type="odd"),
                             cv2.MORPH_CLOSE if ink_is_darker else cv2.MORPH_OPEN, kernel)
    return enlarged(paper.reshape(-1, paper.shape[1], small.shape[2])[width:-width, width:-width], rgb.shape)


def as_bytes(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] floats as uint8 0-255, for OpenCV's wide median (which takes bytes only)."""
    return np.round(pixels * 255).astype(np.uint8)


def odd(number: int) -> int:
    """The odd number at or above number, at least 3: a kernel width."""
    return max(number | 1, 3)


def digit_strokes(ink: np.ndarray) -> np.ndarray:
    """The ink of the digit's strokes around the digit, float32 [h, w] in [0, 1], zero elsewhere.

    The digit's marks (see digit_marks) are its strokes' cores. Around them,
    within a stroke's width, the strokes' soft edges count too (MNIST keeps
    them as grey), as far as they stand out from the paper and reach
    INK_THRESHOLD of the cores' ink (a fainter halo is not in MNIST's digits);
    an opening by half a stroke's width then drops what is thinner, such as
    the stubs of ruled lines crossing the strokes. The ink is scaled so that
    the cores are 1. InputError if no digit stands out: no marks, marks
    spanning less than MIN_DIGIT of the picture or covering less than an
    eighth of that span squared (about what a thin 1 covers: dust, slivers
    of lines), or cores under twice the faintest mark's contrast (smudges).
    """
    smooth = cv2.GaussianBlur(ink, (0, 0), max(ink.shape) / 600 + 0.5)
    sample = smooth[::3, ::3]
    floor = max(np.median(sample) + NOISE_SIGMAS * noise_level(sample), MIN_CONTRAST)
    stands_out = smooth > floor
    digit = digit_marks(ink, smooth, stands_out)
    left, top, width, height = cv2.boundingRect(np.uint8(digit))
    span = MIN_DIGIT * max(ink.shape)
    if max(width, height) < span or np.count_nonzero(digit) < span ** 2 / 8 or \
            np.percentile(ink[digit], 75) < 2 * floor:
        raise InputError(BLANK)
    stroke = stroke_width(digit)
    margin = int(stroke) + 1
    box = np.s_[max(top - margin, 0):top + height + margin, max(left - margin, 0):left + width + margin]
    digit, ink, stands_out = digit[box], ink[box], stands_out[box]
    strokes = np.clip(ink / np.percentile(ink[digit], 75), 0, 1)
    near = cv2.distanceTransform(np.uint8(~digit), cv2.DIST_L2, 3) <= stroke
    kept = np.uint8(near & stands_out & (strokes >= INK_THRESHOLD))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(stroke / 2) | 1,) * 2)
    strokes *= cv2.morphologyEx(kept, cv2.MORPH_OPEN, disk)
    if not strokes.any():
        raise InputError(BLANK)
    return strokes


def stroke_width(mask: np.ndarray) -> float:
    """The strokes' typical width in pixels: twice their area over the length of their outline."""
    mask = mask.astype(np.uint8)
    outline = mask - cv2.erode(mask, np.ones((3, 3), np.uint8))
    return 2 * np.count_nonzero(mask) / max(np.count_nonzero(outline), 1)


def digit_marks(ink: np.ndarray, smooth: np.ndarray, considered: np.ndarray) -> np.ndarray:
    """Where the digit's strokes are, bool [H, W]: strong marks, less the paper's edges, lines and specks.

    The ink, slightly smoothed, must rise NOISE_SIGMAS noise deviations above
    the paper (the noise measured as the median absolute deviation, which the
    marks, a minority, do not sway). What of it lies along the picture's
    border is an edge (the desk, a frame, a dark corner) and is set aside;
    a closing first joins the specks that a textured desk breaks into.
    Among the rest Otsu's threshold separates strong marks from faint ones
    (ruled lines, smudges, soft edges). Strong marks that are edges or long
    thin lines are set aside too and the threshold is taken again without
    them when they are nearly all there is, so that they cannot push the
    digit below the threshold.
    """
    joined = cv2.morphologyEx(np.uint8(considered), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8),
                              iterations=max(min(ink.shape) // 200, 1))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    considered &= ~edges(labels, stats)[labels]
    for _ in range(4):
        if not considered.any():
            break
        marks = considered & (smooth > otsu(smooth[considered]))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(np.uint8(marks), connectivity=8)
        mass = np.bincount(labels.ravel(), weights=ink.ravel(), minlength=count)
        mass[0] = 0
        clutter = edges(labels, stats) | lines(stats, labels.shape)
        if mass[~clutter].sum() >= CLUTTER_SHARE * mass[clutter].sum():
            return digit_components(stats, np.where(clutter, 0, mass))[labels]
        considered &= ~clutter[labels]
    return np.zeros(ink.shape, bool)


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of float values (OpenCV computes it on bytes, so they are scaled to 0-255 first)."""
    top = float(values.max())
    levels = np.round(values / top * 255).astype(np.uint8).reshape(1, -1)
    return cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0] / 255 * top


def edges(labels: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Which components (bool per label) are edges (of the paper, the desk, a frame, a dark corner).

    An edge touches the picture's border, stretches over a quarter of a side
    or more, and nine tenths of it lie near the border. A digit touches the
    border with a stroke's end at most, or reaches far into the picture; a
    ruled line running along the border is an edge too, unless it is joined
    to the page's other lines and the digit, which do not lie near the border.
    """
    height, width = labels.shape
    x, y, w, h = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    touches = (x == 0) | (y == 0) | (x + w == width) | (y + h == height)
    band = min(height, width) // 5
    inner = np.bincount(labels[band:-band, band:-band].ravel(), minlength=len(stats))
    edge = touches & (np.maximum(w, h) > min(height, width) / 4) & (stats[:, 4] > 10 * inner)
    edge[0] = False
    return edge


def lines(stats: np.ndarray, shape: tuple) -> np.ndarray:
    """Which components (bool per label) are lines: along LINE_SPAN of the picture, LINE_ASPECT times longer
    than wide."""
    height, width = shape
    w, h = stats[:, 2], stats[:, 3]
    line = ((w > LINE_SPAN * width) | (h > LINE_SPAN * height)) & (np.maximum(w, h) > LINE_ASPECT * np.minimum(w, h))
    line[0] = False
    return line


def digit_components(stats: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Which components (bool per label) make the digit: the heaviest mark and the marks around it.

    The digit may come in pieces (a 5's bar, broken chalk): marks within
    GROUP_REACH of its size are added until none is left near. Marks farther
    away, or under a fiftieth of the heaviest's ink, are specks.
    """
    kept = np.zeros(len(stats), bool)
    if not mass.any():
        return kept
    main = int(np.argmax(mass))
    candidates = mass >= mass[main] / 50
    x, y = stats[:, 0], stats[:, 1]
    right, bottom = x + stats[:, 2], y + stats[:, 3]
    kept[main] = True
    while True:
        box = x[kept].min(), y[kept].min(), right[kept].max(), bottom[kept].max()
        reach = GROUP_REACH * max(box[2] - box[0], box[3] - box[1])
        near = candidates & ~kept & (x < box[2] + reach) & (right > box[0] - reach) & \
            (y < box[3] + reach) & (bottom > box[1] - reach)
        if not near.any():
            return kept
        kept |= near


def mnist_frame(strokes: np.ndarray) -> np.ndarray:
    """MNIST's frame: the digit cropped, fit to 20x20 keeping its shape (area-averaged: grey, anti-aliased edges),
    brightest pixel 1, centre of mass at pixel (14, 14) of 28x28."""
    left, top, width, height = cv2.boundingRect((strokes > 0).astype(np.uint8))
    digit = strokes[top:top + height, left:left + width]
    scale = DIGIT_BOX / max(width, height)
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    digit = cv2.resize(digit, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return centred(np.clip(digit / digit.max(), 0, 1).astype(np.float32))


def centred(digit: np.ndarray) -> np.ndarray:
    """Place the digit in a 28x28 frame with its centre of mass at pixel (14, 14), as far as the frame allows."""
    # Not cv2.moments: it takes an array one or two pixels wide (a thin upright 1) for a list of points.
    rows, columns = np.indices(digit.shape)
    mass = digit.sum()
    top = round(CENTRE - (rows * digit).sum() / mass)
    left = round(CENTRE - (columns * digit).sum() / mass)
    top = min(max(top, 0), FRAME - digit.shape[0])
    left = min(max(left, 0), FRAME - digit.shape[1])
    frame = np.zeros((FRAME, FRAME), np.float32)
    frame[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return frame


def npy_array(path: Path) -> np.ndarray:
    """Check the header (dtype, shape, size) first; then memory-map, never unpickle."""
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(file)
    except ValueError:
        raise InputError("The .npy header is corrupt.") from None
    if dtype.hasobject:
        raise InputError("The array holds Python objects (pickled data), which are never loaded.")
    check_array(shape, dtype)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        raise InputError("The .npy file is truncated or corrupt.") from None


def idx_array(stream) -> np.ndarray:
    """An IDX file (raw or gzipped) of 28x28 images, through the one IDX reader (inference.idx)."""
    try:
        return read_idx(stream, check=check_array)
    except IdxError as error:
        raise InputError(f"The IDX file {error}.") from None


def check_array(shape: tuple, dtype: np.dtype) -> None:
    if tuple(shape[-3:]) == (FRAME, FRAME, 1):
        shape = shape[:-1]
    if len(shape) not in (2, 3) or tuple(shape[-2:]) != (FRAME, FRAME):
        raise InputError(f"The array has shape {tuple(shape)}; expected (28, 28), (N, 28, 28) or (N, 28, 28, 1).")
    if dtype.kind not in "uif":
        raise InputError(f"The array holds {dtype} values; expected numbers (uint8 0-255 or floats in [0, 1]).")
    if int(np.prod(shape)) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise InputError(f"The array is larger than the {MAX_ARRAY_BYTES >> 20} MiB accepted.")


def array_images(path: Path, array: np.ndarray) -> Iterator[tuple[str, np.ndarray | InputError]]:
    """Each 28x28 image of the array, scaled to [0, 1]; a bad image is reported alone."""
    array = array.reshape(-1, FRAME, FRAME)
    integers = array.dtype.kind in "ui"
    for index, image in enumerate(array):
        label = str(path) if len(array) == 1 else f"{path}[{index}]"
        image = np.asarray(image, dtype=np.float32)
        if not np.isfinite(image).all():
            yield label, InputError("The image contains NaN or infinite values.")
        elif integers and (image.min() < 0 or image.max() > 255):
            yield label, InputError("Integer pixels must lie in 0-255.")
        elif not integers and (image.min() < 0 or image.max() > 1):
            yield label, InputError("Float pixels must lie in [0, 1]; divide 0-255 pixels by 255.")
        else:
            yield label, image / 255 if integers else image
