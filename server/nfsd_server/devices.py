"""Which device a job runs on, checked where the user names it (``--device``)."""

from __future__ import annotations

from nfsd_server.errors import UsageError


def check_device(device: str | None) -> str | None:
    """``--device`` as a torch device string; UsageError naming the fix if torch cannot use it."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"--device {device!r} is not a torch device ({error}); use cuda, cuda:0 or cpu") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: this torch build sees no CUDA GPU; use --device cpu")
    return str(parsed)
