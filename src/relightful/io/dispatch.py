"""numpy/torch interop: library functions accept either and return the kind they were given."""

from __future__ import annotations

import numpy as np
import torch


def to_torch(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """View a numpy array (zero copy where possible) or pass a tensor through."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t if dtype is None else t.to(dtype)


def like(result: torch.Tensor, reference):
    """Return `result` as the same kind (numpy or torch) as `reference`."""
    if isinstance(reference, torch.Tensor):
        return result
    return result.detach().cpu().numpy()
