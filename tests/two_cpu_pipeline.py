"""The pipeline's command with the CPU split into two logical devices: what MirroredStrategy sees on two GPUs.

Usage: python two_cpu_pipeline.py [run_pipeline.py's arguments]; CPU_DEVICES=3 in the environment splits it into
three instead. Logical devices can only be configured before
TensorFlow initialises its runtime, so this runs in a process of its own and configures them before the CLI
(pipeline.cli.main, in this process) touches TensorFlow. With no GPU, MirroredStrategy() mirrors over every
logical CPU: `--set strategy=mirrored` gives two replicas, each taking half of every global batch.
"""
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * int(os.environ.get("CPU_DEVICES", "2")))

from mnist_cnn_progression.pipeline.cli import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
