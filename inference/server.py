"""Serve the ensemble over the Open Inference Protocol (KServe v2), REST and gRPC, with Seldon's MLServer.

    mnist-serve --models RUN_DIR|BUNDLE|BASE [--host 127.0.0.1] [--http-port 8080] [--grpc-port 8081]
                [--metrics-port 8082] [--repository-api] [--poll-seconds 5] [--require-release]

Models: `ensemble` and `ensemble-int8` (the bundle's fused graphs) and, given
a run directory, each stage's network under its stage id. Every file of the
bundle is checked against its SHA-256 and every model loaded before any port
opens: a damaged or missing bundle exits with status 2 and one sentence. Ready
(GET /v2/health/ready) means every model is loaded and has answered a first
inference. Every answer, metric series and access-log line names the model
version (a directory served alone is version 1, or its number). Prometheus
metrics (MLServer's: REST and gRPC requests, latency histograms; this
server's: inference requests, images and latency by model and version) at
/metrics on the metrics port; one access-log line per request on stderr. The
repository API (load, unload, index) is closed unless --repository-api opens it. One process
(MLServer's parallel_workers: 0), so ONNX Runtime's threads own the cores;
SIGTERM or Ctrl-C shuts it down cleanly. Imports no TensorFlow.

BASE holds numbered versions (BASE/1, BASE/2, ...: each a run directory or a
bundle): the highest complete one is served, and a higher one copied in later
takes over without a restart or a lost request (inference.serve.versions).
A version's release.json (written by mnist-push) is its release card in the
model metadata; --require-release refuses a version without one.
MLServer's internals are touched only in inference.serve.mlserver_hooks,
checked first: on another MLServer the command exits 2 with one sentence.
"""
import argparse
import asyncio
import socket
import sys
from functools import partial
from pathlib import Path

from mnist_cnn_progression.inference.ensemble import MODES
from mnist_cnn_progression.inference.serve import mlserver_hooks, transport
from mnist_cnn_progression.inference.serve.versions import Rollout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, type=Path, metavar="RUN_DIR|BUNDLE|BASE",
                        help="a run directory (its bundle and each stage's network), an ensemble bundle, or a base "
                             "directory of versions 1, 2, ... (each a run directory or bundle; a version is complete "
                             "once its bundle's manifest.json is in it, so copy that last or rename the version "
                             "directory into place)")
    parser.add_argument("--poll-seconds", type=float, default=5, metavar="S",
                        help="how often to look for a new version in BASE; 0: only on SIGHUP (default: 5)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface "
                                                            "(default: 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8080, metavar="PORT", help="REST (default: 8080)")
    parser.add_argument("--grpc-port", type=int, default=8081, metavar="PORT", help="gRPC (default: 8081)")
    parser.add_argument("--metrics-port", type=int, default=8082, metavar="PORT",
                        help="Prometheus metrics at /metrics (default: 8082)")
    parser.add_argument("--repository-api", action="store_true",
                        help="open the repository API (POST /v2/repository/index, .../models/NAME/load and unload, "
                             "and gRPC's Repository* calls); closed by default, since anyone who reaches the port "
                             "could unload the models")
    parser.add_argument("--require-release", action="store_true",
                        help="refuse a version without a release.json (copied in by hand, not pushed by mnist-push), "
                             "as a damaged one is; without it such a version is served with a warning line")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime threads per model (default: every CPU)")
    parser.add_argument("--mode", choices=MODES, default="vote",
                        help="vote: majority, a tie to the highest mean probability (default); mean: highest mean")
    parser.add_argument("--max-batch", type=int, default=1024, metavar="N",
                        help="the most images or pictures in one request (default: 1024)")
    parser.add_argument("--max-body-mb", type=float, default=32, metavar="M",
                        help="the largest REST body or gRPC message, in MB of 2**20 bytes (default: 32)")
    args = parser.parse_args(argv)
    if args.poll_seconds < 0:
        parser.error("--poll-seconds must be 0 (only on SIGHUP) or more.")
    try:
        mlserver_hooks.check()
    except mlserver_hooks.Unsupported as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    transport.log_on_stderr()  # before the first version's warm-up lines
    rollout = Rollout(args.models, threads=args.threads, mode=args.mode, max_batch=args.max_batch,
                      require_release=args.require_release)
    try:
        rollout.first()
    except (OSError, ValueError, KeyError) as error:
        print(f"error: cannot serve the models in {args.models}: {error}", file=sys.stderr)
        return 2
    for port in (args.http_port, args.grpc_port, args.metrics_port):
        if not free(args.host, port):
            print(f"error: cannot listen on {args.host}:{port}: the address is in use or not this machine's.",
                  file=sys.stderr)
            return 2
    from mlserver.utils import install_uvloop_event_loop  # MLServer's own command runs on uvloop too
    install_uvloop_event_loop()
    try:
        asyncio.run(serve(rollout, args))
    except mlserver_hooks.Unsupported as error:  # an internal found missing once the server is built
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def free(host: str, port: int) -> bool:
    """Whether the port can be bound now: told in one sentence here, not as a traceback once half the server runs."""
    try:
        with socket.create_server((host, port)):
            return True
    except OSError:
        return False


async def serve(rollout: Rollout, args: argparse.Namespace) -> None:
    """Run MLServer until SIGTERM/SIGINT; it is ready once every model has loaded and answered."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware import Middleware
    from mlserver import MLServer
    from mlserver.settings import Settings

    from mnist_cnn_progression.inference.serve.binary import BinaryTensors
    from mnist_cnn_progression.inference.serve.runtime import ServedRepository
    max_body = int(args.max_body_mb * (1 << 20))
    served = rollout.start_settings()  # the one list that loads, readiness and the repository read; rollout updates it
    settings = Settings(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, parallel_workers=0,
                        grpc_max_message_length=max_body, metrics_port=args.metrics_port, metrics_endpoint="/metrics",
                        debug=False, model_repository_implementation=ServedRepository,
                        model_repository_implementation_args={"models": served})
    server = MLServer(settings)
    registry = mlserver_hooks.model_registry(server)
    not_ready = partial(transport.not_ready, registry, served)
    closed = not args.repository_api  # refused before MLServer reads or routes the call
    mlserver_hooks.add_rest_middleware(
        server, outer=[Middleware(transport.AccessLog)],
        inner=[Middleware(transport.ReadyProbe, not_ready=not_ready),
               *([Middleware(transport.ClosedRepository)] if closed else []),
               Middleware(transport.BodyLimit, limit=max_body), Middleware(BinaryTensors)],
        exception_handlers={RequestValidationError: transport.invalid_request})
    mlserver_hooks.add_grpc_interceptors(server, [transport.AccessInterceptor(),
                                                 *([transport.ClosedRepositoryInterceptor()] if closed else [])])

    async def ready() -> bool:
        return not await not_ready()
    mlserver_hooks.set_readiness(server, ready)
    mlserver_hooks.replace_grpc_raw_inputs(transport.numpy_raw_inputs)
    transport.quiet_bad_requests()
    watching = asyncio.create_task(rollout.watch(registry, args.poll_seconds, served))
    try:
        await server.start(served)
    finally:
        watching.cancel()


if __name__ == "__main__":
    sys.exit(main())
