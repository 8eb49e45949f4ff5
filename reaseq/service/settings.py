"""Service configuration: one typed settings object.

Sources, strongest first: constructor arguments (CLI options), `REASEQ_*` environment, a `.env`
file, then the TOML file named by `REASEQ_CONFIG` (default `reaseq.toml`, optional).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REASEQ_", env_file=".env", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("REASEQ_CONFIG", "reaseq.toml"))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
        return init_settings, env_settings, dotenv_settings, toml, file_secret_settings

    # where releases come from
    store: Literal["embedded", "redis"] = "embedded"
    releases_dir: Path = Path("artifacts/releases")  # embedded store: release folders + ACTIVE
    redis_url: str = "redis://127.0.0.1:6379/0"  # or redis-cluster://host:port,host:port,...
    redis_password: SecretStr | None = None  # AUTH; also accepted inside redis_url
    redis_namespace: str = "reaseq"
    redis_timeout_s: float = Field(0.25, gt=0)  # socket connect/read timeout: fail fast, never hang
    release_poll_interval_s: float = Field(2.0, gt=0)  # how often the active pointer is checked
    # "auto": with store = redis, also subscribe to keyspace notifications of the pointer and check
    # it the moment it moves (polling stays as the fallback); "off": polling only
    release_push: Literal["off", "auto"] = "auto"
    # when the server's notify-keyspace-events lacks "K$", add them with CONFIG SET; off by default:
    # the service never changes server config unless told to (it logs once and polls instead)
    release_push_configure_server: bool = False

    # model backend
    backend: Literal["local", "triton"] = "local"  # in-process ONNX Runtime, or a Triton server
    onnx_intra_op_threads: int = Field(1, ge=1)  # threads inside one model call
    batch_max_size: int = Field(16, ge=1)  # requests merged into one model call (1: no batching)
    batch_workers: int = Field(2, ge=1)  # model calls in flight at once
    # run ONNX Runtime on the event loop's thread instead of a worker thread (see README, CPU path)
    model_inline: bool = True
    # where the local backend runs the model: cuda needs onnxruntime-gpu (checked at start-up)
    model_device: Literal["cpu", "cuda"] = "cpu"

    # backend = "triton": a Triton sidecar the service loads each release's model into
    triton_url: str = "127.0.0.1:8001"  # gRPC
    triton_runtime: Literal["onnxruntime", "python"] = "onnxruntime"  # python: pytriton's server
    triton_timeout_s: float = Field(1.0, gt=0)  # one model call (or the request's deadline)
    triton_load_timeout_s: float = Field(60.0, gt=0)  # loading one release's model
    triton_max_batch_size: int = Field(64, ge=1)  # Triton's dynamic batcher
    triton_queue_delay_us: int = Field(200, ge=0)
    triton_instances: int = Field(1, ge=1)
    triton_device: Literal["cpu", "gpu"] = "cpu"  # instance group kind of the pushed models
    triton_fallback: Literal["none", "local"] = "none"  # local: score in-process if Triton fails

    # transports
    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535)
    # Largest HTTP body read; bigger ones get 413 before any parsing. Sized to the largest valid
    # request: (1000 candidates + 100 recent + user_id) ids of 128 characters, each character at
    # worst a 12-byte JSON escape (non-BMP as a surrogate pair, "\ud83d\ude00"), plus quotes and
    # separators: 1101 * (128 * 12 + 4) = 1,695,540 bytes; 2 MiB leaves ~400 KB for indentation.
    # Raise it together with max_candidates / max_recent_behaviors.
    http_max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)

    # access (README "Access: tokens and TLS"); checked at start-up by service/access.py
    # Bearer tokens, comma-separated; unset or empty: no authentication. Several at once let a
    # token be rotated without downtime. Each token is 16..4096 printable ASCII characters.
    auth_tokens: SecretStr | None = None
    auth_tokens_file: Path | None = None  # one token a line (a mounted Secret); adds to the above
    auth_protect_ops: bool = False  # /readyz, /metrics and gRPC health need a token too
    grpc_tls_cert: Path | None = None  # PEM certificate chain; with grpc_tls_key: gRPC over TLS
    grpc_tls_key: Path | None = None  # PEM private key, unencrypted
    grpc_tls_client_ca: Path | None = None  # PEM CA bundle: mutual TLS, clients need a cert

    # request bounds
    max_candidates: int = Field(1000, ge=1)
    max_recent_behaviors: int = Field(100, ge=0)
    explain_top_k: int = Field(5, ge=1)  # attended behaviors returned per candidate (explain)
