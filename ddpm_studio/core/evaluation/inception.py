"""torch-fidelity's FID Inception network, found offline-first and loaded without running code from the file.

The network, its weights (``pt_inception-2015-12-05``, converted from TensorFlow) and its
TF1-compatible resize to 299x299 are the library's, so the numbers compare with published ones.
This module only finds the weights, checks them, and wraps the library's extractor in the
interface ``metrics.py`` expects. It is an optional extra: ``pip install -e ".[eval]"``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

from ddpm_studio.core.errors import UserError

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name carries the start of its SHA-256
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILE
LIBRARY_EXTRACTOR_NAME = "inception-v3-compat"
OFFLINE_VARIABLE = "DDPM_STUDIO_OFFLINE"  # set to 1: never download, say what is missing instead


# How the command's user names the weights file; the window names its own field instead (see ``worded``).
COMMAND_WEIGHTS_WORDS = ("--inception-weights", "pass --inception-weights PATH")


class MetricsUnavailable(UserError, ValueError):
    """The Inception metrics cannot run here; the message says why and what to do, in one sentence.

    ``needs`` is what is missing: "packages" (the eval extra) or "weights" (the FID Inception weights
    file), so that the window can show the sentence beside the control it concerns. A sentence about
    the weights names the command's way of choosing the file (``COMMAND_WEIGHTS_WORDS``);
    ``worded(chosen_by, how_to_choose)`` gives it with another, such as the window's own field.
    """

    def __init__(self, template: str, needs: str = "packages"):
        self.template, self.needs = template, needs
        super().__init__(self.worded(*COMMAND_WEIGHTS_WORDS))

    def worded(self, chosen_by: str, how_to_choose: str) -> str:
        """The sentence with ``{chosen_by}`` (what named the file) and ``{how_to_choose}`` (a way to name it) filled."""
        return self.template.replace("{chosen_by}", chosen_by).replace("{how_to_choose}", how_to_choose)


_torchvision_placeholders = None  # keeps the placeholder operator schemas alive (see import_torch_fidelity)


def import_torch_fidelity():
    """Import torch-fidelity, or raise ``MetricsUnavailable`` saying how to install it.

    torchvision's wheels on PyPI are built against CUDA torch; beside a CPU-only torch their
    C++ operators fail to load, which torchvision tolerates, except that its fake-tensor
    registrations for ``nms`` and ``qnms`` then fail on import (pytorch/vision#9085). None of
    torch-fidelity's Inception, metric or dataset code uses those operators, so we declare
    their schemas (no kernels: calling them still fails loudly) and import again.
    """
    global _torchvision_placeholders
    try:
        import torch_fidelity

        return torch_fidelity
    except ImportError as error:
        raise MetricsUnavailable(
            f"FID, KID and IS need the optional evaluation packages ({error.name or error}); "
            "install them with: pip install -e \".[eval]\"."
        ) from None
    except RuntimeError as error:
        if "torchvision::" not in str(error) or _torchvision_placeholders is not None:
            raise
    for name in [name for name in sys.modules if name.split(".")[0] in ("torchvision", "torch_fidelity")]:
        del sys.modules[name]  # the half-finished first import
    library = torch.library.Library("torchvision", "FRAGMENT")
    for operator in ("nms", "qnms"):
        library.define(f"{operator}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_placeholders = library
    import torch_fidelity

    return torch_fidelity


def cached_weights_path() -> Path:
    """Where the library's own download puts the weights: torch.hub's cache under ``$TORCH_HOME``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def missing_weights_message(reason: str) -> str:
    return (f"The FID Inception weights {WEIGHTS_FILE} (SHA-256 starting {WEIGHTS_SHA256_PREFIX}) are not on this "
            f"machine and {reason}: download them elsewhere from {WEIGHTS_URL} and put the file at "
            f"{cached_weights_path()}, or {{how_to_choose}}.")


def offline() -> bool:
    return os.environ.get(OFFLINE_VARIABLE, "").strip() not in ("", "0")


def find_weights(explicit: Path | str | None = None, download: bool = True) -> Path:
    """The weights file: ``explicit`` if given, else the cache, else the library's URL (downloaded into the
    cache, with its progress bar). Raises ``MetricsUnavailable`` in one sentence when none is to be had."""
    if explicit is not None:
        explicit = Path(explicit).expanduser()
        if not explicit.is_file():
            raise MetricsUnavailable(f"{{chosen_by}} {explicit}: no such file; it should be {WEIGHTS_FILE} "
                                     f"(SHA-256 starting {WEIGHTS_SHA256_PREFIX}), from {WEIGHTS_URL}.", "weights")
        return verified(explicit)
    cached = cached_weights_path()
    if cached.is_file():
        return verified(cached)
    if not download or offline():
        raise MetricsUnavailable(missing_weights_message(f"downloads are off ({OFFLINE_VARIABLE}=1)" if offline()
                                                          else "downloads are off"), "weights")
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(WEIGHTS_URL, str(cached), hash_prefix=WEIGHTS_SHA256_PREFIX, progress=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a hash mismatch is a RuntimeError
        reason = str(getattr(error, "reason", None) or error).strip().splitlines()
        reason = reason[0] if reason else type(error).__name__
        raise MetricsUnavailable(missing_weights_message(f"the download failed ({reason})"), "weights") from None
    return verified(cached)


def verified(path: Path) -> Path:
    """Check the file's hash, then that it holds only tensors (a ``weights_only`` load), before the library loads it."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
        raise MetricsUnavailable(f"{path} is not {WEIGHTS_FILE}: its SHA-256 starts {digest.hexdigest()[:8]}, "
                                 f"not {WEIGHTS_SHA256_PREFIX}; fetch it again from {WEIGHTS_URL}.", "weights")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the file is unusable
        raise MetricsUnavailable(f"{path} cannot be read as plain weights ({type(error).__name__}).",
                                 "weights") from None
    return path


class InceptionFeatures(torch.nn.Module):
    """The library's FID Inception: uint8 (N, 3, H, W) in, (2048 pool features, 1008 unbiased logits) out."""

    def __init__(self, weights: Path):
        super().__init__()
        library = import_torch_fidelity()
        # The hash and a weights_only load were checked in find_weights; the library loads the same file.
        self.network = library.FeatureExtractorInceptionV3(
            LIBRARY_EXTRACTOR_NAME, ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.network(images)
        return pool, logits


def create_inception(device: torch.device, weights: Path | str | None = None) -> InceptionFeatures:
    if importlib.util.find_spec("torch_fidelity") is None:  # before looking for (or downloading) weights
        import_torch_fidelity()  # raises the sentence that says how to install it
    return InceptionFeatures(find_weights(weights)).to(device)
