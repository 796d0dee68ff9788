"""The two distributions as pip builds them: one package name, and a base install free of the training code.

The wheels are built from a copy of the checkout (the checkout is left as it was), the way
`pip install ./inference .` builds them; what is installed in this environment is checked too.
"""
import ast
import email
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import EDITABLE_INSTALL, FOLDERS, files_unlike_the_installed, package_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mnist_cnn_progression"
BASE, TRAINING = "mnist-cnn-progression-inference", "mnist-cnn-progression"
TRAINING_FOLDERS = ("pipeline", "models", "export")
BUILD_LEFTOVERS = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
SOURCE_COMMIT = f"{PACKAGE}/pipeline/source_commit.txt"  # written by setup.py's build step
FOLDER_NAMES = {*TRAINING_FOLDERS, "inference", "run_pipeline"}  # what the code is not installed as


def source_modules(folder: str) -> set[str]:
    """Every module and page file of a source folder, as the wheel should name it."""
    return {f"{PACKAGE}/{folder}/{name}" for name in package_files(ROOT / folder)}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheels")
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "run_pipeline.py"):
        shutil.copy(ROOT / name, source / name)
    for folder in (*TRAINING_FOLDERS, "inference"):
        shutil.copytree(ROOT / folder, source / folder, ignore=BUILD_LEFTOVERS)
    commit = git_checkout(source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
                    str(source / "inference"), str(source)], check=True, capture_output=True)
    built = {}
    for wheel in out.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            info = next(n for n in names if n.endswith(".dist-info/METADATA"))
            metadata = email.message_from_bytes(archive.read(info))
            scripts = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
            recorded = archive.read(SOURCE_COMMIT).decode() if SOURCE_COMMIT in names else None
        built[metadata["Name"]] = {"files": {n for n in names if ".dist-info/" not in n},
                                   "requires": metadata.get_all("Requires-Dist") or [], "scripts": scripts,
                                   "commit": commit, "recorded_commit": recorded}
    assert set(built) == {BASE, TRAINING}
    return built


def git_checkout(directory: Path) -> str:
    """Make the copy a git checkout of one commit, as a clone is; its commit."""
    identity = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@127.0.0.1", "GIT_COMMITTER_NAME": "test",
                "GIT_COMMITTER_EMAIL": "test@127.0.0.1", "PATH": os.environ["PATH"], "HOME": str(directory)}
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run(["git", *command], cwd=directory, env=identity, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow  # pip builds the two wheels in isolated environments
def test_the_base_install_is_the_inference_folder_alone_and_needs_no_tensorflow(wheels):
    base = wheels[BASE]
    assert base["files"] == source_modules("inference")
    plain = [r for r in base["requires"] if "extra ==" not in r]
    assert not [r for r in plain if r.split(">")[0].split("=")[0].split("<")[0].strip() in
                {"tensorflow", "keras", "tensorflow-datasets", "onnx", "tf2onnx"}], plain
    assert all(f"{command} = {PACKAGE}.inference." in base["scripts"]
               for command in ("mnist-predict", "mnist-serve", "mnist-batch"))


@pytest.mark.slow  # pip builds the two wheels in isolated environments
def test_the_training_distribution_adds_its_folders_under_the_same_name_and_builds_on_the_base(wheels):
    training = wheels[TRAINING]
    assert training["files"] == set().union(*map(source_modules, TRAINING_FOLDERS)) | {SOURCE_COMMIT}
    assert f"{BASE}==0.1.0" in training["requires"]
    assert f"run-pipeline = {PACKAGE}.pipeline.cli:cli" in training["scripts"]


@pytest.mark.slow  # pip builds the two wheels in isolated environments
def test_neither_wheel_claims_the_shared_name_or_a_top_level_module(wheels):
    """mnist_cnn_progression is a namespace: an __init__.py in either wheel would be overwritten by the other."""
    for built in wheels.values():
        assert {name.split("/")[0] for name in built["files"]} == {PACKAGE}
        assert f"{PACKAGE}/__init__.py" not in built["files"]


@pytest.mark.parametrize("distribution", [BASE, TRAINING])
def test_what_is_installed_here_puts_nothing_at_the_top_level_but_the_package(distribution, tmp_path):
    """Installed plainly (CI) or editable (a checkout): no pipeline, models, export or inference at the top level.

    Asked from another directory: the build's egg-info in the checkout would otherwise answer for the install.
    """
    program = ("import importlib.metadata, importlib.util, json, sys; "
               "files = importlib.metadata.distribution(sys.argv[1]).files; "
               "specs = [importlib.util.find_spec(n) for n in ('pipeline', 'models', 'export', 'inference', 'cli')]; "
               "print(json.dumps({'tops': sorted({f.parts[0] for f in files}), "
               "'origins': [s.origin or '' for s in specs if s], "
               "'package': importlib.util.find_spec(sys.argv[2]).origin}))")
    done = subprocess.run([sys.executable, "-I", "-c", program, distribution, PACKAGE + ".inference.contract"],
                          cwd=tmp_path, check=True, capture_output=True, text=True)
    found = json.loads(done.stdout)
    tops = {top for top in found["tops"] if top not in ("..", "__pycache__")
            and not top.endswith(".dist-info") and not top.startswith("__editable__")}
    assert tops <= {PACKAGE}, tops  # empty when editable: the package is then found through the finder
    assert [origin for origin in found["origins"] if str(ROOT) in origin or PACKAGE in origin] == []
    assert found["package"].endswith("contract.py")


def test_the_server_image_installs_the_base_alone():
    """deploy/Dockerfile builds from the base's folder, and its build context holds none of the training code."""
    pip_targets = re.findall(r'pip install [^\n]*"/tmp/src/([\w/]*)\[serve\]"', (ROOT / "deploy/Dockerfile").read_text())
    assert pip_targets == ["inference"]
    context = (ROOT / "deploy/Dockerfile.dockerignore").read_text().split()
    assert [line for line in context if line.startswith("!") and line[1:].split("/")[0] in TRAINING_FOLDERS] == []


def test_the_code_imports_the_project_by_its_installed_name():
    """The checkout on sys.path lets `import inference` work in a test run and nowhere else: nothing may rely on it."""
    stray = []
    folders = (*TRAINING_FOLDERS, "inference", "tests", "benchmarks", "deploy")
    for path in [ROOT / "run_pipeline.py", *[p for folder in folders for p in (ROOT / folder).rglob("*.py")
                                            if "build" not in p.parts]]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else
                     [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            stray += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] in FOLDER_NAMES]
    assert stray == []


