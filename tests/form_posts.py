"""Posting the public inquiry form like a browser would: shared by the form tests and the bench."""
from __future__ import annotations

import re
import time
from typing import Any

import httpx

from gateway.forms.issue import issue
from tests.conftest import SECRET

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200)
JPEG = b"\xff\xd8\xff\xe0" + bytes(300)


def issued(studio_id: int, seconds_ago: float = 10.0) -> str:
    """The hidden `_issued` field as our page would have served it `seconds_ago`."""
    return issue(SECRET.encode(), studio_id, now=time.time() - seconds_ago)


def answers(**overrides: Any) -> dict[str, Any]:
    """The default form's answers (gateway/forms/definition.DEFAULT), consent given."""
    values: dict[str, Any] = {"name": "Lena Rose", "email": "lena@example.org",
                              "idea": "A small rose, fine line", "placement": "inner forearm", "size": "8",
                              "dates": "Fridays", "_consent": "yes"}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def post(client: httpx.Client, slug: str, data: dict[str, Any], images: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
         **headers: str) -> httpx.Response:
    files = [("images", (name, content, "application/octet-stream")) for name, content in images]
    if not files:  # still multipart, as a browser sends a form with a file input
        files = [("images", ("", b"", "application/octet-stream"))]
    return client.post(f"/f/{slug}", data=data, files=files, headers=headers)


def issued_from(page: str) -> str:
    match = re.search(r'name="_issued" value="([^"]+)"', page)
    assert match, "the page carries the issued fields"
    return match.group(1)


def solved(client: httpx.Client, slug: str) -> str:
    """A solution of a fresh proof-of-work challenge, as the ALTCHA widget would post it."""
    import base64
    import json

    from altcha import solve_challenge_v1

    challenge = client.get(f"/f/{slug}/challenge").json()
    solution = solve_challenge_v1(challenge["challenge"], challenge["salt"], challenge["algorithm"],
                                  challenge["maxNumber"])
    assert solution is not None
    payload = {"algorithm": challenge["algorithm"], "challenge": challenge["challenge"], "number": solution.number,
               "salt": challenge["salt"], "signature": challenge["signature"]}
    return base64.b64encode(json.dumps(payload).encode()).decode()
