"""How people appear in the API's answers: senders and recipients, and the studio's guests."""
from __future__ import annotations

import msgspec


class PersonOut(msgspec.Struct):
    email: str
    name: str


class GuestOut(msgspec.Struct):
    id: int             # for GET /api/v1/guests/{id} and the guest's erasure
    email: str
    name: str
