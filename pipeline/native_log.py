"""Keep TensorFlow's native start-up notices out of the log, and nothing else.

TF_CPP_MIN_LOG_LEVEL=2 silences TensorFlow's C++ info and warnings once its
logging is set up, but a few lines are printed before that (the oneDNN and
CUDA-driver notices, twice: once per native library) or at error level on
every CPU-only machine (`failed call to cuInit ... (303)`), and no switch
turns those off. They are dropped here at the file descriptor, by their
exact wording; every other line on stderr passes through unchanged. oneDNN
itself stays on (turning it off would change the numbers).
"""
import atexit
import os
import sys
import threading

NOISE = (
    b"All log messages before absl::InitializeLog() is called are written to STDERR",
    b"oneDNN custom operations are on.",
    b"Could not find cuda drivers on your machine, GPU will not be used.",
    b"failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    b"This TensorFlow binary is optimized to use available CPU instructions",
    b"To enable the following instructions:",
)


def is_noise(line: bytes) -> bool:
    return any(marker in line for marker in NOISE)


def drop_native_startup_notices() -> None:
    """Route file descriptor 2 through a filter thread until the process exits (call before TensorFlow loads)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy_lines():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not is_noise(line):
                    os.write(terminal, line)

    pump = threading.Thread(target=copy_lines, name="stderr-filter", daemon=True)
    pump.start()

    def restore():
        """Hand fd 2 back and let the filter drain, so the last lines (an error message) are never lost."""
        sys.stderr.flush()
        os.dup2(terminal, 2)
        pump.join(timeout=5)

    atexit.register(restore)
