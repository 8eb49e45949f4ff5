"""The committed stubs in reaseq/v1 match the proto: a proto edit without `make proto` fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = "proto/reaseq/v1/ranking.proto"
GENERATED = ("ranking_pb2.py", "ranking_pb2.pyi", "ranking_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    out = str(tmp_path)
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", PROTO,
        ],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    for name in GENERATED:
        fresh = (tmp_path / "reaseq" / "v1" / name).read_text()
        committed = (ROOT / "reaseq" / "v1" / name).read_text()
        assert committed == fresh, f"reaseq/v1/{name} is stale: run `make proto` and commit it"


def test_stubs_import_and_describe_the_service() -> None:
    from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

    service = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"]
    assert service.full_name == "reaseq.v1.RankingService"
    assert [m.name for m in service.methods] == ["Rank"]
    assert hasattr(ranking_pb2_grpc, "RankingServiceStub")
    response = ranking_pb2.RankResponse(scores=[0.5], unknown_item_indices=[0])
    assert ranking_pb2.RankResponse.FromString(response.SerializeToString()) == response
