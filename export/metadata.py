"""What the TensorFlow-side exporters share: their error and ONNX metadata as strings."""
import json


class ExportError(Exception):
    """An exported artifact failed its check (parity, fused graph, ...)."""


def as_properties(metadata: dict) -> dict[str, str]:
    """ONNX metadata_props hold strings only: non-string values are stored as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
