"""Behind a reverse proxy (issue 18 "Settings": FORWARDED_ALLOW_IPS or our equivalent): the
client address the proxy reports counts for rate limits only when the proxy is trusted
(GATEWAY_FORWARDED_ALLOW_IPS). Real gateway, real HTTP; the test client plays the proxy on
127.0.0.1."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import RunningGateway, make_settings, start_gateway

CONVERSATIONS = "/api/v1/conversations"


def _guess(running: RunningGateway, forwarded_for: str, times: int) -> list[int]:
    # Each client its own guess: guesses at one prefix share a budget too (gateway/access/ratelimit.py).
    client = running.api(f"gw_{forwarded_for.replace('.', '')}")
    return [client.get(CONVERSATIONS, headers={"X-Forwarded-For": forwarded_for}).status_code for _ in range(times)]


def test_a_trusted_proxy_gets_each_client_its_own_budget(tmp_path: Path, database_url: str) -> None:
    running = start_gateway(make_settings(tmp_path, database_url, forwarded_allow_ips="127.0.0.1"), roles=("web",))
    try:
        assert _guess(running, "203.0.113.7", 10) == [401] * 10
        assert _guess(running, "203.0.113.7", 1) == [429]          # the guesser is blocked ...
        assert _guess(running, "198.51.100.2", 1) == [401]         # ... not every client of the proxy
    finally:
        running.stop()


def test_without_a_trusted_proxy_the_header_is_ignored(tmp_path: Path, database_url: str) -> None:
    """Before: uvicorn believed X-Forwarded-For from 127.0.0.1 whatever the gateway's settings
    said (its own FORWARDED_ALLOW_IPS, undocumented); a guesser could rotate the header forever."""
    running = start_gateway(make_settings(tmp_path, database_url, forwarded_allow_ips=""), roles=("web",))
    try:
        statuses = [running.api(f"gw_{i:02d}guess").get(  # another prefix each time: the address is braked
            CONVERSATIONS, headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(11)]
        assert statuses == [401] * 10 + [429]   # one address, one budget, whatever the header says
    finally:
        running.stop()
