#!/usr/bin/env python3
"""Run one training worker of deploy/train-job.yaml with its TF_CONFIG, built from what Kubernetes tells its pod.

    mnist-tf-config COMMAND [ARG ...]

An Indexed Job (batch/v1, completionMode: Indexed) numbers its pods 0..N-1 in JOB_COMPLETION_INDEX and names
each pod's host <job>-<index>; with the pod template's subdomain set to a headless Service, the pods reach each
other at <job>-<index>.<service>. The manifest's env says the rest: WORKERS (the Job's completions) and
WORKER_ADDRESS, the address of worker {index} (mnist-train-{index}.mnist-train:2222). Every worker gets the same
cluster and its own index; worker 0 is the chief (pipeline.strategy.is_chief). The command then replaces this
process (exec: it gets the container's signals) with TF_CONFIG set. The image has this file as
/usr/local/bin/mnist-tf-config (deploy/Dockerfile.train). Bad settings exit with status 2 and one sentence.
"""
import json
import os
import sys


def whole_number(environ, name: str, why: str) -> int:
    text = environ.get(name, "")
    if not text.isdigit():
        raise ValueError(f"{name} is {text!r}, not a whole number: {why}")
    return int(text)


def tf_config(environ) -> dict:
    """TF_CONFIG of the worker `environ` describes: every worker's address and this one's index."""
    workers = whole_number(environ, "WORKERS", "set it to the Job's completions")
    index = whole_number(environ, "JOB_COMPLETION_INDEX", "run this in a pod of an Indexed Job "
                                                          "(completionMode: Indexed), which sets it")
    address = environ.get("WORKER_ADDRESS", "")
    if "{index}" not in address or not address.rpartition(":")[2].isdigit():
        raise ValueError(f"WORKER_ADDRESS is {address!r}: give worker {{index}}'s host and port, "
                         f"as in mnist-train-{{index}}.mnist-train:2222")
    if not 0 <= index < workers:
        raise ValueError(f"JOB_COMPLETION_INDEX {index} is not one of the {workers} workers (WORKERS)")
    return {"cluster": {"worker": [address.replace("{index}", str(i)) for i in range(workers)]},
            "task": {"type": "worker", "index": index}}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: mnist-tf-config COMMAND [ARG ...]", file=sys.stderr)
        return 2
    try:
        config = tf_config(os.environ)
    except ValueError as error:
        print(f"mnist-tf-config: {error}.", file=sys.stderr)
        return 2
    try:
        os.execvpe(argv[0], argv, {**os.environ, "TF_CONFIG": json.dumps(config)})
    except OSError as error:
        print(f"mnist-tf-config: cannot run {argv[0]}: {error.strerror}.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