@pytest.mark.slow  # pip builds the two wheels in isolated environments
def test_a_plain_install_knows_the_commit_it_was_built_from(wheels):
    """Installed plainly, the code is not in a checkout: the build wrote the commit for the run's summary."""
    training = wheels[TRAINING]
    assert training["recorded_commit"] == training["commit"] + "\n" and len(training["commit"]) == 40


def test_the_run_records_the_commit_written_at_build_time_else_the_checkouts(tmp_path, monkeypatch):
    from mnist_cnn_progression.pipeline import runner
    checkout = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if not runner.SOURCE_COMMIT.is_file():  # an editable install runs the checkout: git names it
        assert runner.environment()["git_commit"] == checkout
    monkeypatch.setattr(runner, "SOURCE_COMMIT", tmp_path / "source_commit.txt")
    assert runner.source_commit() == "not from a git checkout"  # no file, and tmp_path is no checkout
    runner.SOURCE_COMMIT.write_text("0123abc\n")
    assert runner.environment()["git_commit"] == "0123abc"


def test_a_checkout_unlike_the_installed_package_is_told_by_its_files_contents_not_their_paths(tmp_path):
    """A plain install of the same files (CI's) is the checkout; an edited, a new or a deleted file is not."""
    checkout, installed = tmp_path / "checkout", tmp_path / "site-packages" / PACKAGE
    for root, compiled in ((checkout, b"one"), (installed, b"another")):
        (root / "pipeline" / "__pycache__").mkdir(parents=True)
        (root / "pipeline" / "runner.py").write_text("RUN = 1\n")
        (root / "pipeline" / "cli.py").write_text("CLI = 1\n")
        (root / "pipeline" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(compiled)  # never compared
    folders = {"pipeline": installed / "pipeline"}
    assert files_unlike_the_installed(checkout, folders) == []
    (checkout / "pipeline" / "runner.py").write_text("RUN = 2\n")
    (checkout / "pipeline" / "stages.py").write_text("")
    (checkout / "pipeline" / "cli.py").unlink()
    changed = ["pipeline/cli.py", "pipeline/runner.py", "pipeline/stages.py"]
    assert files_unlike_the_installed(checkout, folders) == changed
    assert files_unlike_the_installed(checkout, {"pipeline": None}) == ["pipeline/runner.py", "pipeline/stages.py"]


def test_the_tests_of_an_edited_checkout_stop_at_once_with_the_command_that_installs_it(tmp_path):
    """A copy of this checkout runs its tests against the package installed here; once edited, it is stopped."""
    copy = tmp_path / "checkout"
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, copy / folder, ignore=BUILD_LEFTOVERS)
    shutil.copy(ROOT / "setup.cfg", copy)
    (copy / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", copy / "tests")
    (copy / "tests" / "test_one.py").write_text("def test_one():\n    pass\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_one.py"]
    same = subprocess.run(command, cwd=copy, capture_output=True, text=True)
    assert same.returncode == 0 and "1 passed" in same.stdout, same.stdout + same.stderr
    with open(copy / "pipeline" / "runner.py", "a") as source:
        source.write("# an edit the installed package does not have\n")
    edited = subprocess.run(command, cwd=copy, capture_output=True, text=True)
    said = edited.stdout + edited.stderr
    assert edited.returncode == pytest.ExitCode.USAGE_ERROR and "passed" not in said, said
    assert f"({copy}): pipeline/runner.py is not the same there. Install the checkout editable, then rerun: " \
           f"{EDITABLE_INSTALL}" in said
