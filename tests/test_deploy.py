"""deploy/kubernetes.yaml read as Kubernetes reads it, and what it says run against the real server.

The init container's command (the image's commands as deploy/Dockerfile installs
them) fetches a pushed test release as a .tar.gz from an HTTP server on 127.0.0.1, the
ConfigMap's URL pointed at it, onto a directory standing for the volume; the server
container's command and args, with `$(VAR)` expanded from its env, the volume's
mount path moved to that directory and every container port to a free one (mapped
the same way in args, probes and the scraped port), start `python -m mnist_cnn_progression.inference.server`.
Then every probe's path must answer 200 on the port it names, and the scraped path
Prometheus text on the scraped port.
"""
import functools
import hashlib
import importlib.metadata
import http.server
import json
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import free_port

pytestmark = pytest.mark.slow  # the manifest's commands start an init step and a server

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
REPLICATED = {"ReadWriteMany", "ReadOnlyMany"}  # access modes that several nodes' pods can mount at once
PROBE_PATHS = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
               "livenessProbe": "/v2/health/live"}


def kinds(path: Path) -> dict:
    return {document["kind"]: document for document in yaml.safe_load_all(path.read_text()) if document}


MANIFEST = kinds(DEPLOY / "kubernetes.yaml")


def pod() -> dict:
    return MANIFEST["Deployment"]["spec"]["template"]


def container(name: str) -> dict:
    spec = pod()["spec"]
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert found, f"the Deployment has no container {name!r}"
    return found[0]


def init_container() -> dict:
    spec = pod()["spec"]
    assert spec.get("initContainers"), "the Deployment has no init container to put the bundle on the volume"
    return spec["initContainers"][0]


def container_ports() -> dict:
    """The server container's ports by name and by number, each to its number."""
    ports = container("server")["ports"]
    return {**{p["name"]: p["containerPort"] for p in ports}, **{p["containerPort"]: p["containerPort"] for p in ports}}


def image_commands() -> dict:
    """What each command of the image runs here: mnist-serve as installed, the rest from the Dockerfile's COPYs."""
    serve = importlib.metadata.entry_points(group="console_scripts")["mnist-serve"]
    assert serve.attr == "main", "mnist-serve no longer runs its module's main()"
    commands = {"mnist-serve": [sys.executable, "-m", serve.module]}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for source, name in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+/usr/local/bin/(\S+)$", dockerfile, re.M):
        assert f"!{source}" in (DEPLOY / "Dockerfile.dockerignore").read_text(), f"{source} is not in the build"
        commands[name] = [sys.executable, str(ROOT / source)]
    return commands


def environment(spec: dict, config: dict) -> dict:
    """A container's environment as the kubelet builds it: envFrom, then env (values, ConfigMap keys, limits)."""
    env = {}
    for source in spec.get("envFrom", []):
        assert source["configMapRef"]["name"] == MANIFEST["ConfigMap"]["metadata"]["name"]
        env.update(config)
    for variable in spec.get("env", []):
        value = variable.get("valueFrom", {})
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "configMapKeyRef" in value:
            assert value["configMapKeyRef"]["name"] == MANIFEST["ConfigMap"]["metadata"]["name"]
            env[variable["name"]] = config[value["configMapKeyRef"]["key"]]
        else:
            field = value["resourceFieldRef"]
            assert field["resource"] == "limits.cpu" and field.get("divisor", "1") == "1"
            env[variable["name"]] = str(container(field["containerName"])["resources"]["limits"]["cpu"])
    return env


def command_here(spec: dict, config: dict, volumes: Path, ports: dict) -> list[str]:
    """The container's command and args, $(VAR) expanded, run here: mount paths under `volumes`, ports moved."""
    env = environment(spec, config)
    words = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], word) for word in spec["command"] + spec.get("args", [])]
    mounts = sorted(spec.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    here = []
    for word in words[1:]:
        mount = next((m for m in mounts if word == m["mountPath"] or word.startswith(m["mountPath"] + "/")), None)
        if mount:
            word = str(volumes / mount["name"]) + word[len(mount["mountPath"]):]
        here.append({"0.0.0.0": "127.0.0.1", **{str(k): str(v) for k, v in ports.items()}}.get(word, word))
    return image_commands()[words[0]] + here


def run(command: list[str]) -> subprocess.CompletedProcess:
    """A command here, with the installed package, as the image runs it with its own."""
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)



