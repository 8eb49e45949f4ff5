"""`reaseq gbr locate|train|fill` as a user runs them, bad options included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from reaseq.cli import app

runner = CliRunner()
TINY = """
[gbr.train]
epochs = 2
batch_size = 32
threads = 1

[gbr.train.model]
d_model = 32
n_layers = 1
n_heads = 2
ff_dim = 64
max_len = 24

[gbr.fill.locate]
min_votes = 1
window = 10
"""


def run(*args: str):
    result = runner.invoke(app, ["gbr", *args])
    return result


def test_locate_train_and_fill(tmp_path: Path) -> None:
    config = tmp_path / "gbr.toml"
    config.write_text(TINY)
    common = ["synthetic", "--artifacts", str(tmp_path / "artifacts"), "--config", str(config)]

    located = run("locate", *common)
    assert located.exit_code == 0, located.output
    stats = json.loads(located.stdout)
    assert stats["slots"] > 0 and set(stats["rule_fire_rate_over_all_gaps"]) == {
        "gap",
        "category",
        "cf",
    }

    trained = run("train", *common)
    assert trained.exit_code == 0, trained.output
    report = json.loads(trained.stdout)
    assert report["epochs"] == 2 and report["recovery"]["cases"] > 0

    out = tmp_path / "filled.parquet"
    filled = run("fill", *common, "--out", str(out))
    assert filled.exit_code == 0, filled.output
    frame = pd.read_parquet(out)
    latents = np.load(out.with_suffix(".latents.npy"))
    generated = frame[frame["generated"]]
    assert len(generated) == len(latents) > 0
    assert generated["latent_index"].tolist() == list(range(len(latents)))
    assert (frame.loc[~frame["generated"], "latent_index"] == -1).all()
    # positions count 0.. within each user's served sequence, in order
    first = frame.groupby("user_id")["position"].agg(["min", "max", "size"])
    assert (first["min"] == 0).all() and (first["max"] == first["size"] - 1).all()
    # the same run again reuses the trained model: same latents
    again = run("fill", *common, "--out", str(tmp_path / "again.parquet"))
    assert again.exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again.latents.npy"), latents)


def test_bad_options_are_one_clear_line(tmp_path: Path) -> None:
    artifacts = ["--artifacts", str(tmp_path)]
    cases = [
        (["train", "synthetic", "--representation", "pictures", *artifacts], "--representation"),
        (["train", "synthetic", "--warm-start", "gpt", *artifacts], "warm_start must be one of"),
        (["train", "no-such-dataset", *artifacts], "neither a path nor a known dataset"),
        (["locate", "synthetic", "--config", str(tmp_path / "missing.toml")], "missing.toml"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)


def test_a_bad_value_in_the_toml_is_refused_by_the_same_checks(tmp_path: Path) -> None:
    from reaseq.offline.pipeline import load_pipeline_config

    for table, line, message in [
        ("gbr.fill.locate", 'method = "psychic"', "locator method"),
        ("gbr.fill.sampler", "steps = 0", "steps >= 1"),
        ("gbr.train.model", 'warm_start = "gpt"', "warm_start must be one of"),
    ]:
        path = tmp_path / "bad.toml"
        path.write_text(f"[{table}]\n{line}\n")
        try:
            load_pipeline_config(path)
        except ValueError as err:
            assert message in str(err) and table in str(err), err
        else:
            raise AssertionError(f"{line} was accepted")
    path.write_text('[gbr.train.model]\nwarm_start = "minilm"\n')
    model = load_pipeline_config(path).gbr.train.model
    assert (model.d_model, model.n_layers) == (384, 6)  # the warm start's shape follows
