"""ONNX export of a served tail, for Triton's ``onnxruntime_onnx`` backend (``veil export triton --onnx``).

The file is checked with ONNX Runtime against the eager tail before it is returned, on the same inputs as
the TorchScript check, so an exported repository always reproduces PyTorch within the tolerance.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.errors import ServingError
from veil.serve.validate import ACTIVATION_DIMS, INPUT_NAME, LOC_NAME, SCORES_NAME

ONNX_FILENAME = "model.onnx"
OPSET = 17


def _runtime() -> object:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError:
        raise ServingError("ONNX export needs onnx and onnxruntime: pip install 'veil[onnx]'") from None
    return onnxruntime


class _OrtTail(nn.Module):
    """An ONNX Runtime session behind the served tail's interface, to compare it like any other tail."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scores = self.session.run(None, {INPUT_NAME: x.numpy()})
        return torch.from_numpy(loc), torch.from_numpy(scores)


def onnx_bytes(tail: nn.Module, atol: float = 1e-4) -> tuple[bytes, float]:
    """Export ``ScoresTail(tail)`` (dynamic batch axis) and return (file bytes, max abs diff vs eager)."""
    from veil.serve.export import ScoresTail, check_close

    ort = _runtime()
    eager = ScoresTail(copy.deepcopy(tail).float().cpu().eval()).eval()
    batch = {0: "batch"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        warnings.catch_warnings(),
        torch.inference_mode(False),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        path = Path(tmp) / ONNX_FILENAME
        torch.onnx.export(
            eager,
            (torch.zeros(1, *ACTIVATION_DIMS),),
            path,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[LOC_NAME, SCORES_NAME],
            dynamic_axes={INPUT_NAME: batch, LOC_NAME: batch, SCORES_NAME: batch},
            opset_version=OPSET,
        )
        data = path.read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return data, check_close(eager, _OrtTail(session), "ONNX", atol)
