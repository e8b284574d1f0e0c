"""The API's published contract: one row per operation, and the step that applies it to the
OpenAPI document Litestar generates.

Litestar writes the paths, parameters and bodies from the handlers' signatures; what a client
generator and schemathesis also need is the same for every route and was missing or uneven
(issue 14): short stable operation ids, a tag per resource, the bearer scheme, every status a
route can answer (401 from authentication, 429 from the failed-auth brake, 503 when the
database is away...), one error schema, and links between operations for stateful testing.
Decorating 45 handlers with that would scatter it; the table below says it once, and
`finish()` applies it to the generated document (served by the render plugins in docs.py).
tests/test_openapi_document.py holds the table and the routes to each other.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from zoneinfo import available_timezones

from litestar.handlers import HTTPRouteHandler
from litestar.types import Method

from gateway.access.studios import EMAIL_PATTERN, OPTIONAL_LINE_PATTERN, SINGLE_LINE_PATTERN
from gateway.eventlog import TYPES as EVENT_TYPES
from gateway.outbound.replies import MAX_TEXT, TEXT_PATTERN

SECURITY_SCHEME = "bearer"
ERROR = "Error"
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR}"}

# `{status_code, code, detail, errors?}`, what the API's error handlers answer: one schema for
# every 4xx/5xx, so a generated client has one error type. `errors` only on validation errors.
ERROR_SCHEMAS: dict[str, Any] = {
    ERROR: {
        "type": "object", "required": ["status_code", "code", "detail"],
        "properties": {
            "status_code": {"type": "integer", "description": "The HTTP status, repeated."},
            "code": {"type": "string", "description": "Stable and machine-readable, e.g. `reply_text_empty`."},
            "detail": {"type": "string", "description": "For people: what went wrong."},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ErrorField"},
                       "description": "Validation errors only: one per offending field."},
        },
    },
    "ErrorField": {
        "type": "object", "required": ["field", "message"],
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    },
}

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer", "minimum": 0}}}

# What each status means on this API; the words a client developer reads in the docs.
MEANINGS: dict[int, str] = {
    304: "Not modified: the `If-None-Match` ETag still matches.",
    400: "Malformed request: a parameter, id or body that does not validate.",
    401: "Missing, unknown or revoked bearer token.",
    402: "A paid feature on the free plan.",
    403: "Not allowed for this caller: the owner's alone, or a support token outside its grant.",
    404: "No such object in the caller's studio (another studio's ids are not found either).",
    409: "Conflicts with the current state, or the same `Idempotency-Key` is still being processed.",
    410: "Gone: too late for this (expired).",
    413: "Request body too large.",
    415: "Unsupported content type for the body.",
    422: "The `Idempotency-Key` was used before with another body; or a value the route cannot take "
         "(`errors` names the field: an invalid form definition, a webhook URL on a private address).",
    429: "Too many requests (failed authentications from this client, or a route's own brake).",
    502: "The payment provider refused the request.",
    503: "Temporarily unavailable (database failing over, or a provider down): retry after `Retry-After`.",
}

IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Makes a retry safe: the first answer is stored for 24 hours per studio and key and "
                   "returned again; the same key with another body is 422, while the first still runs 409.",
    "schema": {"type": "string"},
}
SUPPORT_HEADERS: list[dict[str, Any]] = [
    {"name": "X-Support-Studio", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Support tokens (`gws_`) only: the slug of the studio read under its owner's grant."},
    {"name": "X-Support-Reason", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Support tokens only: why, written to the studio's audit log."},
]
IF_NONE_MATCH: dict[str, Any] = {
    "name": "If-None-Match", "in": "header", "required": False,
    "description": "The `ETag` of an earlier answer: 304 while nothing changed.",
    "schema": {"type": "string"},
}


@dataclass(frozen=True)
class Op:
    """One operation of the client API. `extra` lists the statuses special to this route."""

    operation_id: str
    tag: str
    secured: bool = True        # a bearer token: 401, 403 (roles, support) and 429 (the brake)
    body: bool = False          # a request body: 400 and 415
    optional_body: bool = False  # the body may be left out (Litestar marks every body required)
    creates: bool = False       # a creating POST: Idempotency-Key, 409 and 422
    cached: bool = False        # ETag / If-None-Match: 304
    database: bool = True       # 503 with Retry-After when the database is away
    support: bool = False       # open to support tokens (gateway/api/auth.py support_read): its two headers
    extra: tuple[int, ...] = ()
    links: dict[str, dict[str, Any]] = field(default_factory=dict)   # by status: OpenAPI links


def documented_time_zones() -> list[str]:
    """The zones a client is offered: Area/Location names and UTC. The server takes every name
    zoneinfo knows, but the legacy aliases ("GMT0", "GMT-0", "Etc/GMT+1") make enum members
    that generated clients cannot tell apart (openapi-python-client refuses the document)."""
    return sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))) + ["UTC"]


# What the bodies' structs cannot say in their generated schemas, though the server checks it
# (gateway/access/studios.py, outbound/replies.py, access/support.py, outbound/dates.py): a
# client that sends what the schema allows is then never refused with 400. Merged into the
# named component schema, per property or (under "") for the object.
BODY_RULES: dict[str, dict[str, dict[str, Any]]] = {
    "ProfileIn": {"email": {"pattern": EMAIL_PATTERN}, "name": {"pattern": SINGLE_LINE_PATTERN}},
    "GrantIn": {"note": {"pattern": OPTIONAL_LINE_PATTERN},
                # hours or days, not both (grant_duration); unknown fields are refused (forbid_unknown_fields)
                "": {"additionalProperties": False, "not": {"required": ["hours", "days"], "properties": {
                    "hours": {"type": "integer"}, "days": {"type": "integer"}}}}},
    "ReplyUpload": {"text": {"minLength": 1, "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN}},
    # The types must be known (an unknown one is 422 naming it); the URL must be https on a public
    # address, which only resolving it can tell (gateway/outbound/webhook_address.py).
    "EndpointIn": {"event_types": {"items": {"type": "string", "enum": list(EVENT_TYPES)}, "uniqueItems": True},
                   "url": {"pattern": "^https://"}, "": {"additionalProperties": False}},
    "StudioPatch": {"time_zone": {"oneOf": [{"type": "string", "enum": documented_time_zones()}, {"type": "null"}]}},
}


# Operations whose success is not JSON: the media type and a binary body.
DOWNLOADS: dict[str, str] = {"downloadAttachment": "application/octet-stream", "exportStudio": "application/zip"}


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}


_FIRST_CONVERSATION = "$response.body#/items/0/id"
_SAME_CONVERSATION = "$request.path.conversation_id"


def _conversation_links(source: str) -> dict[str, Any]:
    """From an answer naming a conversation to what can be done with it."""
    return {name: _link(name, conversation_id=source) for name in (
        "getConversation", "markConversationRead", "createReply", "closeConversation", "reopenConversation")}


CONVERSATIONS, CONVERSATION = "/api/v1/conversations", "/api/v1/conversations/{conversation_id}"

# (method, path as in the document) -> the operation. Routes left out of the client spec
# (webhooks, the Stripe webhook, the account-deletion confirmation page) are not here:
# they are include_in_schema=False and described in docs/api.md.
OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/healthz"): Op("getHealth", "health", secured=False, database=False),
    ("GET", "/readyz"): Op("getReadiness", "health", secured=False),
    ("GET", CONVERSATIONS): Op("listConversations", "conversations", support=True, cached=True,
                   links={"200": {**_conversation_links(_FIRST_CONVERSATION),
                                  "deleteConversation": _link("deleteConversation", conversation_id=_FIRST_CONVERSATION)}}),
    ("GET", CONVERSATION): Op("getConversation", "conversations", support=True, cached=True, extra=(404,),
                     links={"200": {"deleteMessage": _link("deleteMessage", message_id="$response.body#/messages/0/id"),
                                    "getGuest": _link("getGuest", guest_id="$response.body#/guest/id")}}),
    ("GET", f"{CONVERSATION}/messages"): Op("listConversationMessages", "messages", support=True, extra=(404,)),
    ("DELETE", CONVERSATION): Op("deleteConversation", "conversations", extra=(404,),
                        links={"200": {"restoreConversation": _link("restoreConversation", conversation_id="$response.body#/id")}}),
    ("POST", f"{CONVERSATION}/read"): Op("markConversationRead", "conversations", extra=(404,)),
    ("POST", f"{CONVERSATION}/close"): Op("closeConversation", "conversations", extra=(404,),
                                 links={"200": {"reopenConversation": _link("reopenConversation", conversation_id="$response.body#/id")}}),
    ("POST", f"{CONVERSATION}/reopen"): Op("reopenConversation", "conversations", extra=(404,)),
    ("POST", f"{CONVERSATION}/replies"): Op("createReply", "messages", body=True, creates=True, extra=(404, 413, 429),
                                   links={"202": {"getConversation": _link("getConversation", conversation_id=_SAME_CONVERSATION),
                                                  "getMessage": _link("getMessage", message_id="$response.body#/id"),
                                                  "deleteMessage": _link("deleteMessage", message_id="$response.body#/id")}}),
    ("POST", f"{CONVERSATION}/replies/upload"): Op("createReplyWithAttachments", "messages", body=True, creates=True,
                                          extra=(404, 413, 429)),
    ("POST", f"{CONVERSATION}/restore"): Op("restoreConversation", "trash", extra=(402, 404, 409, 410)),
    ("GET", "/api/v1/messages/{message_id}"): Op("getMessage", "messages", support=True, extra=(404,)),
    ("DELETE", "/api/v1/messages/{message_id}"): Op(
        "deleteMessage", "messages", extra=(404,),
        links={"200": {"restoreMessage": _link("restoreMessage", message_id="$response.body#/id")}}),
    ("POST", "/api/v1/messages/{message_id}/restore"): Op("restoreMessage", "trash", extra=(402, 404, 409, 410)),
    ("GET", "/api/v1/attachments/{attachment_id}"): Op("downloadAttachment", "attachments", support=True, extra=(404,)),
    ("GET", "/api/v1/held"): Op("listHeldMessages", "held", support=True, links={"200": {
        "acceptHeldMessage": _link("acceptHeldMessage", message_id="$response.body#/items/0/id"),
        "rejectHeldMessage": _link("rejectHeldMessage", message_id="$response.body#/items/0/id")}}),
    ("POST", "/api/v1/held/{message_id}/accept"): Op("acceptHeldMessage", "held", extra=(404, 409)),
    ("POST", "/api/v1/held/{message_id}/reject"): Op("rejectHeldMessage", "held", extra=(404, 409)),
    ("GET", "/api/v1/trash"): Op("getTrash", "trash"),
    ("GET", "/api/v1/trash/conversations"): Op("listDeletedConversations", "trash"),
    ("GET", "/api/v1/trash/messages"): Op("listDeletedMessages", "trash"),
    ("GET", "/api/v1/automatic"): Op("listAutomaticMail", "automatic", support=True),
    ("GET", "/api/v1/studio"): Op("getStudio", "studio", extra=(404,)),
    ("PATCH", "/api/v1/studio"): Op("updateStudio", "studio", body=True, extra=(404,)),
    ("GET", "/api/v1/form"): Op("getForm", "form"),
    ("PUT", "/api/v1/form"): Op("updateForm", "form", body=True, extra=(422,)),
    ("GET", "/api/v1/form/versions"): Op("listFormVersions", "form"),
    ("GET", "/api/v1/tokens"): Op("listTokens", "tokens"),
    ("POST", "/api/v1/tokens"): Op("createToken", "tokens", creates=True),
    ("DELETE", "/api/v1/tokens/{token_id}"): Op("revokeToken", "tokens", extra=(404,)),
    ("GET", "/api/v1/webhook-endpoints"): Op("listWebhookEndpoints", "webhooks"),
    ("POST", "/api/v1/webhook-endpoints"): Op("createWebhookEndpoint", "webhooks", body=True, creates=True, extra=(422,), links={"201": {
        "listWebhookDeliveries": _link("listWebhookDeliveries", endpoint_id="$response.body#/endpoint/id"),
        "rotateWebhookSecret": _link("rotateWebhookSecret", endpoint_id="$response.body#/endpoint/id"),
        "deleteWebhookEndpoint": _link("deleteWebhookEndpoint", endpoint_id="$response.body#/endpoint/id")}}),
    ("POST", "/api/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): Op("rotateWebhookSecret", "webhooks", extra=(404,)),
    ("DELETE", "/api/v1/webhook-endpoints/{endpoint_id}"): Op("deleteWebhookEndpoint", "webhooks", extra=(404,)),
    ("GET", "/api/v1/webhook-endpoints/{endpoint_id}/deliveries"): Op("listWebhookDeliveries", "webhooks", extra=(404,)),
    ("GET", "/api/v1/profiles"): Op("listProfiles", "profiles"),
    ("POST", "/api/v1/profiles"): Op("connectProfile", "profiles", body=True, creates=True, links={"201": {
        "disconnectProfile": _link("disconnectProfile", profile_id="$response.body#/profile/id")}}),
    ("DELETE", "/api/v1/profiles/{profile_id}"): Op("disconnectProfile", "profiles", extra=(404, 409)),
    ("GET", "/api/v1/profiles/me/notifications"): Op("getMyNotifications", "profiles", extra=(404,)),
    ("PATCH", "/api/v1/profiles/me/notifications"): Op("updateMyNotifications", "profiles", body=True,
                                                      extra=(404, 422)),
    ("GET", "/api/v1/support-grants"): Op("listSupportGrants", "support-grants"),
    ("POST", "/api/v1/support-grants"): Op("createSupportGrant", "support-grants", body=True, optional_body=True, creates=True, links={"201": {
        "revokeSupportGrant": _link("revokeSupportGrant", grant_id="$response.body#/id")}}),
    ("DELETE", "/api/v1/support-grants/{grant_id}"): Op("revokeSupportGrant", "support-grants", extra=(404,)),
    ("GET", "/api/v1/audit"): Op("listAuditEntries", "audit"),
    ("GET", "/api/v1/guests/{guest_id}"): Op("getGuest", "guests", extra=(404,)),
    ("POST", "/api/v1/guests/{guest_id}/erase"): Op("eraseGuest", "guests", extra=(404,)),
    ("GET", "/api/v1/export"): Op("exportStudio", "export", extra=(404,)),
    ("GET", "/api/v1/billing"): Op("getBilling", "billing"),
    ("POST", "/api/v1/billing/checkout"): Op("createCheckout", "billing", body=True, creates=True, extra=(502,)),
    ("POST", "/api/v1/billing/cancel"): Op("cancelSubscription", "billing", extra=(409, 502)),
    ("POST", "/api/v1/account/deletion"): Op("requestAccountDeletion", "account", body=True, optional_body=True, extra=(409, 429)),
    ("POST", "/api/v1/account/deletion/confirm"): Op("confirmAccountDeletion", "account", secured=False, body=True,
                                                     extra=(404, 409, 410, 429)),
}

TAGS: dict[str, str] = {
    "conversations": "A studio's conversations with its guests.",
    "messages": "Replies to guests, and single messages.",
    "attachments": "Files of messages, as downloads.",
    "held": "Mail from someone not (yet) part of the conversation it answers.",
    "trash": "Deleted conversations and messages, restorable for 30 days on a paid plan.",
    "automatic": "Bounces, auto-replies and bulk mail that opened no conversation.",
    "studio": "The caller's studio and its settings.",
    "form": "The studio's inquiry form: its definition and versions (the public page is /f/{slug}).",
    "tokens": "API tokens.",
    "webhooks": "The studio's webhook endpoints: its own systems posted the events, signed.",
    "profiles": "The owner and the members who answer for the studio.",
    "support-grants": "Read-only access the owner grants to support.",
    "audit": "Who read or changed access.",
    "guests": "A studio's guests; erasing one's data.",
    "export": "All of the studio's data as a zip.",
    "billing": "The studio's plan.",
    "account": "Deleting the studio's account.",
    "health": "Probes for process managers and load balancers.",
}


def _document_path(path_components: list[Any]) -> str:
    parts = [c if isinstance(c, str) else "{" + c.name + "}" for c in path_components]
    return "/" + "/".join(p for p in parts if p)


def operation_id(route_handler: HTTPRouteHandler, http_method: Method, path_components: list[Any]) -> str:
    """OpenAPIConfig's operation_id_creator: the table's id. A route missing from the table
    keeps a generated id, which tests/test_openapi_document.py refuses (not the server)."""
    method, path = str(getattr(http_method, "value", http_method)).upper(), _document_path(path_components)
    op = OPERATIONS.get((method, path))
    return op.operation_id if op is not None else f"UNLISTED {method} {path}"


def statuses(op: Op, parameters: bool) -> set[int]:
    """Every status the operation can answer besides its success."""
    codes = set(op.extra)
    if op.secured:
        codes |= {401, 403, 429}
    if op.body or parameters:
        codes.add(400)
    if op.body:
        codes.add(415)
    if op.creates:
        codes |= {409, 422}
    if op.cached:
        codes.add(304)
    if op.database:
        codes.add(503)
    return codes


def finish(generated: dict[str, Any]) -> dict[str, Any]:
    """The served document: Litestar's, with the table applied (a copy; the input is kept)."""
    doc = copy.deepcopy(generated)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(copy.deepcopy(ERROR_SCHEMAS))
    for name, rules in BODY_RULES.items():
        if name in schemas:
            for prop, keywords in rules.items():
                target = schemas[name] if prop == "" else schemas[name].setdefault("properties", {}).setdefault(prop, {})
                target.update(copy.deepcopy(keywords))
    components["securitySchemes"] = {SECURITY_SCHEME: {
        "type": "http", "scheme": "bearer", "description": "An API token: `Authorization: Bearer gw_...`."}}
    used_tags: set[str] = set()
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            op = OPERATIONS.get((method.upper(), path))
            if op is None or not isinstance(operation, dict):
                continue
            used_tags.add(op.tag)
            _apply(op, operation, path)
    doc["tags"] = [{"name": name, "description": text} for name, text in TAGS.items() if name in used_tags]
    return doc


