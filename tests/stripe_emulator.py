"""A local HTTP emulator of the few Stripe endpoints the gateway calls, and Stripe's webhook
signature scheme, so billing tests run the official `stripe` library end to end.

It speaks Stripe's wire format: form-encoded nested parameters (`pause_collection[behavior]`),
JSON objects shaped like API version 2025-03-31 and later (the period on the subscription
items), Stripe's error envelope, and idempotency keys (a repeated key replays the first
answer; the same key with other parameters is refused). Every request is recorded so tests
assert exactly what was asked of Stripe. Faults can be injected per path, also *after* the
change was applied, which is how a crash between Stripe's answer and our commit looks.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MONTHLY_PRICE = "price_monthly_test"
YEARLY_PRICE = "price_yearly_test"
MONTH, YEAR = 30 * 86400, 365 * 86400


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None


@dataclass
class Fault:
    path_pattern: str
    times: int
    status: int = 500
    after_apply: bool = False   # apply the change, then fail: "Stripe did it, we never heard"


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's nested form keys (`a[b][0][c]=v`) into dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


@dataclass
class StripeEmulator:
    requests: list[Recorded] = field(default_factory=list)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    _idempotent: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> str:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                emulator._serve(self, "GET")

            def do_POST(self) -> None:
                emulator._serve(self, "POST")

            def do_DELETE(self) -> None:
                emulator._serve(self, "DELETE")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="stripe-emulator", daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # --- state the tests set up ----------------------------------------------------------------

    def add_subscription(self, *, studio_id: int, plan: str = "monthly", status: str = "active",
                         customer: str | None = None, period_end: int | None = None) -> dict[str, Any]:
        now = int(time.time())
        price = MONTHLY_PRICE if plan == "monthly" else YEARLY_PRICE
        interval = "month" if plan == "monthly" else "year"
        sub_id = f"sub_{uuid.uuid4().hex[:14]}"
        sub = {
            "id": sub_id, "object": "subscription", "customer": customer or f"cus_{uuid.uuid4().hex[:14]}",
            "status": status, "cancel_at_period_end": False, "cancel_at": None, "canceled_at": None,
            "ended_at": None, "pause_collection": None, "created": now, "start_date": now,
            "metadata": {"studio_id": str(studio_id), "plan": plan}, "livemode": False,
            "items": {"object": "list", "data": [{
                "id": f"si_{uuid.uuid4().hex[:14]}", "object": "subscription_item", "quantity": 1,
                "price": {"id": price, "object": "price", "recurring": {"interval": interval}},
                "current_period_start": now,
                "current_period_end": period_end or now + (MONTH if plan == "monthly" else YEAR)}]},
        }
        with self._lock:
            self.subscriptions[sub_id] = sub
        return json.loads(json.dumps(sub))

    def fail(self, path_pattern: str, times: int = 1, status: int = 500, after_apply: bool = False) -> None:
        self.faults.append(Fault(path_pattern, times, status, after_apply))

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[Recorded]:
        return [r for r in self.requests if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    def bill(self, sub_id: str) -> dict[str, Any] | None:
        """The next billing cycle as Stripe would run it: an invoice paid, voided while
        collection is paused with `void`, none at all for an ended subscription."""
        with self._lock:
            sub = self.subscriptions[sub_id]
            if sub["status"] == "canceled" or (sub["cancel_at_period_end"]):
                return None
            paused = (sub.get("pause_collection") or {}).get("behavior") == "void"
            invoice = {"id": f"in_{uuid.uuid4().hex[:14]}", "object": "invoice", "status": "void" if paused else "paid",
                       "amount_paid": 0 if paused else 1900, "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": sub_id}}}
            self.invoices.append(invoice)
            return invoice

    # --- the wire ------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        pairs = parse_qsl(url.query, keep_blank_values=True) + parse_qsl(body, keep_blank_values=True)
        params = parse_form(pairs)
        key = handler.headers.get("Idempotency-Key")
        with self._lock:
            self.requests.append(Recorded(method, url.path, params, key))
            fault = next((f for f in self.faults if f.times > 0 and re.search(f.path_pattern, url.path)), None)
            if fault is not None:
                fault.times -= 1
            fingerprint = json.dumps([method, url.path, params], sort_keys=True)
            if key and key in self._idempotent:
                first, status, payload = self._idempotent[key]
                if first != fingerprint:
                    return self._send(handler, 400, _error("idempotency_error",
                                      "Keys for idempotent requests can only be used with the same parameters"))
                return self._send(handler, status, payload, replayed=True)
        if fault is not None and not fault.after_apply:
            return self._send(handler, fault.status, _error("api_error", "injected fault"))
        status, payload = self._route(method, url.path, params)
        if key and method in ("POST", "DELETE"):
            with self._lock:
                self._idempotent[key] = (fingerprint, status, payload)
        if fault is not None:  # applied, but the answer is lost
            return self._send(handler, fault.status, _error("api_error", "injected fault after apply"))
        self._send(handler, status, payload)

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, bytes]:
        with self._lock:
            if method == "POST" and path == "/v1/checkout/sessions":
                session_id = f"cs_test_{uuid.uuid4().hex[:20]}"
                session = {"id": session_id, "object": "checkout.session", "mode": params.get("mode"),
                           "url": f"https://checkout.stripe.test/c/pay/{session_id}",
                           "client_reference_id": params.get("client_reference_id"),
                           "customer": params.get("customer"), "customer_email": params.get("customer_email"),
                           "metadata": params.get("metadata", {}), "status": "open"}
                self.sessions[session_id] = session
                return 200, json.dumps(session).encode()
            match = re.fullmatch(r"/v1/subscriptions/([A-Za-z0-9_]+)", path)
            if match is None:
                return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path})")
            sub = self.subscriptions.get(match.group(1))
            if sub is None:
                return 404, _error("invalid_request_error", f"No such subscription: '{match.group(1)}'",
                                   code="resource_missing")
            if method == "GET":
                return 200, json.dumps(sub).encode()
            if sub["status"] == "canceled":
                return 400, _error("invalid_request_error",
                                   "A canceled subscription can only update its cancellation_details and metadata.")
            if method == "DELETE":
                now = int(time.time())
                sub.update(status="canceled", canceled_at=now, ended_at=now)
                return 200, json.dumps(sub).encode()
            if "cancel_at_period_end" in params:
                sub["cancel_at_period_end"] = params["cancel_at_period_end"] == "true"
                sub["cancel_at"] = sub["items"]["data"][0]["current_period_end"] if sub["cancel_at_period_end"] else None
            if "pause_collection" in params:
                value = params["pause_collection"]
                sub["pause_collection"] = None if value == "" else {"behavior": value["behavior"], "resumes_at": None}
            return 200, json.dumps(sub).encode()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: bytes, replayed: bool = False) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("Request-Id", f"req_{uuid.uuid4().hex[:14]}")
        if replayed:
            handler.send_header("Idempotent-Replayed", "true")
        handler.end_headers()
        handler.wfile.write(payload)


def _error(kind: str, message: str, code: str | None = None) -> bytes:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code:
        error["code"] = code
    return json.dumps({"error": error}).encode()


# --- webhooks -----------------------------------------------------------------------------------

def event(kind: str, obj: dict[str, Any], created: int | None = None, event_id: str | None = None) -> dict[str, Any]:
    return {"id": event_id or f"evt_{uuid.uuid4().hex[:20]}", "object": "event", "type": kind,
            "created": created if created is not None else int(time.time()), "livemode": False,
            "api_version": "2026-10-28.endive", "pending_webhooks": 1,
            "data": {"object": obj}}


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header: t=<unix time>,v1=<HMAC-SHA256 of "t.payload">."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"
