"""`reaseq triton ...`: the Triton model repository and a local Triton server.

Serving with Triton: start a server (`reaseq triton serve` here; the standard image in
deploy/), then `reaseq serve --backend triton`: the service loads each release's model into it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from reaseq.cli_makr import _fail, console

triton_app = typer.Typer(help="Triton Inference Server: model repository, engines, local server.")
RepositoryOpt = Annotated[
    Path, typer.Option(help="Triton model repository folder (configs committed, models not)")
]


@triton_app.command("repository")
def repository(
    release: Annotated[
        list[Path] | None,
        typer.Option(
            help="release folder whose model to add as a version (repeatable)",
            show_default="none: configs only",
        ),
    ] = None,
    out: RepositoryOpt = Path("model_repository"),
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="also the FP16 variant")] = True,
) -> None:
    """Render the configs; with --release, add releases' models as versioned directories."""
    from reaseq.offline.model_repository import add_release, write_configs

    for path in write_configs(out):
        console.print(f"wrote {path}")
    for folder in release or []:
        try:
            written = add_release(folder, out, fp16=fp16)
        except (FileNotFoundError, ValueError) as err:
            _fail(str(err))
        for path in written.paths:
            console.print(f"wrote {path}")
        if fp16:
            console.print(f"FP16 variant: max |Δscore| {written.fp16_diff:.1e} vs fp32")


@triton_app.command("build-engine")
def build_engine(
    release: Annotated[Path, typer.Argument(help="release folder")],
    out: RepositoryOpt = Path("model_repository"),
    max_batch: Annotated[int, typer.Option(help="largest batch the engine takes")] = 64,
) -> None:
    """Build a TensorRT engine of a release's model (needs TensorRT's trtexec, i.e. a GPU host)."""
    from reaseq.offline.model_repository import build_engine as build

    try:
        console.print(f"wrote {build(release, out, max_batch)}")
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))


@triton_app.command("serve")
def serve(
    repository_dir: Annotated[
        Path, typer.Option("--repository", help="model repository Triton reads")
    ] = Path("model_repository"),
    grpc_port: Annotated[int, typer.Option(help="gRPC port (the service's triton_url)")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port")] = 8002,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port")] = 8003,
) -> None:
    """Run the tritonserver from the `nvidia-pytriton` wheel here (CPU, Python backend), in
    explicit model-control mode; serve with REASEQ_BACKEND=triton REASEQ_TRITON_RUNTIME=python."""
    from reaseq.service.triton.server import TritonNotInstalled, TritonServer

    server = TritonServer(
        repository_dir.resolve(),
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
    )
    try:
        server.start()
    except (TritonNotInstalled, RuntimeError) as err:
        _fail(str(err))
    console.print(
        f"tritonserver ready: gRPC {server.grpc_url}, log {server.log_path}\n"
        f"serve with: REASEQ_BACKEND=triton REASEQ_TRITON_RUNTIME=python "
        f"REASEQ_TRITON_URL={server.grpc_url} reaseq serve"
    )
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if server.process is not None and server.process.returncode not in (0, -15, None):
        _fail(f"tritonserver exited with {server.process.returncode}: see {server.log_path}")
