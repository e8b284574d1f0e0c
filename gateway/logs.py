"""Logging as every process of the gateway sets it up: the CLI's commands and `serve`'s worker child."""
from __future__ import annotations

import logging

from gateway.settings import Settings


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
