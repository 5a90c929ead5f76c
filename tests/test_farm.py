"""The farm checks without a cluster: what Slurm's answers mean (tests/test_slurm.py runs them
against the local Slurm)."""

from __future__ import annotations

import pytest

from tracklstm.farm import profile
from tracklstm.farm.preflight import (
    Node,
    Partition,
    Request,
    SlurmState,
    _fields,
    _gres,
    _minutes,
    pending_minutes,
    problems,
)


def test_slurm_answers_are_read() -> None:
    line = "PartitionName=gpu AllowQos=ALL MaxTime=2-00:00:00 State=UP Nodes=g[01-02] TRES=cpu=2"
    assert _fields(line)["MaxTime"] == "2-00:00:00" and _fields(line)["TRES"] == "cpu=2"
    assert [_minutes(v) for v in ("30", "1:00:00", "2-00:00:00", "00:30:01", "UNLIMITED")] == [
        30, 60, 2880, 31, None,
    ]  # fmt: skip
    assert _gres("gpu:a100:4(S:0-1),gpu:2,license:x:1") == {"a100": 4, "": 2}
    assert _gres("(null)") == {}


def _state() -> SlurmState:
    cpu = Node(
        "c1", cpus=64, mem_mb=256_000, gpus={}, features={"cpu", "skylake"}, partitions={"short"}
    )
    gpu = Node(
        "g1", cpus=32, mem_mb=512_000, gpus={"a100": 4}, features={"gpu"}, partitions={"gpu"}
    )
    return SlurmState(
        {
            "short": Partition("short", "UP", True, 60, [cpu], allow_qos={"normal"}),
            "gpu": Partition("gpu", "UP", False, 2880, [gpu], allow_accounts={"lab"}),
        },
        associations={("lab", ""), ("other", "short")},
    )


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (Request("train", cpus=8, gpus=1, gpu_model="a100", partition="gpu", account="lab"), None),
        (Request("windows", cpus=2, mem_mb=4000, runtime=60), None),
        (Request("train", gpus=1, gpu_model="h100", partition="gpu", account="lab"),
         "train asks 1 GPU(s) of type h100; partition gpu's nodes have GPU types a100: "
         "set TRACKLSTM_SLURM_GPU_MODEL (or set TRACKLSTM_SLURM_GPUS)"),
        (Request("train", gpus=8, partition="gpu", account="lab"), "train asks 8 GPU(s);"),
        (Request("windows", runtime=61), "windows asks a time limit of 61 min; partition short "
         "allows 60 min: --set-resources windows:runtime=N"),
        (Request("windows", mem_mb=300_000), "--set-resources windows:mem_mb=N"),
        (Request("evaluate", qos="long"), "evaluate asks QOS long; partition short allows normal"),
        (Request("train", partition="gpu", account="other"),
         "train asks account other; partition gpu allows lab"),
        (Request("windows", account="lab", constraint="cpu&skylake"), None),
        (Request("windows", constraint="cpu&haswell"), "asks node features cpu&haswell"),
        (Request("windows", constraint="haswell|skylake"), None),
        (Request("train", cpus=48, gpus=1, partition="gpu", account="lab"),
         "train asks 48 CPUs per task; partition gpu's nodes have 32: "
         "set TRACKLSTM_SLURM_TRAIN_CPUS"),
    ],
)  # fmt: skip
def test_each_request_against_the_partitions(request_: Request, says: str | None) -> None:
    lines = problems([request_], _state())
    if says is None:
        assert lines == []
    else:
        assert len(lines) == 1 and says in lines[0], lines


def test_an_account_without_association_is_named() -> None:
    state = _state()
    state.partitions["gpu"].allow_accounts = None
    lines = problems([Request("train", partition="gpu", account="other", gpus=1)], state)
    assert lines == [
        "train asks account other; you have no association with it for partition gpu "
        "(sacctmgr show assoc): set TRACKLSTM_SLURM_ACCOUNT"
    ]


def test_pending_minutes_is_a_positive_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKLSTM_SLURM_PENDING_MINUTES", "2.5")
    assert pending_minutes() == 2.5
    for bad in ("", "soon", "0", "-1", "nan"):
        monkeypatch.setenv("TRACKLSTM_SLURM_PENDING_MINUTES", bad)
        with pytest.raises(profile.SettingError, match="TRACKLSTM_SLURM_PENDING_MINUTES"):
            pending_minutes()
