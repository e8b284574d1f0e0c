"""The OpenAPI document at /schema/openapi.json is a contract a client can be generated from
(issue 14 "The document"): short stable operation ids from one table, a tag per resource, the
bearer scheme on every secured operation, every status each route can answer with one Error
schema, and links for stateful testing. Webhook and page routes stay out of it.

Served by a real gateway on each back end (the document is built from the routes, not the
database, but it is served next to it)."""
from __future__ import annotations

import re
from typing import Any

from gateway.api.contract import ERROR, OPERATIONS, SECURITY_SCHEME, TAGS
from tests.conftest import RunningGateway

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
PUBLIC = {"getHealth", "getReadiness", "confirmAccountDeletion"}
CREATING = {"createReply", "createReplyWithAttachments", "connectProfile", "createSupportGrant", "createToken",
            "createCheckout"}
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR}"}


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()
            if method in METHODS]


def _document(gw: RunningGateway) -> dict[str, Any]:
    answer = gw.api(None).get("/schema/openapi.json")
    assert answer.status_code == 200
    return answer.json()


def test_operation_ids_are_short_unique_camel_case_and_all_from_the_table(gw: RunningGateway) -> None:
    doc = _document(gw)
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids)), "operation ids repeat"
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]{2,40}", i) for i in ids), [i for i in ids if not i.isalnum()]
    table = {op.operation_id for op in OPERATIONS.values()}
    assert len(table) == len(OPERATIONS), "the table gives one id twice"
    assert set(ids) - table == set(), "operations with a generated id: add them to gateway/api/contract.py"
    documented = {(method.upper(), path) for method, path, _ in _operations(doc)}
    assert set(OPERATIONS) - documented == set(), "table rows without a route"
    by_route = {(method.upper(), path): op["operationId"] for method, path, op in _operations(doc)}
    assert by_route[("GET", "/api/v1/conversations")] == "listConversations"
    assert by_route[("GET", "/api/v1/conversations/{conversation_id}")] == "getConversation"
    assert by_route[("POST", "/api/v1/conversations/{conversation_id}/replies")] == "createReply"
    assert by_route[("POST", "/api/v1/conversations/{conversation_id}/read")] == "markConversationRead"


def test_webhooks_pages_and_the_event_stream_are_not_in_the_client_spec(gw: RunningGateway) -> None:
    paths = set(_document(gw)["paths"])
    assert not [p for p in paths if p.startswith("/webhooks")]
    assert "/account/deletion/confirm" not in paths and "/api/v1/events" not in paths
    assert not [p for p in paths if p.startswith("/schema")]
    # ... while they are still served.
    assert gw.api(None).get("/account/deletion/confirm", params={"code": "x"}).status_code == 200
    assert gw.gateway.app is not None
    served = {route.path for route in gw.gateway.app.routes}
    assert {"/webhooks/stripe", "/webhooks/mailgun", "/webhooks/ses", "/account/deletion/confirm"} <= served


def test_every_secured_operation_has_the_bearer_scheme_and_its_refusals(gw: RunningGateway) -> None:
    doc = _document(gw)
    assert doc["components"]["securitySchemes"][SECURITY_SCHEME] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"]}
    for method, path, op in _operations(doc):
        name, codes = op["operationId"], set(op["responses"])
        if name in PUBLIC:
            assert "security" not in op and "401" not in codes, name
            continue
        assert op["security"] == [{SECURITY_SCHEME: []}], name
        assert {"401", "403", "429", "503"} <= codes, (name, codes)
        for code in ("429", "503"):
            assert "Retry-After" in op["responses"][code]["headers"], (name, code)


def test_every_status_each_route_can_answer_is_documented(gw: RunningGateway) -> None:
    doc = _document(gw)
    for method, path, op in _operations(doc):
        name, codes = op["operationId"], set(op["responses"])
        assert len([c for c in codes if c.startswith("2")]) == 1, name
        if "{" in path:
            assert {"400", "404"} <= codes, name
        if "requestBody" in op:
            assert {"400", "415"} <= codes, name
        if name in CREATING:
            assert {"409", "422"} <= codes, name
            assert [p for p in op["parameters"] if p["name"] == "Idempotency-Key" and p["in"] == "header"], name
        if name != "getHealth":
            assert "503" in codes, name
    ops = {op["operationId"]: op for _, _, op in _operations(doc)}
    for name in ("listConversations", "getConversation"):
        assert "304" in ops[name]["responses"] and "content" not in ops[name]["responses"]["304"]
    assert "429" in ops["createReply"]["responses"] and "413" in ops["createReply"]["responses"]
    assert {"402", "409", "410"} <= set(ops["restoreConversation"]["responses"])
    assert set(ops["downloadAttachment"]["responses"]["200"]["content"]) == {"application/octet-stream"}
    assert set(ops["exportStudio"]["responses"]["200"]["content"]) == {"application/zip"}


