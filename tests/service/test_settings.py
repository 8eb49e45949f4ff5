"""Settings come from arguments, environment and a TOML file, in that order; bad values fail."""

import pydantic
import pytest

from reaseq.service.settings import ServiceSettings


def test_sources_in_order(tmp_path, monkeypatch) -> None:
    config = tmp_path / "svc.toml"
    config.write_text('store = "redis"\nredis_namespace = "from-file"\nhttp_port = 9000\n')
    monkeypatch.setenv("REASEQ_CONFIG", str(config))
    monkeypatch.setenv("REASEQ_HTTP_PORT", "9100")
    settings = ServiceSettings(grpc_port=9200)
    assert settings.store == "redis" and settings.redis_namespace == "from-file"
    assert settings.http_port == 9100  # environment beats the file
    assert settings.grpc_port == 9200  # arguments beat both


def test_invalid_values_fail_at_start(monkeypatch) -> None:
    monkeypatch.setenv("REASEQ_STORE", "memcached")
    with pytest.raises(pydantic.ValidationError, match="store"):
        ServiceSettings()
