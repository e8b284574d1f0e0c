"""Every route of the API against every kind of caller, over HTTP.

MATRIX says, for each route of the app, what each principal gets: a 2xx, or the exact
refusal. A route the app has and the matrix lacks fails the first test, so a new route
cannot ship without someone deciding who may call it. Refusals must carry nothing but the
error itself (never 403-with-data). One gateway per back end serves all cases; targets that
a call uses up (a held message, a token, a profile, a grant) are made fresh for each case.
"""
from __future__ import annotations

import itertools
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from sqlalchemy import select

from gateway.store.tables import SUBSCRIPTION
from gateway.store.db import dispose_engines, read_tx, write_tx
from gateway.store.tables import CONVERSATION, MESSAGE
from gateway.store.models import utcnow
from gateway.access.ratelimit import AuthFailureLimiter
from gateway.access.support import active_grant, grant_access, grant_duration, revoke_grant
from tests.access import as_support, connect_member, held_message, open_conversation, support_token
from tests.billing_support import billing_settings
from tests.mail import make_mail
from tests.conftest import BACKENDS, RunningGateway, StudioInfo, _throwaway_pg_database, start_gateway
from tests.stripe_emulator import StripeEmulator

# A public address (no name to resolve offline); nothing is posted to it: no worker runs here.
WEBHOOK_ENDPOINT = {"url": "https://1.1.1.1/hooks/gateway", "event_types": ["message.created"]}
PRINCIPALS = ("owner", "member", "disconnected", "other_owner", "anonymous", "support", "support_no_grant")

