"""Choosing where the model runs, the same way for training and serving."""

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(requested: str = "auto") -> torch.device:
    """Return the best available device for ``auto`` (cuda, then mps, then cpu), else the one named.

    Raises ValueError when a named accelerator is not available, rather than silently using the CPU.
    """
    if requested not in DEVICE_CHOICES and not requested.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {requested!r}")
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was requested but CUDA is not available")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but MPS is not available")
    return torch.device(requested)
