"""Every touch of MLServer's private parts, in one module, checked at start against the version it was written for.

MLServer 1.7.1 has public extension points for settings, the model
repository (`model_repository_implementation`), custom REST routes
(`custom_handler`) and the model (`MLModel`): the server uses those
elsewhere. What it lacks, reached here and nowhere else:

- REST middleware placed inside its own (Prometheus, gzip) and an exception
  handler: its FastAPI app is `MLServer._rest_server._app`, and
  `user_middleware` is the only way to put a middleware inside those it adds.
- gRPC interceptors: `GRPCServer._create_server` builds its `grpc.aio` server
  with its own interceptors only, so the module's `aio` is swapped while it runs.
- gRPC readiness (`ServerReady`) of every served model: `MLServer._data_plane.ready`.
- FP32 gRPC contents as NumPy views: the module global `mlserver.grpc.converters.inject_raw`.
- Loading and retiring a version at run time: `MLServer._model_registry`.

`check` runs before anything else: on another MLServer, or one whose
internals moved, the server stops with one sentence (exit 2) instead of
serving half hardened. Keep MLServer pinned exactly (inference/pyproject.toml).
"""
from types import SimpleNamespace

WRITTEN_FOR = "1.7.1"


class Unsupported(RuntimeError):
    """The installed MLServer is not the one these hooks were written for."""


def check() -> None:
    """Raises Unsupported with one sentence unless MLServer is 1.7.1 with every internal the hooks use."""
    import mlserver
    from mlserver import raw
    from mlserver.grpc import converters
    from mlserver.grpc import server as grpc_server_module
    from mlserver.handlers import DataPlane

    if mlserver.__version__ != WRITTEN_FOR:
        raise Unsupported(f"MLServer {mlserver.__version__} is installed, but the server's hooks into its internals "
                          f"were written for {WRITTEN_FOR} (inference/serve/mlserver_hooks.py): install "
                          f"mlserver=={WRITTEN_FOR}.")
    missing = [name for name, present in (
        ("GRPCServer._create_server", hasattr(grpc_server_module.GRPCServer, "_create_server")),
        ("mlserver.grpc.server.aio", hasattr(grpc_server_module, "aio")),
        ("mlserver.grpc.converters.inject_raw", getattr(converters, "inject_raw", None) is raw.inject_raw),
        ("DataPlane.ready", hasattr(DataPlane, "ready"))) if not present]
    if missing:
        raise Unsupported(f"MLServer {mlserver.__version__}'s internals differ from those the server's hooks were "
                          f"written for ({', '.join(missing)} not as in {WRITTEN_FOR}): check "
                          "inference/serve/mlserver_hooks.py.")


def private(owner, name: str):
    """owner.name, or Unsupported with a sentence when MLServer keeps it elsewhere."""
    if not hasattr(owner, name):
        raise Unsupported(f"MLServer keeps no {type(owner).__name__}.{name}, which the server's hooks were written "
                          f"for in {WRITTEN_FOR}: check inference/serve/mlserver_hooks.py.")
    return getattr(owner, name)


def add_rest_middleware(server, *, inner: list, outer: list, exception_handlers: dict) -> None:
    """inner: inside MLServer's metrics and gzip, first outermost (their refusals are counted, binary answers
    compressed); outer: around everything (an access log sees every answer)."""
    app = private(private(server, "_rest_server"), "_app")
    app.user_middleware = [*outer, *app.user_middleware, *inner]  # Starlette builds the stack at the first request
    for error, handler in exception_handlers.items():
        app.add_exception_handler(error, handler)


def add_grpc_interceptors(server, interceptors: list) -> None:
    """Ours first (outermost), then MLServer's own, in the grpc.aio server it builds at start."""
    from mlserver.grpc import server as grpc_server_module
    grpc_server = private(server, "_grpc_server")
    create = private(grpc_server, "_create_server")

    def create_with_ours():
        real = grpc_server_module.aio
        grpc_server_module.aio = SimpleNamespace(server=lambda *args, interceptors=(), **kwargs: real.server(
            *args, interceptors=[*ours, *interceptors], **kwargs))
        try:
            return create()
        finally:
            grpc_server_module.aio = real
    ours = list(interceptors)
    grpc_server._create_server = create_with_ours


def set_readiness(server, ready) -> None:
    """ready: an async function of no argument; MLServer asks only the models still registered."""
    private(server, "_data_plane").ready = ready


def model_registry(server):
    """MLServer's registry of loaded models: no public call loads or unloads a version at run time."""
    from mlserver.registry import MultiModelRegistry
    registry = private(server, "_model_registry")
    if not isinstance(registry, MultiModelRegistry):
        raise Unsupported(f"MLServer's model registry is not the MultiModelRegistry of {WRITTEN_FOR}: check "
                          "inference/serve/mlserver_hooks.py.")
    return registry


def replace_grpc_raw_inputs(inject) -> None:
    """inject(inputs, raw_contents) -> inputs, in place of MLServer's converter (lists of Python floats)."""
    from mlserver.grpc import converters
    converters.inject_raw = inject
