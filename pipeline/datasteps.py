"""The data steps, download (data/) and expand (expanded/), and what reads their arrays back.

The runner decides whether a step runs and records it (pipeline.runner);
this writes the arrays, through a temporary directory renamed into place,
so a step's output is complete or absent. No TensorFlow here.
"""
import json

import numpy as np

from mnist_cnn_progression.inference.files import digest_arrays, staged_directory, write_json
from mnist_cnn_progression.inference.releases import test_digest
from mnist_cnn_progression.inference.run_layout import RunLayout, split_file
from mnist_cnn_progression.pipeline import expand, sources
from mnist_cnn_progression.pipeline.errors import PipelineError

SPLIT_NAMES = [f"{part}_{kind}" for part in ("train", "validation", "test") for kind in ("images", "labels")]
SHARD_SIZE = 50_000


class RunData:
    """The prepared data of one run directory: written by the two steps, loaded once per run."""

    def __init__(self, layout: RunLayout, log=print):
        self.layout, self.log = layout, log
        self.splits = None

    def download(self, data_spec: str) -> dict:
        """MNIST from `data_spec` into data/; its data.json (source, split sizes, digest, any warning)."""
        splits = sources.load(data_spec, self.layout.cache, log=self.log)
        digest = digest_arrays(*(splits.arrays[name] for name in SPLIT_NAMES))
        with staged_directory(self.layout.data) as tmp:
            for name in SPLIT_NAMES:
                np.save(tmp / split_file(name), splits.arrays[name])
            info = {"source": splits.source, "split": splits.split, "sample": splits.sample,
                    "warning": splits.warning, "digest": digest,
                    "test_digest": test_digest(splits.arrays["test_images"], splits.arrays["test_labels"]),
                    **{part: len(splits.arrays[f"{part}_labels"]) for part in ("train", "validation", "test")}}
            write_json(tmp / self.layout.data_info.name, info)
        self.splits = None
        return info

    def expand(self, seed: int) -> dict:
        """The reference expansion of data/'s training set into expanded/, in shards; its expanded.json."""
        splits = self.load(expanded=False)
        images, labels = expand.expand(splits.train_images, splits.train_labels, seed=seed)
        with staged_directory(self.layout.expanded) as tmp:
            for number, start in enumerate(range(0, len(images), SHARD_SIZE)):
                np.save(tmp / f"images_{number:03d}.npy", images[start:start + SHARD_SIZE])
                np.save(tmp / f"labels_{number:03d}.npy", labels[start:start + SHARD_SIZE])
            info = {"count": len(images), "digest": digest_arrays(images, labels), "seed": seed}
            write_json(tmp / "expanded.json", info)
        self.splits = None
        return info

    def info(self) -> dict:
        """data/data.json: what the download step recorded of the data."""
        path = self.layout.data_info
        if not path.exists():
            raise PipelineError(f"{self.layout.root} has no prepared data; run the download step first.")
        return json.loads(path.read_text())

    def provenance(self) -> dict:
        """What a bundle records of its training data, so that whoever deploys it can tell (inference.ensemble)."""
        info = self.info()
        return {key: info.get(key) for key in ("source", "split", "sample", "digest", "test_digest", "warning")}

    def load(self, expanded: bool) -> sources.Splits:
        """The prepared arrays (and the expanded set, when asked), loaded once per run."""
        if self.splits is None:
            data, info = self.layout.data, self.info()
            self.splits = sources.Splits(**{name: np.load(data / split_file(name)) for name in SPLIT_NAMES},
                                         source=info["source"], split=info["split"])
        if expanded and self.splits.expanded_images is None:
            shards = sorted(self.layout.expanded.glob("images_*.npy"))
            if not shards:
                raise PipelineError(f"{self.layout.root} has no expanded data; run the expand step first.")
            self.splits.expanded_images = np.concatenate([np.load(p) for p in shards])
            self.splits.expanded_labels = np.concatenate(
                [np.load(str(p).replace("images_", "labels_")) for p in shards])
        return self.splits
