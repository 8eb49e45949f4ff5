"""A small published release (tests/core/tiny_release.py: a real ONNX model, no training run) for
tests about the transports rather than the scores: access control, TLS."""

from __future__ import annotations

from pathlib import Path

from reaseq.offline.publish import EmbeddedPublisher
from reaseq.service.settings import ServiceSettings
from tests.core.tiny_release import tiny_release

USER = "u0000000"
ITEMS = [f"i{n:07d}" for n in range(5)]
RANK_BODY = {"user_id": USER, "candidate_item_ids": ITEMS[:3]}


def publish_tiny(root: Path) -> Path:
    """An embedded store under `root` with one tiny release active; returns the store folder."""
    releases = root / "releases"
    EmbeddedPublisher(releases).publish(tiny_release(root / "exports", "tiny", value_format=2))
    return releases


def tiny_settings(releases: Path, **access: object) -> ServiceSettings:
    """Settings for the tiny store, no .env or REASEQ_* environment, plus access settings."""
    return ServiceSettings(
        _env_file=None,  # type: ignore[call-arg]
        store="embedded",
        releases_dir=releases,
        release_poll_interval_s=0.2,
        **access,  # type: ignore[arg-type]
    )
