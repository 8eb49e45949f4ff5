"""Run a real `tritonserver` here: the binary inside the PyPI wheel `nvidia-pytriton`.

That wheel ships the server (2.51, CPU-only on a machine without a GPU) and its Python backend, but
not the native ONNX Runtime backend, so the ranker runs there through `python_model.py`. Used by
`reaseq triton serve`, the tests and the benchmarks; in production Triton comes from the standard
images (deploy/k8s) and this module is not involved.

Two quirks are handled here: the backend directory must hold the Python-backend stub built for this
interpreter's version, and the stub links the interpreter's libpython, which a pyenv Python keeps
outside the loader's default path (without it model loading fails with
`'_thread.RLock' object has no attribute '_recursion_count'`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

STARTUP_TIMEOUT_S = 60.0


class TritonNotInstalled(RuntimeError):
    """No tritonserver binary here."""


def _pytriton_root() -> Path:
    """The installed `pytriton` package folder, found without importing it (its Python API needs
    packages the service does not; only its files are used)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled(
            "no tritonserver here: `pip install --no-deps nvidia-pytriton==0.7.0` "
            "(`make setup` does), or point REASEQ_TRITONSERVER at a tritonserver binary"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def binary_path() -> Path:
    if os.environ.get("REASEQ_TRITONSERVER"):
        return Path(os.environ["REASEQ_TRITONSERVER"])
    return _pytriton_root() / "tritonserver" / "bin" / "tritonserver"


def prepare_backends(workdir: Path) -> Path:
    """A backend directory with the Python backend and the stub for this interpreter."""
    dist = _pytriton_root() / "tritonserver"
    python_dir = workdir / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (dist / "backends" / "python").iterdir():
        target = python_dir / item.name
        if not target.exists():
            target.symlink_to(item)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not (python_dir / stub.name).exists():
        shutil.copy(stub, python_dir / stub.name)
    return workdir / "backends"


def server_env() -> dict[str, str]:
    """The loader path for the server (the wheel's own libraries) and the stub (libpython)."""
    env = os.environ.copy()
    paths = [str(_pytriton_root().parent / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        paths.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    # the stub runs model code with this interpreter's packages (numpy, onnxruntime)
    site = sysconfig.get_paths()["purelib"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TritonServer:
    """A tritonserver process in explicit model-control mode (models load on request)."""

    repository: Path
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    workdir: Path | None = None
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        workdir = self.workdir or Path(tempfile.mkdtemp(prefix="reaseq-triton-"))
        self.workdir = workdir
        return [
            str(binary_path()),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={prepare_backends(workdir)}",
            "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=false",
            "--strict-readiness=false",  # ready with no model loaded: the service loads them
        ]

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> TritonServer:
        self.repository.mkdir(parents=True, exist_ok=True)
        command = self.command()
        self.log_path = self.log_path or self.workdir / "tritonserver.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
        )
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited: see {self.log_path}")
                with contextlib.suppress(Exception):
                    if client.is_server_ready(client_timeout=1.0):
                        return
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s: see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL to the server and its Python-backend stubs (its process group), as a crash of
        the whole pod would; killing only the server leaves the stubs running."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        self.kill()  # whatever is left of the group (stubs of a server that did not exit)


@contextlib.contextmanager
def running(repository: Path, **kwargs) -> Iterator[TritonServer]:
    server = TritonServer(repository, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