def get(port: int, path: str) -> tuple[int, str, str]:
    """(HTTP status, content type, text); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, "", ""
    except OSError:
        return 0, "", ""


# ---- The release archive, as an object store would serve it ------------------------

def archive(directory: Path, out: Path, damage: str | None = None) -> str:
    """A release's version directory as a .tar.gz (tar -czf ... -C BASE N), one file's bytes changed if asked;
    its SHA-256."""
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            name = f"{directory.name}/" + path.relative_to(directory).as_posix()
            if path.is_file() and name == f"{directory.name}/{damage}":
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                damaged = out.parent / "damaged"
                damaged.write_bytes(data)
                tar.add(damaged, arcname=name)
            else:
                tar.add(path, arcname=name, recursive=False)
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An HTTP server on 127.0.0.1 for the archives, standing for the object store; yields (directory, base URL)."""
    directory = tmp_path_factory.mktemp("store")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield directory, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def config_for(url: str, sha256: str) -> dict:
    """The ConfigMap's data with the archive's URL and SHA-256 pointed at the test's store."""
    config = dict(MANIFEST["ConfigMap"]["data"])
    assert {"RELEASE_URL", "RELEASE_SHA256", "RELEASE_VERSION"} <= config.keys(), "the ConfigMap names no release"
    return {**config, "RELEASE_URL": url, "RELEASE_SHA256": sha256, "RELEASE_VERSION": "1"}


def fetch(config: dict, volumes: Path) -> subprocess.CompletedProcess:
    """The init container's command, run here."""
    return run(command_here(init_container(), config, volumes, {}))


# ---- The manifest itself --------------------------------------------------------------

def test_the_bundle_volume_names_its_storage_class_and_an_access_mode_the_replicas_can_share():
    claim = MANIFEST["PersistentVolumeClaim"]
    spec = pod()["spec"]
    volume = next(v for v in spec["volumes"] if v.get("persistentVolumeClaim"))
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"].get("storageClassName"), "the claim names no storage class: the cluster's default may not fit"
    replicas = max(MANIFEST["Deployment"]["spec"].get("replicas", 1),
                   MANIFEST.get("HorizontalPodAutoscaler", {}).get("spec", {}).get("maxReplicas", 1))
    modes = set(claim["spec"]["accessModes"])
    writers = [c["name"] for c in spec.get("initContainers", []) + spec["containers"]
               for m in c.get("volumeMounts", []) if m["name"] == volume["name"] and not m.get("readOnly")]
    assert writers == [c["name"] for c in spec.get("initContainers", [])], "the server must mount the bundle read-only"
    if replicas > 1:  # pods on several nodes mount it; ReadWriteOnce would hold them all on one node
        assert modes & REPLICATED, f"up to {replicas} replicas share one volume with {modes}"
        assert not writers or "ReadWriteMany" in modes, f"{writers} write a volume {replicas} replicas share"


def test_the_init_container_writes_the_path_the_server_mounts_and_serves():
    init, server = init_container(), container("server")
    config = config_for("https://store.example/bundle.tar.gz", "")
    init_command = command_here(init, config, Path("/volumes"), {})
    server_command = command_here(server, config, Path("/volumes"), {})
    written = Path(init_command[init_command.index("--into") + 1])
    served = Path(server_command[server_command.index("--models") + 1])
    assert written.parent == served, f"the init container fills {written}, the server serves the versions in {served}"
    assert written.name == config["RELEASE_VERSION"], f"{written} is not the release's version directory"
    assert served.parent == Path("/volumes"), f"{served} is not on a volume both containers mount"


def test_the_probes_name_the_health_endpoints_on_the_http_port():
    server = container("server")
    ports = container_ports()
    args = server.get("args", [])
    assert "--http-port" in args, "the server container does not say which port is HTTP"
    http_port = int(args[args.index("--http-port") + 1])
    for probe, path in PROBE_PATHS.items():
        assert probe in server, f"the server container has no {probe}"
        assert server[probe]["httpGet"]["path"] == path, f"{probe} asks {server[probe]['httpGet']['path']}"
        assert ports[server[probe]["httpGet"]["port"]] == http_port, f"{probe} is not on the HTTP port"


