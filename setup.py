"""setuptools' build step plus one file: the commit the training code was built from.

A plain (non-editable) install leaves no git checkout beside the code, so the
run could not say which commit trained it; this writes the commit into the
built package as pipeline/source_commit.txt, which pipeline.runner.source_commit
reads. Everything else is declared in setup.cfg.
"""
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

NOT_FROM_GIT = "not from a git checkout"  # also in pipeline.runner, which cannot be imported while building


def checkout_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return NOT_FROM_GIT
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else NOT_FROM_GIT


class BuildWithCommit(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install runs the checkout itself, which git can name
            target = Path(self.build_lib) / "mnist_cnn_progression" / "pipeline" / "source_commit.txt"
            target.write_text(checkout_commit() + "\n")


setup(cmdclass={"build_py": BuildWithCommit})
