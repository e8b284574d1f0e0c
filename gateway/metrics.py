"""The gateway's Prometheus counters, incremented where mail and jobs change state.

A small neutral module under the domain packages: the SMTP edge, the webhooks, the processor
and the outbox count here without importing each other or an edge. It holds no state of its
own and knows nothing of HTTP: `gateway/api/metrics.py` exposes what the process's default
registry holds, adds the queue gauges it reads from the database at scrape time, and merges
in what `gateway serve`'s worker children counted (prometheus-client's multiprocess mode; the
children find their directory in PROMETHEUS_MULTIPROC_DIR, see docs/operations.md).

Every counter here has labels and none is bound at import: in multiprocess mode a series
becomes a memory-mapped file on its first `.labels()`, so a process that counts nothing (the
parser child) writes no files.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge

# Mail offered to us and our answer to it: the SMTP reply code to DATA (or the one aiosmtpd
# gave by itself, 552 for an oversized message), or a provider webhook's HTTP status.
# source: "smtp" or the provider (mailgun, sendgrid, postmark, ses).
MAIL = Counter("gateway_mail", "Mail offered and our answer to it, by source and reply code",
               ["source", "code"])

# RCPT TO refused, by reply code: unknown studios (550 5.1.1), too many recipients (452),
# lookup trouble (451), a dictionary attack's end (421). Mail refused before DATA shows here.
RCPT_REFUSED = Counter("gateway_smtp_recipients_refused", "RCPT TO commands refused, by reply code", ["code"])

# Every post to a provider webhook, by the HTTP status we answered (a bad signature is 401/403,
# trouble on our side 503, stored mail 200).
WEBHOOKS = Counter("gateway_webhook_posts", "Posts to the inbound mail webhooks, by provider and HTTP status",
                   ["provider", "code"])

# What the processor did with each stored message it claimed (gateway/inbound/processor.py):
# done, quarantined, pending (failed this time, tried again) or discarded (its studios are gone).
PROCESSED = Counter("gateway_inbound_processed", "Stored messages the processor finished, by result",
                    ["result"])
# Messages filed but held for the studio to accept (a stranger, or DMARC failing on a reply).
HELD = Counter("gateway_inbound_held", "Messages filed into a conversation but held for the studio",
               ["kind"])

# Delivery attempts of the outbox (gateway/outbound/outbox.py), by what the relay's answer
# made of the job: sent, retried (temporary, queued again) or failed (permanent, or out of time).
OUTBOX = Counter("gateway_outbox_attempts", "Outbound delivery attempts, by their outcome", ["kind"])

# Open event streams (GET /api/v1/events) of this web process; "livesum" adds the live
# processes' values in multiprocess mode. The label keeps it unbound at import (see above).
SSE_CONNECTIONS = Gauge("gateway_sse_connections", "Open Server-Sent Events streams, by stream",
                        ["stream"], multiprocess_mode="livesum")


def mail_answered(source: str, reply: str | bytes | int) -> None:
    """Count one offered mail's answer; `reply` is the full reply line or just its code."""
    code = reply[:3] if isinstance(reply, (str, bytes)) else str(reply)
    MAIL.labels(source, code.decode("ascii", "replace") if isinstance(code, bytes) else code).inc()


def recipient_refused(reply: str | bytes) -> None:
    code = reply[:3]
    RCPT_REFUSED.labels(code.decode("ascii", "replace") if isinstance(code, bytes) else code).inc()
