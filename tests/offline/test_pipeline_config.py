from pathlib import Path

import pytest

from reaseq.offline.pipeline import load_pipeline_config

EXAMPLE = Path(__file__).parents[2] / "configs" / "pipeline.example.toml"


def test_example_config_loads_into_nested_dataclasses() -> None:
    cfg = load_pipeline_config(EXAMPLE)
    assert cfg.features == ("id", "id+text")
    assert cfg.train.ranker.attention == "dot" and cfg.train.ranker.max_behaviors == 100
    assert cfg.text.dim == 64
    assert cfg.train.calibration == "platt"


def test_unknown_keys_are_errors(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train.ranker]\nattenton = 'din'\n")
    with pytest.raises(ValueError, match="unknown key 'attenton'"):
        load_pipeline_config(bad)


def test_feature_sets_name_registered_representations() -> None:
    from reaseq.offline.representations import representation_kind

    assert representation_kind("id") is None
    assert representation_kind("id+text") == "text"
    assert representation_kind("id+makr") == "makr"
    assert representation_kind("id+hybrid") == "hybrid"
    with pytest.raises(ValueError, match="known: id, id\\+text, id\\+makr, id\\+hybrid"):
        representation_kind("id+nope")


def test_makr_knowledge_input_is_a_config_key_checked_at_load(tmp_path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[makr.encode]\nknowledge_input = 'card+relations+text'\n")
    assert load_pipeline_config(good).makr.encode.knowledge_input == "card+relations+text"
    bad = tmp_path / "bad.toml"
    bad.write_text("[makr.encode]\nknowledge_input = 'relations'\n")
    with pytest.raises(ValueError, match="unknown knowledge_input 'relations'"):
        load_pipeline_config(bad)
    pca = tmp_path / "pca.toml"
    pca.write_text("[makr.encode]\nprojector = 'pca'\n")
    assert load_pipeline_config(pca).makr.encode.projector == "pca"
    pca.write_text("[makr.encode]\nprojector = 'linear'\n")
    with pytest.raises(ValueError, match="unknown projector 'linear'; known: contrastive, pca"):
        load_pipeline_config(pca)
