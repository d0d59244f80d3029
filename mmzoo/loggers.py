"""Logger factories used by ``configs/logger``."""
from __future__ import annotations

import logging
import netrc
import os
from typing import Any

log = logging.getLogger(__name__)


def wandb_api_key_available() -> bool:
    """True if W&B can authenticate: ``WANDB_API_KEY`` or a ``~/.netrc`` entry from ``wandb login``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc()
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any(rc.authenticators(host) for host in ("api.wandb.ai", os.environ.get("WANDB_BASE_URL", "")) if host)


def wandb_logger(offline: bool | None = None, **kwargs: Any):
    """A Lightning ``WandbLogger`` that runs offline when no API key is configured
    (``offline=None``), so a run never blocks on a login prompt; sync later with ``wandb sync``."""
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = not wandb_api_key_available() or os.environ.get("WANDB_MODE") == "offline"
        if offline:
            log.warning("W&B: no API key found (WANDB_API_KEY / wandb login); logging offline to %s",
                        kwargs.get("save_dir", "."))
    return WandbLogger(offline=offline, **kwargs)
