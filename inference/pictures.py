"""Turn the files people have (PNG/JPEG, .npy, IDX, directories) into MNIST-like images, safely.

Every bad input becomes an InputError with one plain sentence; nothing is
unpickled, and sizes are checked from headers before any pixel is decoded.
"""
import gzip
import io
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000        # a 50-megapixel photo; a larger image (or a decompression bomb) is refused unread
MAX_ARRAY_BYTES = 512 << 20    # the largest .npy / IDX payload read
WORKING_SIZE = (2048, 2048)    # larger images are shrunk to this first (JPEGs decode at a reduced scale)
MIN_CONTRAST = 0.125           # background-to-ink difference (of the full range) below which an image is blank
INK_THRESHOLD = 0.25           # fraction of the way from background to ink below which a pixel is background
DIGIT_BOX, FRAME, CENTRE = 20, 28, 14.0  # MNIST: fit 20x20, centre of mass at pixel 14 of 28
NPY_MAGIC, GZIP_MAGIC = b"\x93NUMPY", b"\x1f\x8b"
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class InputError(ValueError):
    """One input that cannot be classified; the message is a plain sentence for the user."""


def read_inputs(path: Path) -> Iterator[tuple[str, np.ndarray | InputError]]:
    """Yield (label, float32 [28, 28] image in [0, 1]) or (label, InputError) for every image under path.

    Directories are walked recursively in sorted order, skipping hidden names.
    A file holding several images labels them path[i].
    """
    path = Path(path)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if not any(part.startswith(".") for part in file.relative_to(path).parts):
                yield from read_file(file)
    else:
        yield from read_file(path)


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
        elif head[:2] == b"\0\0" and head[2] in IDX_TYPES:
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
    page. The size is checked from the header before any pixel is decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError(f"The image is {width} x {height} pixels, more than the {MAX_PIXELS:,} accepted.")
            image.draft("L", WORKING_SIZE)
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
    """As MNIST was made: grayscale, light background inverted, digit cropped, fit 20x20, centred by mass in 28x28.

    The background level is the median of the border pixels; pixels less than a
    quarter of the way from it to the darkest ink are background. Transparent
    pixels count as white paper, so a dark digit on a transparent canvas reads right.
    """
    pixels = gray_pixels(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > 0.5:
        pixels, border = 1 - pixels, 1 - border
    background = np.median(border)
    contrast = pixels.max() - background
    if contrast < MIN_CONTRAST:
        raise InputError("The image is blank: no digit stands out from the background.")
    ink = np.clip((pixels - background) / contrast, 0, 1)
    ink[ink < INK_THRESHOLD] = 0
    ink = Image.fromarray(np.round(ink * 255).astype(np.uint8))
    digit = ImageOps.contain(ink.crop(ink.getbbox()), (DIGIT_BOX, DIGIT_BOX), Image.LANCZOS)
    return centred(np.asarray(ImageOps.autocontrast(digit), dtype=np.float32) / 255)


def gray_pixels(image: Image.Image) -> np.ndarray:
    """Upright, shrunk to the working size, grayscale in [0, 1]; 16-bit images keep their full range."""
    image = ImageOps.exif_transpose(image)
    image.thumbnail(WORKING_SIZE)
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def centred(digit: np.ndarray) -> np.ndarray:
    """Place the digit in a 28x28 frame with its centre of mass at pixel (14, 14), as far as the frame allows."""
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
    """An IDX file (the MNIST distribution format), raw or gzipped; reads no more than its header declares."""
    header = stream.read(4)
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] not in IDX_TYPES or not 1 <= header[3] <= 4:
        raise InputError("The file is not an IDX file: its header is wrong.")
    dims = struct.unpack(f">{header[3]}I", stream.read(4 * header[3]))
    dtype = np.dtype(IDX_TYPES[header[2]])
    check_array(dims, dtype)
    size = int(np.prod(dims)) * dtype.itemsize
    data = stream.read(size + 1)
    if len(data) != size:
        raise InputError(f"The IDX file holds {len(data):,} bytes of data where its header declares {size:,}.")
    return np.frombuffer(data, dtype).reshape(dims)


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