def test_every_error_response_is_the_one_error_schema(gw: RunningGateway) -> None:
    doc = _document(gw)
    error = doc["components"]["schemas"][ERROR]
    assert set(error["properties"]) == {"status_code", "code", "detail", "errors"}
    assert set(error["required"]) == {"status_code", "code", "detail"}
    assert error["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/ErrorField"}
    assert set(doc["components"]["schemas"]["ErrorField"]["required"]) == {"field", "message"}
    for method, path, op in _operations(doc):
        for code, response in op["responses"].items():
            if int(code) < 400 or (path == "/readyz" and code == "503"):
                continue
            assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (op["operationId"], code)
            assert response["description"], (op["operationId"], code)
    assert "oneOf" not in str([r for *_, op in _operations(doc) for c, r in op["responses"].items() if c >= "400"])


def test_every_operation_has_one_resource_tag(gw: RunningGateway) -> None:
    doc = _document(gw)
    used = {op["tags"][0] for _, _, op in _operations(doc)}
    assert all(len(op["tags"]) == 1 for _, _, op in _operations(doc))
    assert used <= set(TAGS) and {t["name"] for t in doc["tags"]} == used
    assert {"conversations", "messages", "held", "trash", "studio", "tokens", "profiles", "support-grants", "audit",
            "billing", "export", "account", "guests", "automatic", "health"} <= used


def test_links_name_real_operations_and_their_parameters(gw: RunningGateway) -> None:
    doc = _document(gw)
    ops = {op["operationId"]: (path, op) for _, path, op in _operations(doc)}
    links = [(op["operationId"], name, link) for _, _, op in _operations(doc)
             for response in op["responses"].values() for name, link in response.get("links", {}).items()]
    assert len(links) >= 10
    for source, name, link in links:
        assert link["operationId"] in ops, (source, name)
        path, target = ops[link["operationId"]]
        names = {p["name"] for p in target.get("parameters", [])}
        for parameter, expression in link["parameters"].items():
            assert parameter in names and "{" + parameter + "}" in path, (source, name, parameter)
            assert re.fullmatch(r"\$(response\.body#/[\w/]+|request\.path\.\w+)", expression), expression
    listed = {name for source, name, _ in links if source == "listConversations"}
    assert {"getConversation", "createReply", "markConversationRead"} <= listed


def test_request_bodies_say_what_the_server_checks(gw: RunningGateway) -> None:
    """A body the schema allows is not refused for its shape: the server's own rules (plain
    addresses, single lines, a reply that is not blank, a known time zone) are in the schema."""
    doc = _document(gw)
    schemas = doc["components"]["schemas"]
    email = re.compile(schemas["ProfileIn"]["properties"]["email"]["pattern"])
    assert email.search("nora@inkwell.example") and not email.search("Nora <nora@inkwell.example>")
    name = re.compile(schemas["ProfileIn"]["properties"]["name"]["pattern"])
    assert name.search("Nora") and not name.search("   ") and not name.search("No\nra")
    assert schemas["GrantIn"]["additionalProperties"] is False
    zones = schemas["StudioPatch"]["properties"]["time_zone"]["oneOf"][0]["enum"]
    assert "Europe/Vienna" in zones and "Mars/Olympus" not in zones
    reply = doc["paths"]["/api/v1/conversations/{conversation_id}/replies"]["post"]
    text = re.compile(reply["requestBody"]["content"]["application/json"]["schema"]["properties"]["text"]["pattern"])
    assert text.search("Hallo") and not text.search(" \n\t")
    assert doc["paths"]["/api/v1/support-grants"]["post"]["requestBody"]["required"] is False


def test_a_reply_files_part_that_is_not_a_file_is_refused_not_dropped(gw: RunningGateway) -> None:
    """The document says `files` parts are binary: a plain text part named `files` was silently
    dropped and the reply sent without the attachment the client meant (found by schemathesis)."""
    from tests.mail import make_mail

    studio = gw.add_studio("inkwell")
    gw.send(make_mail(), studio.address)
    gw.process()
    api = gw.api(studio.token)
    [conversation] = api.get("/api/v1/conversations").json()["items"]
    path = f"/api/v1/conversations/{conversation['id']}/replies"
    refused = api.post(path, files=[("text", (None, "Anbei die Skizze.")), ("files", (None, "skizze.png"))])
    assert refused.status_code == 400 and "must be files" in refused.json()["detail"]
    assert api.get(f"/api/v1/conversations/{conversation['id']}").json()["message_count"] == 1
    sent = api.post(path, files=[("text", (None, "Anbei die Skizze.")), ("files", ("skizze.png", b"\x89PNG", "image/png"))])
    assert sent.status_code == 202 and [a["filename"] for a in sent.json()["attachments"]] == ["skizze.png"]


def test_the_support_headers_are_on_exactly_the_routes_open_to_support(gw: RunningGateway) -> None:
    assert gw.gateway.app is not None
    opened = {(method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path))
              for route in gw.gateway.app.routes for handler in getattr(route, "route_handlers", [])
              if "support_read" in handler.opt for method in handler.http_methods}
    assert opened and opened == {key for key, op in OPERATIONS.items() if op.support}
    for method, path, op in _operations(_document(gw)):
        headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
        assert ({"X-Support-Studio", "X-Support-Reason"} <= headers) == ((method.upper(), path) in opened), path


def test_the_yaml_document_and_the_docs_page_are_the_finished_document(gw: RunningGateway) -> None:
    client = gw.api(None)
    assert "operationId: listConversations" in client.get("/schema/openapi.yaml").text
    assert "listConversations" in client.get("/schema").text
