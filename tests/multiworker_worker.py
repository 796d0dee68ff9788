"""One worker of the two-process MultiWorkerMirroredStrategy test: trains briefly, saves its final weights.

Usage: python multiworker_worker.py OUT.npz CHECKPOINT_DIR (TF_CONFIG set by the test; both workers are
given the same CHECKPOINT_DIR, as they are given the same run directory). It also saves the dropout mask
its replica draws, which must differ from the other worker's.
"""
import sys
from pathlib import Path

import numpy as np

from mnist_cnn_progression.pipeline import sources
from mnist_cnn_progression.pipeline import strategy as strategies

strategy = strategies.choose("auto")  # TF_CONFIG names a cluster: MultiWorkerMirroredStrategy, created first
import tensorflow as tf  # noqa: E402

from mnist_cnn_progression.models.layers import ReplicaDropout  # noqa: E402
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID  # noqa: E402
from mnist_cnn_progression.pipeline.train import TrainSettings, train  # noqa: E402

splits = sources.from_sample()
settings = TrainSettings(epochs=2, batch_size=32, optimizer="adam", learning_rate=0.002, shuffle=True, max_shift=1,
                         steps_per_call=10, seed=3)
out = Path(sys.argv[1])
trained = train(STAGE_BY_ID["conv2_relu"].network, splits, "train", settings, strategy, Path(sys.argv[2]),
                log=print, train_limit=640)
with strategy.scope():
    dropout = ReplicaDropout(0.5, seed=1)
mask = strategy.run(tf.function(lambda: dropout(tf.ones((4, 100)), training=True) != 0))
np.savez(out, *[w.numpy() for w in trained.model.weights], val=trained.best_val_accuracy,
         replicas=strategy.num_replicas_in_sync, chief=strategies.is_chief(strategy),
         mask=strategy.experimental_local_results(mask)[0].numpy())
