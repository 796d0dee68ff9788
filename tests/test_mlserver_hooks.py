"""MLServer's private parts are touched in inference/serve/mlserver_hooks.py alone, and checked there at start."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, package_files

INFERENCE = Path(__file__).resolve().parents[1] / "inference"
HOOKS = INFERENCE / "serve" / "mlserver_hooks.py"


def private_names(tree: ast.AST) -> list[str]:
    """Every `x._name` and every `from ... import _name` (dunders aside)."""
    def private(name: str) -> bool:
        return name.startswith("_") and not name.endswith("__")
    found = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and private(node.attr)]
    return found + [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names if private(alias.name)]


def test_no_module_but_the_hooks_names_a_private_attribute():
    """The inference package's own classes keep no private attributes either, so any one found is a dependency's."""
    modules = [path for name, path in sorted(package_files(INFERENCE).items()) if name.endswith(".py")]
    offenders = {str(path.relative_to(INFERENCE)): names for path in modules if path != HOOKS
                 and (names := private_names(ast.parse(path.read_text())))}
    assert offenders == {}
    assert {"_rest_server", "_grpc_server", "_data_plane", "_model_registry"} <= set(
        private_names(ast.parse(HOOKS.read_text())) + [node.value for node in ast.walk(ast.parse(HOOKS.read_text()))
                                                       if isinstance(node, ast.Constant)])


def test_the_check_finds_a_private_attribute_in_source():
    assert sorted(private_names(ast.parse("server._grpc_server._create_server()\nfrom mlserver.x import _y\n"
                                          "print(x.__name__)"))) == ["_create_server", "_grpc_server", "_y"]


PROBE = ("import sys\n"
         "{change}\n"
         "from mnist_cnn_progression.inference.server import main\n"
         "sys.exit(main(sys.argv[1:]))\n")
CHANGES = {  # another MLServer, as the check sees it -> what its sentence says
    "another version": ("import mlserver; mlserver.__version__ = '1.8.0'",
                        "MLServer 1.8.0 is installed, but the server's hooks into its internals were written for "
                        "1.7.1 (inference/serve/mlserver_hooks.py): install mlserver==1.7.1."),
    "an internal moved": ("from mlserver.grpc.server import GRPCServer; del GRPCServer._create_server",
                          "MLServer 1.7.1's internals differ from those the server's hooks were written for "
                          "(GRPCServer._create_server not as in 1.7.1): check inference/serve/mlserver_hooks.py."),
}


@pytest.mark.parametrize("case", CHANGES)
def test_another_mlserver_stops_the_server_with_one_sentence(case, tmp_path):
    """Before anything else: the models (none here) are not even looked at."""
    change, says = CHANGES[case]
    done = subprocess.run([sys.executable, "-c", PROBE.format(change=change), "--models", str(tmp_path),
                           "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                           "--metrics-port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {says}"


def test_the_installed_mlserver_passes_the_check():
    """In a process of its own: MLServer's protos and tritonclient's never share one."""
    done = subprocess.run([sys.executable, "-c", "from mnist_cnn_progression.inference.serve.mlserver_hooks import "
                           "check; check()"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