def scraped_port() -> tuple[int, str]:
    """The metrics port and path, as the pod annotations and the ServiceMonitor (through the Service) name them."""
    annotations = pod()["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true", "the pods are not marked for scraping"
    port, path = int(annotations["prometheus.io/port"]), annotations.get("prometheus.io/path", "/metrics")
    assert port in container_ports(), f"port {port} is none of the server container's"
    endpoint = kinds(DEPLOY / "servicemonitor.yaml")["ServiceMonitor"]["spec"]["endpoints"][0]
    service_port = next(p for p in MANIFEST["Service"]["spec"]["ports"] if p["name"] == endpoint["port"])
    assert container_ports()[service_port["targetPort"]] == port and endpoint["path"] == path
    args = container("server").get("args", [])
    assert "--metrics-port" in args and args[args.index("--metrics-port") + 1] == str(port), \
        "the server is not told to serve its metrics on the scraped port"
    return port, path


def test_the_pods_are_scraped_on_the_metrics_port():
    scraped_port()


# ---- The init step, run -----------------------------------------------------------------

def test_the_init_container_puts_a_checked_release_in_place_once(release, store, tmp_path):
    directory, url = store
    sha = archive(release, directory / "good.tar.gz")
    config, volumes = config_for(f"{url}/good.tar.gz", sha), tmp_path / "volumes"
    done = fetch(config, volumes)
    assert done.returncode == 0, done.stderr
    assert "(blessed by mnist-push)" in done.stdout
    target = volumes / "bundle" / config["RELEASE_VERSION"]
    for name in ("manifest.json", "release.json"):
        assert (target / name).read_bytes() == (release / name).read_bytes()
    assert [p.name for p in (volumes / "bundle").iterdir()] == [target.name], "staging files left on the volume"
    again = fetch({**config, "RELEASE_URL": f"{url}/gone.tar.gz"}, volumes)  # the next pod: no download
    assert again.returncode == 0 and "kept" in again.stdout, again.stderr


def test_a_release_without_the_gates_verdict_is_placed_and_said_so(release, store, tmp_path):
    """release.json is mnist-push's, but the init step needs only its version: a record without the gate's verdict
    (an older push, or one edited by hand) is placed once and kept after, not refused after it was put in place."""
    directory, url = store
    unverdicted = tmp_path / release.name
    shutil.copytree(release, unverdicted)
    record = json.loads((unverdicted / "release.json").read_text())
    del record["gate"]
    (unverdicted / "release.json").write_text(json.dumps(record))
    config = config_for(f"{url}/unverdicted.tar.gz", archive(unverdicted, directory / "unverdicted.tar.gz"))
    volumes = tmp_path / "volumes"
    done = fetch(config, volumes)
    assert done.returncode == 0 and "(no verdict recorded by mnist-push)" in done.stdout, done.stderr
    assert fetch(config, volumes).returncode == 0


BAD_ARCHIVES = {"damaged-member": "members/member_1.onnx does not match its SHA-256",
                "wrong-sha256": "the archive's SHA-256 is", "missing": "fetching it failed",
                "not-an-archive": "it is not a .tar.gz of a release directory",
                "never-pushed": "it holds no release.json: push the run with mnist-push",
                "another-version": "its release.json is of version 1, not 2"}


@pytest.mark.parametrize("case", BAD_ARCHIVES)
def test_a_bad_archive_stops_the_init_container_with_a_sentence_and_leaves_nothing(bundle, release, store, tmp_path,
                                                                                    case):
    directory, url = store
    sha = archive(bundle if case == "never-pushed" else release, directory / f"{case}.tar.gz",
                  "members/member_1.onnx" if case == "damaged-member" else None)
    if case == "not-an-archive":
        (directory / f"{case}.tar.gz").write_text("<Error><Code>AccessDenied</Code></Error>\n")  # a store's answer
        sha = ""
    config = config_for(f"{url}/{'nowhere' if case == 'missing' else case}.tar.gz",
                        "0" * 64 if case == "wrong-sha256" else sha)
    if case == "another-version":
        config["RELEASE_VERSION"] = "2"
    volumes = tmp_path / "volumes"
    failed = fetch(config, volumes)
    assert failed.returncode == 2, (failed.stdout, failed.stderr)
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), failed.stderr
    assert BAD_ARCHIVES[case] in lines[0]
    assert not any((volumes / "bundle").iterdir()), "files left on the volume"


# ---- The server, as the manifest starts it -------------------------------------------------

@pytest.fixture(scope="module")
def served(release, store, tmp_path_factory):
    """The server started by the manifest's commands on the fetched release; yields the container ports' mapping."""
    directory, url = store
    volumes = tmp_path_factory.mktemp("volumes")
    config = config_for(f"{url}/served.tar.gz", archive(release, directory / "served.tar.gz"))
    assert fetch(config, volumes).returncode == 0
    ports = {number: free_port() for number in set(container_ports().values())}
    command = command_here(container("server"), config, volumes, ports)
    log = volumes / "server.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    began = time.monotonic()
    while process.poll() is None and time.monotonic() - began < 60:
        if get(ports[container_ports()["http"]], "/v2/health/ready")[0] == 200:
            break
        time.sleep(0.2)
    else:
        process.kill()
        process.wait()
        pytest.fail(f"the server the manifest starts did not become ready: {log.read_text()[-2000:]}")
    yield {name: ports[number] for name, number in container_ports().items()}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0, log.read_text()[-2000:]


def test_each_probe_answers_200_on_the_port_it_names(served):
    server = container("server")
    for probe in PROBE_PATHS:
        check = server[probe]["httpGet"]
        status, _, _ = get(served[check["port"]], check["path"])
        assert status == 200, f"{probe}: {check['path']} on {check['port']} answers {status}"


def test_the_scraped_port_answers_prometheus_text(served):
    from prometheus_client.parser import text_string_to_metric_families
    port, path = scraped_port()
    status, content_type, text = get(served[port], path)
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    assert list(text_string_to_metric_families(text)), "no metric in the answer"
