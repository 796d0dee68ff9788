#!/usr/bin/env python3
"""python run_pipeline.py [options]: the pipeline's command (mnist_cnn_progression.pipeline.cli), also installed as run-pipeline."""
import sys

from mnist_cnn_progression.pipeline.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
