"""deploy/train-job.yaml read as Kubernetes reads it, and its workers run as processes on 127.0.0.1.

No cluster here: each worker's TF_CONFIG is built by the container's own command (mnist-tf-config, the file
deploy/Dockerfile.train copies) with the Job's env and the JOB_COMPLETION_INDEX Kubernetes would set; the
workers' DNS names are then mapped to ports of 127.0.0.1 and the volume's mount path to a directory, and
every worker runs the container's run-pipeline arguments, a short stage's settings added after them.
"""
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import free_ports
from pipeline_runs import ROOT, final_weights, finish, start_workers

DEPLOY = ROOT / "deploy"
MANIFEST = {document["kind"]: document for document in yaml.safe_load_all((DEPLOY / "train-job.yaml").read_text())}
JOB, SERVICE, CLAIM = MANIFEST["Job"], MANIFEST["Service"], MANIFEST["PersistentVolumeClaim"]
POD = JOB["spec"]["template"]["spec"]
(WORKER,) = POD["containers"]
ENV = {variable["name"]: variable["value"] for variable in WORKER["env"]}
DOCKERFILE = (DEPLOY / "Dockerfile.train").read_text()
# A short stage after the container's arguments (argparse: the last --preset, --data and --stages win).
SHORT_STAGE = ["--preset", "quick", "--data", "sample", "--stages", "baseline", "--set", "train_limit=320",
               "--set", "batch_size=32", "--set", "epochs=2"]


def image_command(name: str) -> list[str]:
    """What the image's command `name` runs here: the file deploy/Dockerfile.train copies to /usr/local/bin/."""
    match = re.search(rf"^COPY\s+(?:--\S+\s+)*(\S+)\s+/usr/local/bin/{name}$", DOCKERFILE, re.M)
    assert match, f"deploy/Dockerfile.train does not install {name}"
    assert f"!{match.group(1)}" in (DEPLOY / "Dockerfile.train.dockerignore").read_text(), "not in the build"
    return [sys.executable, str(ROOT / match.group(1))]


def tf_config(index: int, **env) -> subprocess.CompletedProcess:
    """The container's command run as in the pod of completion index `index`, its TF_CONFIG printed."""
    probe = [sys.executable, "-c", "import os; print(os.environ['TF_CONFIG'])"]
    return subprocess.run(image_command(WORKER["command"][0]) + probe, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **ENV, "JOB_COMPLETION_INDEX": str(index), **env})


