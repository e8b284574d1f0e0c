"""How people appear in the API's answers (defined with the read models in gateway/inbox/reading.py)."""
from __future__ import annotations

from gateway.inbox.reading import GuestOut, PersonOut

__all__ = ["GuestOut", "PersonOut"]
