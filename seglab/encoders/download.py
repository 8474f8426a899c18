"""Pretrained weights from the network (`pretrained: true`), failing fast and in one line.

Without a network the libraries underneath retry for most of a minute (huggingface_hub and
torch.hub; issue 13 measured 47 s) and then raise a URLError traceback. Here, when the weights are
not in the local cache, one TCP connection to the host is tried first (5 s at most, skipped
behind a proxy, refused at once under HF_HUB_OFFLINE=1), and any failure of the download itself
becomes a SeglabError naming the weights and the fix: `pretrained=PATH`, a local file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from seglab.errors import SeglabError, first_line

T = TypeVar("T")
HF_HOST = "huggingface.co"
CONNECT_TIMEOUT_S = 5.0


def network_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises: OSError covers URLError, socket and requests errors and
    huggingface_hub's own; httpx's transport errors are not OSErrors."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx", "httpx2"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(__import__(module).HTTPError)
    return tuple(errors)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _fix(what: str) -> str:
    return (
        f"download {what} on a machine with a network and give pretrained=PATH "
        "(a local .pth or .safetensors file), or pretrained: false"
    )


def check_reachable(what: str, host: str) -> None:
    """Fail in one line, at once, if `host` cannot be reached for weights that are not cached."""
    if _offline():
        raise SeglabError(
            f"pretrained weights {what} are not cached and HF_HUB_OFFLINE is set; " + _fix(what)
        )
    if urllib.request.getproxies().get("https"):
        return  # only the proxy knows; the download's own error is caught below
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise SeglabError(
            f"cannot reach {host} to download the pretrained weights {what} ({error}); "
            + _fix(what)
        ) from None


def fetch_pretrained(what: str, host: str, cached: bool, fetch: Callable[[], T]) -> T:
    """fetch() (a download, or a read of the cache when `cached`), network errors as one line."""
    if not cached:
        check_reachable(what, host)
    try:
        return fetch()
    except network_errors() as error:
        reason = first_line(error)
        raise SeglabError(
            f"cannot download the pretrained weights {what} ({reason}); " + _fix(what)
        ) from None


def torch_hub_cached(url: str) -> bool:
    """Whether torch.hub already holds the file of `url` (its checkpoints folder)."""
    import torch.hub

    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()


def torchvision_state_dict(weights) -> dict:
    """The state dict of a torchvision weights enum member (e.g. VGG16_Weights.IMAGENET1K_V1)."""
    return fetch_pretrained(
        f"torchvision {weights} ({weights.url})",
        urlparse(weights.url).hostname or "download.pytorch.org",
        torch_hub_cached(weights.url),
        lambda: weights.get_state_dict(progress=True),
    )


def timm_source(name: str) -> tuple[str, str, bool]:
    """(description, host, cached) of the weights timm.create_model(name, pretrained=True)
    downloads: the Hugging Face Hub repository when the model has one, else its URL."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = {"model.safetensors", "pytorch_model.bin", getattr(cfg, "hf_hub_filename", None)}
        cached = any(
            isinstance(try_to_load_from_cache(hub_id, filename), str) for filename in names - {None}
        )
        return f"timm {name} (huggingface.co/{hub_id})", HF_HOST, cached
    if url:
        return f"timm {name} ({url})", urlparse(url).hostname or HF_HOST, torch_hub_cached(url)
    return f"timm {name}", HF_HOST, False
