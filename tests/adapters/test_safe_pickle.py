"""The restricted unpickler: pickled code never runs and allowed helpers cannot be rewired."""

import builtins
import os
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mile_ssl.adapters.errors import CheckpointError
from mile_ssl.adapters.loading import load_backbone
from mile_ssl.adapters.reading import read_checkpoint
from mile_ssl.adapters.safe_pickle import PickledObject


def _payloads(marker: Path) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    return {
        "os.system": (os.system, (f"touch {marker}",)),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.eval": (builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
    }


class _Payload:
    def __init__(self, call: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
        self.call = call

    def __reduce__(self) -> tuple[Any, ...]:
        return self.call


@pytest.mark.parametrize(
    "payload", ["os.system", "builtins.exec", "builtins.eval", "subprocess.call"]
)
@pytest.mark.parametrize("where", ["experiment_state", "top-level"])
def test_code_payload_is_never_executed(tmp_path: Path, payload: str, where: str) -> None:
    marker = tmp_path / "MARKER"
    evil = _Payload(_payloads(marker)[payload])
    obj = {"step": 1, "experiment_state": evil} if where == "experiment_state" else evil
    data = pickle.dumps(obj, protocol=2)
    # The payload is live: a plain unpickler runs it.
    pickle.loads(data)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "pretrain_res50x1.pkl"
    path.write_bytes(data)
    if where == "experiment_state":
        raw = read_checkpoint(path)
        stand_in = raw["experiment_state"]
        assert isinstance(stand_in, PickledObject)
        assert stand_in.pickled_name.endswith(payload.rpartition(".")[2])
        assert str(marker) in str(stand_in.pickled_args)
    with pytest.raises(CheckpointError, match="unbuilt") as error:
        load_backbone(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(b"}X\x09\x00\x00\x00_functionK\x01s", id="dict-state"),
        pytest.param(b"N}X\x09\x00\x00\x00_functionK\x01s\x86", id="slot-state"),
    ],
)
def test_pickle_cannot_rewire_allowed_helpers(tmp_path: Path, state: bytes) -> None:
    # PROTO 2, GLOBAL _codecs.encode, <state>, BUILD, STOP: would make the latin-1
    # helper call something else for every later file.
    path = tmp_path / "tamper.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\n" + state + b"b.")
    with pytest.raises(CheckpointError, match="tried to modify") as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    path.write_bytes(pickle.dumps({"array": array}, protocol=2))
    assert torch.equal(read_checkpoint(path)["array"], torch.from_numpy(array))
