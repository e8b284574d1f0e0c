"""An app team can generate a client from the document and use it (issue 14 "Client
generation"): openapi-python-client generates one without warnings, and that client lists
conversations, reads one and posts a reply with an idempotency key against a real gateway.

The client is generated into the test's temporary directory, never committed. The one setting
given to the generator is the documented `content_type_overrides`, since it has no reader for
`application/zip` (the export): treated as any other binary download.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import RunningGateway
from tests.mail import make_mail

PACKAGE = "gateway_client"
GENERATOR_CONFIG = "content_type_overrides:\n  application/zip: application/octet-stream\n"


def _generate(gw: RunningGateway, into: Path) -> subprocess.CompletedProcess[str]:
    document = into / "openapi.json"
    document.write_bytes(gw.api(None).get("/schema/openapi.json").content)
    config = into / "generator.yaml"
    config.write_text(GENERATOR_CONFIG)
    bin_dir = str(Path(sys.executable).parent)  # its post-generation step runs ruff from there
    return subprocess.run(
        [str(Path(bin_dir) / "openapi-python-client"), "generate", "--path", str(document), "--config", str(config),
         "--meta", "none", "--output-path", str(into / PACKAGE)],
        capture_output=True, text=True, timeout=300, cwd=into,
        env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})


@pytest.fixture
def client_package(gw: RunningGateway, tmp_path: Path) -> Iterator[Any]:
    done = _generate(gw, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "warning" not in output.lower() and "error" not in output.lower(), output
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_the_generated_client_lists_reads_and_replies(gw: RunningGateway, client_package: Any) -> None:
    studio = gw.add_studio("inkwell", name="Inkwell Tattoo")
    gw.send(make_mail(subject="Tattoo Anfrage", from_="Lena Müller <lena@example.org>"), studio.address)
    gw.process()
    list_conversations = importlib.import_module(f"{PACKAGE}.api.conversations.list_conversations")
    get_conversation = importlib.import_module(f"{PACKAGE}.api.conversations.get_conversation")
    create_reply = importlib.import_module(f"{PACKAGE}.api.messages.create_reply")
    models = importlib.import_module(f"{PACKAGE}.models")

    with client_package.AuthenticatedClient(base_url=gw.base_url, token=studio.token,
                                            raise_on_unexpected_status=True) as client:
        page = list_conversations.sync(client=client, limit=10)
        assert isinstance(page, models.ConversationList), page
        [conversation] = page.items
        assert conversation.subject == "Tattoo Anfrage" and conversation.guest.email == "lena@example.org"

        detail = get_conversation.sync(conversation.id, client=client)
        assert isinstance(detail, models.ConversationDetailOut), detail
        assert [m.subject for m in detail.messages] == ["Tattoo Anfrage"]

        body = models.CreateReplyJsonBody(text="Freitag um 14 Uhr passt!")
        first = create_reply.sync_detailed(conversation.id, client=client, body=body, idempotency_key="reply-1")
        assert first.status_code == 202, first.content
        assert isinstance(first.parsed, models.MessageOut)
        assert first.parsed.text == "Freitag um 14 Uhr passt!" and first.parsed.direction == "outbound"
        # A retry with the same key is answered with the first reply, not sent again.
        again = create_reply.sync_detailed(conversation.id, client=client, body=body, idempotency_key="reply-1")
        assert again.status_code == 202 and again.parsed.id == first.parsed.id

        after = get_conversation.sync(conversation.id, client=client)
        assert [m.text for m in after.messages if m.direction == "outbound"] == ["Freitag um 14 Uhr passt!"]

    with client_package.Client(base_url=gw.base_url) as anonymous:
        refused = list_conversations.sync_detailed(client=anonymous)
        assert refused.status_code == 401 and isinstance(refused.parsed, models.Error)
