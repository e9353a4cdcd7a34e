"""The contract of a conversion: what an adapter may return."""

from typing import Any

import pytest

from mile_ssl.adapters.conversion import ConvertedCheckpoint


def test_converted_checkpoint_rejects_non_tensors() -> None:
    with pytest.raises(TypeError, match="offending keys: \\['epoch'\\]"):
        not_tensors: dict[str, Any] = {"epoch": 3}
        ConvertedCheckpoint(state_dict=not_tensors)
