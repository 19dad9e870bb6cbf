"""The wire contract between the client and the Triton tail, and the checks that enforce it.

Both sides use the same constants and the same :func:`check_activation`, so a request the client would
refuse is also one the server refuses. Triton's own frontend already rejects a wrong input name,
dtype, rank, shape, byte size or a batch above ``max_batch_size`` with HTTP 400 / gRPC
INVALID_ARGUMENT; what it cannot see is the *values*. :data:`STUB_VALIDATION_SOURCE` closes that gap
inside Triton's Python-backend stub: a request with NaN or Inf is answered INVALID_ARG on its own,
before dynamic batching hands it to the tail, so one bad client can neither crash the server nor fail
the good requests that were batched with it.
"""

from __future__ import annotations

import numpy as np

from veil.errors import InputError

#: Triton names, as in the reference design: the activation in, box regressions and face scores out.
INPUT_NAME = "INPUT__0"
LOC_NAME = "OUTPUT__0"
SCORES_NAME = "OUTPUT__1"
#: The two models of the repository: the tail for clean activations and the tail used with noise.
BASE_MODEL = "face_detection_base"
NOISY_MODEL = "face_detection_noisy"
#: FaceBoxes at 1024x1024 split after the RDCL: the activation, and the anchors it yields
#: (32*32*21 + 16*16 + 8*8 = 21824, equal to ``len(veil.faceboxes.detect.priors(1024, 1024))``).
ACTIVATION_DIMS: tuple[int, int, int] = (128, 32, 32)
NUM_ANCHORS = 21824
LOC_DIMS: tuple[int, int] = (NUM_ANCHORS, 4)
SCORES_DIMS: tuple[int, int] = (NUM_ANCHORS, 2)
INPUT_SIZE: tuple[int, int] = (1024, 1024)
MAX_BATCH_SIZE = 8
#: Header that carries the access token for Triton's restricted endpoints (PyTriton 0.7 convention).
ACCESS_HEADER = "triton-access-token"


def check_activation(x: np.ndarray, max_batch_size: int = MAX_BATCH_SIZE) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite float32 batch [N, 128, 32, 32], 1 <= N <= max."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"{INPUT_NAME}: expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InputError(f"{INPUT_NAME}: expected FP32, got {x.dtype}")
    if x.ndim != 4 or tuple(x.shape[1:]) != ACTIVATION_DIMS:
        raise InputError(
            f"{INPUT_NAME}: expected shape [N, {', '.join(map(str, ACTIVATION_DIMS))}], got {list(x.shape)} "
            f"(the split activation of a {INPUT_SIZE[0]}x{INPUT_SIZE[1]} input)"
        )
    if not 1 <= x.shape[0] <= max_batch_size:
        raise InputError(f"{INPUT_NAME}: batch size must be 1..{max_batch_size}, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise InputError(f"{INPUT_NAME}: contains NaN or Inf values")


#: Appended to PyTriton's proxy ``model.py`` (run by Triton's Python-backend stub). It wraps
#: ``TritonPythonModel.execute``: requests with non-finite float inputs get a per-request
#: INVALID_ARG error (HTTP 400), the rest go on to the inference callable as one batch.
STUB_VALIDATION_SOURCE = """

# ---- appended by veil.serve: per-request value validation (NaN/Inf -> INVALID_ARG) ----
import numpy as _veil_np

_VEIL_EXECUTE = TritonPythonModel.execute


def _veil_error(message):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # bound by the stub at run time only
    if code is None:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _veil_problem(request):
    for tensor in request.inputs():
        array = tensor.as_numpy()
        if array.dtype.kind == "f" and not _veil_np.isfinite(array).all():
            return f"input {tensor.name()!r} contains NaN or Inf values"
    return None


def _veil_execute(self, requests):
    bad = {}
    for i, request in enumerate(requests):
        problem = _veil_problem(request)
        if problem is not None:
            bad[i] = _veil_error(problem)
    if not bad:
        return _VEIL_EXECUTE(self, requests)
    good = [r for i, r in enumerate(requests) if i not in bad]
    done = iter(_VEIL_EXECUTE(self, good) if good else [])
    return [bad[i] if i in bad else next(done) for i in range(len(requests))]


TritonPythonModel.execute = _veil_execute
"""
