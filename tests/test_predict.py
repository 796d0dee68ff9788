"""The prediction command: real digits in any form are classified, every bad file gets its own error line."""
import gzip
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TRAIN
from mnist_cnn_progression.inference.ensemble import Ensemble
from mnist_cnn_progression.inference.predict import classify, main
from mnist_cnn_progression.inference.pictures import read_inputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_digits(bundle, mnist_digits):
    """Held-out digits the ensemble classifies right and confidently, as (uint8 white-on-black image, label)."""
    images, labels = mnist_digits[0][TRAIN:], mnist_digits[1][TRAIN:]
    result = Ensemble.load(bundle).predict(images)
    sure = np.flatnonzero((result.classes == labels) & (result.probabilities.max(axis=1) > 0.9))
    return [(np.round(images[i, ..., 0] * 255).astype(np.uint8), int(labels[i])) for i in sure[:10]]


def drawn_on_canvas(digit: np.ndarray, size=(900, 700), at=(400, 150), scale=10, mode="L") -> Image.Image:
    """The digit drawn black on white, enlarged, somewhere on a larger canvas."""
    ink = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.BICUBIC)
    canvas = Image.new("L", size, 255)
    canvas.paste(ink, at)
    return canvas.convert(mode)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb as far as the header goes."""
    data = io.BytesIO()
    Image.new("1", (1, 1)).save(data, "PNG")
    png = bytearray(data.getvalue())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def run_main(capsys, *args) -> tuple[int, dict]:
    code = main([str(a) for a in args])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return code, {Path(record["path"]).name: record for record in lines}


def sixteen_bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image).astype(np.uint16) * 257)


FORMATS = [("png", lambda image: image), ("jpg", lambda image: image.convert("RGB")),
           ("png", lambda image: image.convert("RGBA")), ("png", sixteen_bit), ("gif", lambda image: image.convert("P"))]


def test_a_real_digit_drawn_black_on_white_on_a_larger_canvas_is_classified_right(bundle, test_digits, tmp_path):
    for k, ((digit, label), (suffix, convert)) in enumerate(zip(test_digits, FORMATS)):
        path = tmp_path / f"digit{k}_{label}.{suffix}"
        convert(drawn_on_canvas(digit, at=(100 + 80 * k, 50 + 60 * k))).save(path)
        prepared = next(read_inputs(path))[1]
        assert np.corrcoef(prepared.ravel(), digit.ravel())[0, 1] > 0.9, path.name
    for record in classify([tmp_path], bundle):
        assert record["class"] == int(Path(record["path"]).stem.split("_")[1]), record


def test_each_bad_file_gets_its_own_error_and_the_batch_completes(bundle, test_digits, tmp_path, capsys):
    (digit, label), (other, other_label) = test_digits[:2]
    good = io.BytesIO()
    drawn_on_canvas(digit).save(good, "PNG")
    (tmp_path / "corrupt.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "notes.txt").write_text("not a digit\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    (tmp_path / "too_big.png").write_bytes(png_declaring(10_000, 8_000))
    drawn_on_canvas(other, size=(4000, 3000), at=(1500, 1000), scale=30, mode="RGB").save(tmp_path / "photo.jpg")
    Image.new("RGB", (3000, 2000), (200, 190, 170)).save(tmp_path / "blank.jpg")
    np.save(tmp_path / "wrong_shape.npy", np.zeros((3, 32, 32), np.float32))
    nan = np.stack([digit, digit]).astype(np.float32) / 255
    nan[1, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "pickled.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "truncated.npy", np.stack([digit] * 4))
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "truncated.npy").read_bytes()[:-100])
    np.save(tmp_path / "scaled_wrong.npy", digit.astype(np.float32))

    code, records = run_main(capsys, "--models", bundle, tmp_path, tmp_path / "missing.png")
    assert code == 1
    errors = {name: record["error"] for name, record in records.items() if "error" in record}
    assert errors == {
        "corrupt.png": "The image file is truncated or corrupt.",
        "notes.txt": "The file is not an image (PNG, JPEG, ...), a .npy array or an IDX file.",
        "empty.png": "The file is empty.",
        "bomb.png": "The image declares more than 50,000,000 pixels, which is refused.",
        "too_big.png": "The image is 10000 x 8000 pixels, more than the 50,000,000 accepted.",
        "blank.jpg": "The image is blank: no digit stands out from the background.",
        "wrong_shape.npy": "The array has shape (3, 32, 32); expected (28, 28), (N, 28, 28) or (N, 28, 28, 1).",
        "nan.npy[1]": "The image contains NaN or infinite values.",
        "pickled.npy": "The array holds Python objects (pickled data), which are never loaded.",
        "truncated.npy": "The .npy file is truncated or corrupt.",
        "scaled_wrong.npy": "Float pixels must lie in [0, 1]; divide 0-255 pixels by 255.",
        "missing.png": "No such file or directory.",
    }
    assert records["photo.jpg"]["class"] == other_label
    assert records["nan.npy[0]"]["class"] == label


def test_arrays_and_idx_files_raw_or_gzipped(bundle, test_digits, tmp_path, capsys):
    digits = np.stack([d for d, _ in test_digits[:3]])
    labels = [label for _, label in test_digits[:3]]
    np.save(tmp_path / "digits.npy", digits[..., None].astype(np.float32) / 255)
    idx = struct.pack(">BBBBIII", 0, 0, 8, 3, 3, 28, 28) + digits.tobytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as file:
        file.write(idx)
    (tmp_path / "short-idx3-ubyte").write_bytes(idx[:-1])
    code, records = run_main(capsys, "--models", bundle, "--separate", tmp_path)
    assert code == 1 and records["short-idx3-ubyte"]["error"] == ("The IDX file is truncated: its header promises "
                                                                  "2352 bytes of data, found 2351.")
    for name in ("digits.npy", "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"):
        assert [records[f"{name}[{i}]"]["class"] for i in range(3)] == labels
        assert sum(records[f"{name}[0]"]["votes"]) == 5 and len(records[f"{name}[0]"]["probabilities"]) == 10


def test_command_and_module_work_where_tensorflow_and_onnx_cannot_be_imported(bundle, test_digits, tmp_path):
    """The base install has numpy, onnxruntime and pillow only."""
    digit, label = test_digits[0]
    drawn_on_canvas(digit).save(tmp_path / "digit.png")
    np.save(tmp_path / "digit.npy", digit)
    script = (
        "import sys, runpy\n"
        "sys.modules['tensorflow'] = sys.modules['keras'] = sys.modules['onnx'] = None\n"
        "from mnist_cnn_progression.inference.ensemble import Ensemble\n"
        "import numpy as np\n"
        "print(Ensemble.load(sys.argv[1], int8=True).predict(np.load(sys.argv[2])[None] / 255.0).classes[0])\n"
        "sys.argv = ['predict', '--models', *sys.argv[1:2], *sys.argv[3:]]\n"
        "runpy.run_module('mnist_cnn_progression.inference.predict', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", script, str(bundle), str(tmp_path / "digit.npy"),
                             str(tmp_path / "digit.png"), str(tmp_path / "digit.npy")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    first, *lines = result.stdout.splitlines()
    assert int(first) == label
    assert [json.loads(line)["class"] for line in lines] == [label, label]


def test_unloadable_models_exit_with_code_2(tmp_path, capsys):
    assert main(["--models", str(tmp_path), str(tmp_path)]) == 2
    assert "neither an ensemble bundle nor a run directory" in capsys.readouterr().err