# What each principal gets. "2xx" is any success; refusals are exact. Members read, answer and
# decide like the owner but manage nothing; support reads the read routes under a grant; another
# studio's ids are 404; a disconnected member's token is dead (401).
MATRIX: dict[tuple[str, str], tuple[str, ...]] = {
    #                                                          owner  member  gone   other  anon   support no-grant
    ("GET", "/api/v1/conversations"):                         ("2xx", "2xx", "401", "2xx", "401", "2xx", "403"),
    ("GET", "/api/v1/conversations/{conversation_id:str}"):   ("2xx", "2xx", "401", "404", "401", "2xx", "403"),
    ("GET", "/api/v1/conversations/{conversation_id:str}/messages"):
                                                              ("2xx", "2xx", "401", "404", "401", "2xx", "403"),
    ("POST", "/api/v1/conversations/{conversation_id:str}/read"):
                                                              ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/conversations/{conversation_id:str}/replies"):
                                                              ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/conversations/{conversation_id:str}/replies/upload"):
                                                              ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/conversations/{conversation_id:str}/close"):
                                                              ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/conversations/{conversation_id:str}/reopen"):
                                                              ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/held"):                                  ("2xx", "2xx", "401", "2xx", "401", "2xx", "403"),
    ("GET", "/api/v1/automatic"):                             ("2xx", "2xx", "401", "2xx", "401", "2xx", "403"),
    ("POST", "/api/v1/held/{message_id:str}/accept"):         ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/held/{message_id:str}/reject"):         ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/attachments/{attachment_id:str}"):       ("2xx", "2xx", "401", "404", "401", "2xx", "403"),
    ("GET", "/api/v1/studio"):                                ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("PATCH", "/api/v1/studio"):                              ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("GET", "/api/v1/form"):                                  ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("PUT", "/api/v1/form"):                                  ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("GET", "/api/v1/form/versions"):                         ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("GET", "/api/v1/tokens"):                                ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("POST", "/api/v1/tokens"):                               ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("DELETE", "/api/v1/tokens/{token_id:str}"):              ("2xx", "404", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/webhook-endpoints"):                     ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("POST", "/api/v1/webhook-endpoints"):                    ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("DELETE", "/api/v1/webhook-endpoints/{endpoint_id:str}"):
                                                              ("2xx", "403", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/webhook-endpoints/{endpoint_id:str}/rotate-secret"):
                                                              ("2xx", "403", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/webhook-endpoints/{endpoint_id:str}/deliveries"):
                                                              ("2xx", "403", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/profiles"):                              ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("POST", "/api/v1/profiles"):                             ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("DELETE", "/api/v1/profiles/{profile_id:str}"):          ("2xx", "403", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/profiles/me/notifications"):             ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("PATCH", "/api/v1/profiles/me/notifications"):           ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("GET", "/api/v1/support-grants"):                        ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("POST", "/api/v1/support-grants"):                       ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("DELETE", "/api/v1/support-grants/{grant_id:str}"):      ("2xx", "403", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/audit"):                                 ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("DELETE", "/api/v1/conversations/{conversation_id:str}"):
                                                              ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/conversations/{conversation_id:str}/restore"):
                                                              ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("DELETE", "/api/v1/messages/{message_id:str}"):          ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/messages/{message_id:str}/restore"):    ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/trash"):                                 ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("GET", "/api/v1/trash/conversations"):                   ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("GET", "/api/v1/trash/messages"):                        ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("GET", "/api/v1/messages/{message_id:str}"):             ("2xx", "2xx", "401", "404", "401", "2xx", "403"),
    ("GET", "/api/v1/guests/{guest_id:str}"):                 ("2xx", "2xx", "401", "404", "401", "403", "403"),
    ("POST", "/api/v1/guests/{guest_id:str}/erase"):          ("2xx", "403", "401", "404", "401", "403", "403"),
    ("GET", "/api/v1/export"):                                ("2xx", "403", "401", "2xx", "401", "403", "403"),
    ("POST", "/api/v1/account/deletion"):                     ("2xx", "403", "401", "2xx", "401", "403", "403"),
    # The confirmation needs no token (the mailed code is the proof): a wrong code is 404 for all.
    ("POST", "/api/v1/account/deletion/confirm"):             ("404", "404", "404", "404", "404", "404", "404"),
    ("GET", "/account/deletion/confirm"):                     ("2xx", "2xx", "2xx", "2xx", "2xx", "2xx", "2xx"),
    ("POST", "/account/deletion/confirm"):                    ("404", "404", "404", "404", "404", "404", "404"),
    # The live stream: a 2xx is its first bytes (the stream stays open; the test reads no further).
    ("GET", "/api/v1/events"):                                ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    ("GET", "/api/v1/billing"):                               ("2xx", "2xx", "401", "2xx", "401", "403", "403"),
    # Allowed for owners: inkwell already has a plan (409 to a second checkout), blackrose has none
    # (a checkout, but nothing to cancel: 409). The 409s are the plan's answer, not a refusal of the caller.
    ("POST", "/api/v1/billing/checkout"):                     ("409", "403", "401", "2xx", "401", "403", "403"),
    ("POST", "/api/v1/billing/cancel"):                       ("409", "403", "401", "409", "401", "403", "403"),
}

# Routes that are no caller's business: probes, the schema, providers' signed webhooks, the
# guests' public inquiry form (tests/test_form_api.py); and the web pages, which take a session,
# not a bearer token: their matrix is PAGES in tests/test_web_login.py.
UNLISTED = ("/healthz", "/readyz", "/schema", "/webhooks/", "/f/", "/app")


@dataclass
class World:
    """Studio "inkwell" with a conversation and an attachment, seen by every principal;
    studio "blackrose" next door; a support operator."""

    gw: RunningGateway
    studio: StudioInfo
    other: StudioInfo
    conversation_id: int
    attachment_id: int
    guest_message_id: str
    owner_profile_id: int = 0
    endpoint_id: int = 0
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    serial: Iterator[int] = field(default_factory=itertools.count)

    @classmethod
    def build(cls, gw: RunningGateway) -> World:
        studio, other = gw.add_studio("inkwell"), gw.add_studio("blackrose")
        mail = open_conversation(gw, studio)
        world = cls(gw, studio, other, mail.conversation_id, mail.attachment_id, mail.guest_message_id)
        with write_tx(gw.engine) as conn:  # inkwell pays, so restoring is allowed (free plans: 402)
            conn.execute(SUBSCRIPTION.insert().values(studio_id=studio.id, plan="monthly", status="active",
                                                      updated_at=utcnow()))
        [owner] = gw.api(studio.token).get("/api/v1/profiles").json()["items"]
        world.owner_profile_id = owner["id"]
        _, member = connect_member(gw, studio, "artist@inkwell.example")
        gone_id, gone = connect_member(gw, studio, "former@inkwell.example")
        assert gw.api(studio.token).delete(f"/api/v1/profiles/{gone_id}").status_code == 204
        support = support_token(gw, "alice")
        world.clients = {
            "owner": gw.api(studio.token), "member": gw.api(member), "disconnected": gw.api(gone),
            "other_owner": gw.api(other.token), "anonymous": gw.api(None),
            "support": as_support(gw, support, "inkwell"), "support_no_grant": as_support(gw, support, "inkwell"),
        }
        return world

    def set_grant(self, active: bool) -> None:
        """Support's principals differ only in this: whether inkwell's owner has granted access."""
        now = utcnow()
        with write_tx(self.gw.engine) as conn:
            current = active_grant(conn, self.studio.id, now)
            if active and current is None:
                grant_access(conn, self.studio.id, self.owner_profile_id, "owner:owner@inkwell.example",
                             grant_duration(), "", now)
            elif not active and current is not None:
                revoke_grant(conn, self.studio.id, current.id, "owner:owner@inkwell.example", now)

    # Path parameters: shared targets for what a call leaves intact, fresh ones for what it uses up.
    def fresh_held(self) -> int:
        return held_message(self.gw, self.studio, self.guest_message_id,
                            from_=f"Stranger <stranger{next(self.serial)}@elsewhere.example>")

    def fresh_owner_token(self) -> int:
        return int(self.clients["owner"].post("/api/v1/tokens").json()["id"])

    def fresh_endpoint(self) -> int:
        response = self.clients["owner"].post("/api/v1/webhook-endpoints", json=WEBHOOK_ENDPOINT)
        assert response.status_code == 201, response.text
        return int(response.json()["endpoint"]["id"])

    def endpoint(self) -> int:
        """One endpoint for the calls that leave it in place (a studio has at most ten)."""
        if not self.endpoint_id:
            self.endpoint_id = self.fresh_endpoint()
        return self.endpoint_id

    def fresh_member(self) -> int:
        return connect_member(self.gw, self.studio, f"member{next(self.serial)}@inkwell.example")[0]

    def fresh_grant(self) -> int:
        now = utcnow()
        with write_tx(self.gw.engine) as conn:
            return grant_access(conn, self.studio.id, self.owner_profile_id, "owner:owner@inkwell.example",
                                grant_duration(hours=1), "", now).id

    def _new_inquiry(self) -> int:
        """A new guest's first mail (each a new sender: the flood brake counts per sender)."""
        n = next(self.serial)
        reply = self.gw.send(make_mail(from_=f"Gast {n} <gast{n}@example.org>", subject=f"Anfrage {n}"),
                             self.studio.address, mail_from=f"gast{n}@example.org")
        assert reply.code == 250
        [result] = self.gw.process()
        conversation_id = result.outcomes[0].conversation_id
        assert conversation_id is not None
        return conversation_id

    def fresh_conversation(self, deleted: bool = False) -> int:
        conversation_id = self._new_inquiry()
        if deleted:
            assert self.clients["owner"].delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
        return conversation_id

    def fresh_message(self, deleted: bool = False) -> int:
        conversation_id = self.fresh_conversation()
        with read_tx(self.gw.engine) as conn:
            message_id = int(conn.execute(select(MESSAGE.c.id).where(
                MESSAGE.c.conversation_id == conversation_id)).scalar_one())
        if deleted:
            assert self.clients["owner"].delete(f"/api/v1/messages/{message_id}").status_code == 200
        return message_id

    def guest_id(self) -> int:
        return int(self.clients["owner"].get(f"/api/v1/conversations/{self.conversation_id}").json()["guest"]["id"])

    def fresh_guest(self) -> int:
        conversation_id = self._new_inquiry()
        with read_tx(self.gw.engine) as conn:
            return int(conn.execute(select(CONVERSATION.c.guest_id).where(
                CONVERSATION.c.id == conversation_id)).scalar_one())

    def path(self, method: str, template: str) -> str:
        values: dict[str, Callable[[], int]] = {
            "conversation_id": lambda: self.conversation_id, "attachment_id": lambda: self.attachment_id,
            "message_id": self.fresh_held, "token_id": self.fresh_owner_token, "profile_id": self.fresh_member,
            "grant_id": self.fresh_grant, "guest_id": self.guest_id, "endpoint_id": self.endpoint,
        }
        # Targets a call uses up: deleting, restoring and erasing get their own each time.
        if template.startswith("/api/v1/conversations/{conversation_id:str}") and \
                (method == "DELETE" or template.endswith("/restore")):
            values["conversation_id"] = lambda: self.fresh_conversation(deleted=method == "POST")
        if template.startswith("/api/v1/messages/"):
            values["message_id"] = lambda: self.fresh_message(deleted=method == "POST")
        if template.endswith("/erase"):
            values["guest_id"] = self.fresh_guest
        if template.startswith("/api/v1/webhook-endpoints/") and method == "DELETE":
            values["endpoint_id"] = self.fresh_endpoint

        def fill(match: re.Match[str]) -> str:
            assert match.group(1) in values, f"no target for {{{match.group(1)}}}: add one to World.path"
            return str(values[match.group(1)]())

        return re.sub(r"\{(\w+):\w+\}", fill, template)

    def body(self, method: str, template: str) -> dict[str, Any]:
        """The request's content: valid, so that what is tested is who may send it."""
        if template.endswith("/replies"):
            return {"json": {"text": "Danke, bis Freitag!"}}
        if template.endswith("/replies/upload"):
            return {"data": {"text": "Anbei die Skizze."}, "files": [("files", ("skizze.txt", b"~~~", "text/plain"))]}
        if template == "/api/v1/profiles" and method == "POST":
            return {"json": {"email": f"new{next(self.serial)}@example.org", "name": "Neu"}}
        if template.endswith("/deletion/confirm") and method == "POST":
            code = {"code": "ABCD-EFGH-JKLM"}   # well-formed, but no request has it
            return {"json": code} if template.startswith("/api/") else {"data": code}
        if template == "/api/v1/form" and method == "PUT":
            return {"json": {"fields": [{"key": "email", "type": "email", "required": True, "label": "E-Mail"}]}}
        if template == "/api/v1/billing/checkout":
            return {"json": {"plan": "monthly"}}
        if template == "/api/v1/webhook-endpoints" and method == "POST":
            return {"json": WEBHOOK_ENDPOINT}
        if template == "/api/v1/support-grants" and method == "POST":
            return {"json": {"hours": 1}}
        if method == "PATCH":
            return {"json": {}}
        return {}


@contextmanager
def _database(request: pytest.FixtureRequest, directory: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = directory / "gateway.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        dispose_engines()
    else:
        with _throwaway_pg_database(request.getfixturevalue("pg_template")) as url:
            yield url


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp(f"matrix-{request.param}")
    stripe = StripeEmulator()
    with _database(request, directory) as url:
        gw = start_gateway(billing_settings(directory, url, stripe.start(), helpdesk_address="helpdesk@mail.test"))
        try:
            # The disconnected member fails authentication on every route: far more often than
            # the real limiter allows from one address, which is tested in test_api_tokens.
            app = gw.gateway._uvicorn.config.app  # type: ignore[union-attr]
            app.state.auth_limiter = AuthFailureLimiter(max_failures=1_000_000)
            app.state.deletion_code_limiter = AuthFailureLimiter(max_failures=1_000_000)  # wrong codes, likewise
            yield World.build(gw)
        finally:
            gw.stop()
            stripe.stop()


def app_routes(gw: RunningGateway) -> set[tuple[str, str]]:
    app = gw.gateway._uvicorn.config.app  # type: ignore[union-attr]
    return {(method, route.path) for route in app.routes for handler in route.route_handlers
            for method in handler.http_methods
            if method != "OPTIONS" and not route.path.startswith(UNLISTED)}  # OPTIONS: Litestar's own


def test_every_route_of_the_app_is_in_the_matrix(world: World) -> None:
    routes = app_routes(world.gw)
    assert routes - set(MATRIX) == set(), "routes nobody has decided on: add them to MATRIX"
    assert set(MATRIX) - routes == set(), "MATRIX lists routes the app does not have"


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("method, template", list(MATRIX))
def test_each_principal_gets_what_the_matrix_says_and_refusals_carry_no_data(
        world: World, method: str, template: str, principal: str) -> None:
    world.set_grant(active=principal != "support_no_grant")
    path = world.path(method, template)
    if template == "/api/v1/events":  # a stream: its status and its refusal's body, never its end
        with world.clients[principal].stream(method, path) as response:
            if not response.is_success:
                response.read()
    else:
        response = world.clients[principal].request(method, path, **world.body(method, template))
    got = "2xx" if response.is_success else str(response.status_code)
    expected = MATRIX[method, template][PRINCIPALS.index(principal)]
    assert got == expected, f"{method} {path} as {principal}: {response.status_code} {response.text[:300]}"
    if not response.is_success and response.headers["content-type"].startswith("text/html"):
        assert "<form" not in response.text   # the confirmation page's refusal: a message, nothing to act on
    elif not response.is_success:
        # The error model (gateway/api/errors.py): nothing but the refusal, whatever its code.
        assert set(response.json()) == {"status_code", "code", "detail"}