def _apply(op: Op, operation: dict[str, Any], path: str) -> None:
    operation["operationId"] = op.operation_id
    operation["tags"] = [op.tag]
    if op.optional_body and "requestBody" in operation:
        operation["requestBody"]["required"] = False
    if op.secured:
        operation["security"] = [{SECURITY_SCHEME: []}]
    parameters: list[dict[str, Any]] = operation.setdefault("parameters", [])
    names = {str(p.get("name", "")).lower() for p in parameters}
    if op.creates and "idempotency-key" not in names:
        parameters.append(dict(IDEMPOTENCY_KEY))
    if op.cached and "if-none-match" not in names:
        parameters.append(dict(IF_NONE_MATCH))
    if op.support:
        parameters.extend(copy.deepcopy(h) for h in SUPPORT_HEADERS if h["name"].lower() not in names)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for code in statuses(op, bool(parameters)):
        responses.setdefault(str(code), {"description": MEANINGS.get(code, "")})
    for code, response in responses.items():
        status = int(code)
        if 200 <= status < 300 and op.operation_id in DOWNLOADS:
            response["content"] = {DOWNLOADS[op.operation_id]: {"schema": {"type": "string", "format": "binary"}}}
        elif status == 304:
            response.pop("content", None)
            response["description"] = MEANINGS[304]
        elif status >= 400 and not (path == "/readyz" and status == 503):
            # Litestar's own error schemas (a oneOf of copies, `extra` as a union) give way to one.
            response["content"] = {"application/json": {"schema": dict(ERROR_REF)}}
            response["description"] = MEANINGS.get(status, response.get("description", ""))
        if status in (429, 503) and path != "/readyz":
            response.setdefault("headers", {}).update(copy.deepcopy(RETRY_AFTER))
    if "503" in responses and path == "/readyz":
        responses["503"]["description"] = "Not ready: the database does not answer or cannot take writes."
    for code, links in op.links.items():
        if code in responses:
            responses[code]["links"] = copy.deepcopy(links)
