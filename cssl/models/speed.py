"""Speed options of a model (top-level config keys ``channels_last`` and ``compile``), device-agnostic: on a
CPU they run the same code paths as on a GPU, where they pay off."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn


def use_channels_last(model: nn.Module) -> None:
    """Weights (here) and input images (in each step, where the model reads ``channels_last``) in the
    channels-last memory format."""
    model.channels_last = True
    model.to(memory_format=torch.channels_last)


def compile_backbone(model: nn.Module) -> bool:
    """``torch.compile`` ``model.backbone`` in place (state-dict keys unchanged); returns whether it did.

    Where compilation is unsupported (no C++ compiler or Triton, an unsupported platform) it warns and leaves
    the backbone eager. A copy made before this call (a momentum key encoder) stays eager.
    """
    reason = compile_unsupported()
    if reason is not None:
        warnings.warn(f"compile=true skipped: torch.compile is unsupported here ({reason})", stacklevel=2)
        return False
    model.backbone.compile()
    return True


def compile_unsupported() -> str | None:
    """None if ``torch.compile`` compiles and runs a small function here, else the reason (one line)."""
    try:
        fn = torch.compile(lambda x: torch.relu(x) * 2 + 1, dynamic=False)
        fn(torch.ones(4))
    except Exception as err:  # the backend's failure modes vary (missing compiler, Triton, platform)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
    return None
