"""run-pipeline (pipeline.cli's cli, as the console script runs it) that also keeps each worker's trained weights.

Usage: python pipeline_keeping_weights.py [run-pipeline's arguments], with WEIGHTS_DIR set: every network a
worker trains is saved there as <worker index>-<n>.npz (its best weights, which the chief goes on to evaluate
and export). Only the chief writes a run; this lets a test see that every worker ended with the same weights.
"""
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

from mnist_cnn_progression.pipeline import modelstage
from mnist_cnn_progression.pipeline.cli import cli

network_numbers = itertools.count()
train = modelstage.train


def train_and_keep(*args, **kwargs):
    trained = train(*args, **kwargs)
    worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.savez(Path(os.environ["WEIGHTS_DIR"]) / f"{worker}-{next(network_numbers)}.npz", *trained.model.get_weights())
    return trained


modelstage.train = train_and_keep

if __name__ == "__main__":
    sys.exit(cli())