def test_the_image_is_tensorflows_own_of_the_pinned_version_in_both_flavours():
    pinned = re.search(r"^tensorflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert re.search(rf"^ARG TF_VERSION={re.escape(pinned)}$", DOCKERFILE, re.M)
    assert re.search(r"^ARG FLAVOUR=$", DOCKERFILE, re.M) and "--build-arg FLAVOUR=-gpu" in DOCKERFILE
    assert re.search(r"^FROM tensorflow/tensorflow:\$\{TF_VERSION\}\$\{FLAVOUR\}$", DOCKERFILE, re.M)
    assert WORKER["image"].split("/")[-1].startswith("mnist-train:")


def test_the_job_the_service_and_the_claim_fit_together():
    """One pod per worker, all at once; the workers' addresses are the names the headless Service gives them."""
    spec = JOB["spec"]
    assert JOB["apiVersion"] == "batch/v1" and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(ENV["WORKERS"]) >= 2
    assert SERVICE["spec"]["clusterIP"] == "None" and POD["subdomain"] == SERVICE["metadata"]["name"]
    assert SERVICE["spec"]["selector"] == {"batch.kubernetes.io/job-name": JOB["metadata"]["name"]}
    port = {p["name"]: p["containerPort"] for p in WORKER["ports"]}[SERVICE["spec"]["ports"][0]["targetPort"]]
    assert ENV["WORKER_ADDRESS"] == f"{JOB['metadata']['name']}-{{index}}.{POD['subdomain']}:{port}"
    # Every worker mounts the one run directory, on any node, and is told to use it.
    assert "ReadWriteMany" in CLAIM["spec"]["accessModes"]
    (volume,) = [v for v in POD["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") ==
                 CLAIM["metadata"]["name"]]
    (mount,) = [m for m in WORKER["volumeMounts"] if m["name"] == volume["name"]]
    args = WORKER["args"]
    assert Path(args[args.index("--run-dir") + 1]).is_relative_to(mount["mountPath"]) and not mount.get("readOnly")


def test_each_worker_is_given_the_whole_cluster_and_its_own_index():
    configs = []
    for index in range(int(ENV["WORKERS"])):
        built = tf_config(index)
        assert built.returncode == 0, built.stderr
        configs.append(json.loads(built.stdout))
    addresses = [f"mnist-train-{i}.mnist-train:2222" for i in range(len(configs))]
    assert configs == [{"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}
                       for i in range(len(configs))]


@pytest.mark.parametrize("env, sentence", [
    ({"JOB_COMPLETION_INDEX": ""}, "JOB_COMPLETION_INDEX is '', not a whole number: run this in a pod of an "
                                   "Indexed Job (completionMode: Indexed), which sets it."),
    ({"JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION_INDEX 2 is not one of the 2 workers (WORKERS)."),
    ({"WORKERS": "two"}, "WORKERS is 'two', not a whole number: set it to the Job's completions."),
    ({"WORKER_ADDRESS": "mnist-train-0.mnist-train"}, "WORKER_ADDRESS is 'mnist-train-0.mnist-train': give "
                                                      "worker {index}'s host and port"),
])
def test_a_bad_setting_stops_the_worker_with_one_sentence(env, sentence):
    built = tf_config(0, **env)
    assert built.returncode == 2 and not built.stdout
    assert built.stderr.startswith(f"mnist-tf-config: {sentence}") and "Traceback" not in built.stderr


@pytest.mark.slow  # a cluster of worker processes through a stage
def test_the_jobs_workers_train_a_stage_in_step_and_only_the_chief_writes(tmp_path):
    entry = importlib.metadata.entry_points(group="console_scripts")["run-pipeline"]
    assert entry.value == "mnist_cnn_progression.pipeline.cli:cli"  # what pipeline_keeping_weights.py runs
    workers = int(ENV["WORKERS"])
    configs = [json.loads(tf_config(index).stdout) for index in range(workers)]
    local = dict(zip(configs[0]["cluster"]["worker"], (f"127.0.0.1:{port}" for port in free_ports(workers))))
    for config in configs:
        config["cluster"]["worker"] = [local[address] for address in config["cluster"]["worker"]]
    mount = WORKER["volumeMounts"][0]["mountPath"]
    args = [arg.replace(mount, str(tmp_path / "volume")) for arg in WORKER["args"]]
    assert args[0] == "run-pipeline"
    command = [sys.executable, str(ROOT / "tests" / "pipeline_keeping_weights.py"), *args[1:], *SHORT_STAGE]
    (tmp_path / "weights").mkdir()
    finish(start_workers([command] * workers, configs, tmp_path / "job", WEIGHTS_DIR=str(tmp_path / "weights")),
           tmp_path / "job")

    run_dir = Path(args[args.index("--run-dir") + 1])
    summary = json.loads((run_dir / "summary.json").read_text())
    # MultiWorkerMirroredStrategy, by its class's name
    assert summary["environment"]["strategy"] == f"CollectiveAllReduceStrategy ({workers} replica(s))"
    assert summary["stages"]["baseline"]["status"] == "done"
    kept = [np.load(tmp_path / "weights" / f"{index}-0.npz") for index in range(workers)]
    chief = final_weights(run_dir, "baseline")
    assert len(kept[0].files) == len(chief) == 4  # two layers, kernel and bias each
    for other in kept[1:]:  # every worker ended with the chief's weights, bit for bit
        for name in kept[0].files:
            np.testing.assert_array_equal(kept[0][name], other[name])
    assert sorted(a.tobytes() for a in chief.values()) == sorted(kept[0][name].tobytes() for name in kept[0].files)
    # Only the chief wrote the run: the other workers kept only their locks.
    others = run_dir / "workers"
    assert {path.relative_to(others).as_posix() for path in others.rglob("*")} == \
        {name for i in range(1, workers) for name in (f"worker-{i}", f"worker-{i}/.lock")}
    assert not list((run_dir / "checkpoints").iterdir())
