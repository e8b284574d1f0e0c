"""Who sent it: SPF, DKIM and DMARC verdicts of a received message, as RFC 8601 records them.

A mail's `From` is whatever its sender typed. Before the gateway acts on it (shows a reply as
the guest's, answers with an acknowledgement) it asks the sender's domain whether this mail is
theirs: SPF (RFC 7208) for the connecting address and the envelope sender, DKIM (RFC 6376) for
the signatures, and DMARC (RFC 7489) for whether either of those passed for a domain aligned
with `From`. The checks are the libraries' (pyspf, dkimpy, authheaders' DMARC policy lookup),
every lookup goes through one dnspython resolver (GATEWAY_DNS_SERVERS, so tests bring their
own DNS server), and all lookups of one message share one deadline (GATEWAY_DNS_TIMEOUT).

This runs after the `250`, while processing: a sender never waits for our DNS. A lookup that
times out or fails is `temperror`, which is "no verdict": it never refuses, parks or holds a
mail. "No verdict" is also `permerror`, a domain without a DMARC record, and webhook mail whose
provider sends no verdicts. What each rule does with it is in docs/mail-flow.md.

Webhook mail came to the provider, not to us: the connecting address we see is the provider's.
Its verdicts are the provider's own, recorded when the webhook stored the mail
(`inbound_mail.authentication`), never headers inside the message, which a sender can forge.
"""
from __future__ import annotations

import functools
import importlib.resources
import ipaddress
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import dkim
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import spf
from authheaders.dmarc_lookup import DMARCException, lookup_receiver_record
from publicsuffix2 import PublicSuffixList
from authres import AuthenticationResultsHeader, SPFAuthenticationResult, DKIMAuthenticationResult
from authres.dmarc import DMARCAuthenticationResult
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import OperationalError

from gateway.inbound.mime import ParsedMessage
from gateway.settings import Settings
from gateway.store.db import read_tx
from gateway.store.tables import INBOUND

log = logging.getLogger(__name__)

# Results that say nothing about the sender either way (RFC 8601 section 2.7).
NO_VERDICT = frozenset({"none", "temperror", "permerror", "neutral", "policy", ""})
_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"})
# A domain as it may appear in a result: anything else (a From domain is the sender's text)
# is left out of the summary rather than escaped into it.
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)*\Z")
MAX_SIGNATURES = 3   # DKIM signatures tried per message; each costs a key lookup


@dataclass(frozen=True)
class Verdicts:
    """One message's authentication: each method's result, the domain it is about, and whether a
    pass was for a domain aligned with `From` (RFC 7489 section 3.1, relaxed)."""
    spf: str = "none"
    spf_domain: str = ""
    dkim: str = "none"
    dkim_domain: str = ""
    dmarc: str = "none"
    dmarc_policy: str = ""
    from_domain: str = ""
    aligned: bool = False       # SPF or DKIM passed for From's organisational domain
    reported_by: str = ""       # "" checked here; else the provider whose verdicts these are

    @property
    def dmarc_fails(self) -> bool:
        """An explicit DMARC failure: the From domain publishes a policy and neither SPF nor
        DKIM passed aligned with it. Only this is evidence of a forged From."""
        return self.dmarc == "fail"

    def summary(self, authserv_id: str) -> str:
        """The Authentication-Results value (RFC 8601), without the header name."""
        results: list[Any] = [
            SPFAuthenticationResult(result=self.spf, smtp_mailfrom=_safe(self.spf_domain) or None),
            DKIMAuthenticationResult(result=self.dkim, header_d=_safe(self.dkim_domain) or None),
            DMARCAuthenticationResult(result=self.dmarc, header_from=_safe(self.from_domain) or None,
                                      policy=self.dmarc_policy or None),
        ]
        if self.reported_by:
            for result in results:
                result.result_comment = f"reported by {self.reported_by}"
        text = str(AuthenticationResultsHeader(authserv_id=_safe(authserv_id) or "gateway", results=results))
        return text.partition(":")[2].strip()


NONE = Verdicts()


def _safe(domain: str) -> str:
    domain = (domain or "").strip().lower().rstrip(".")
    return domain if len(domain) <= 253 and _DOMAIN.match(domain) else ""


def _result(value: str | None) -> str:
    value = (value or "").strip().lower()
    return value if value in _RESULTS else "none"


# --- DNS -------------------------------------------------------------------------------------

class DnsTrouble(Exception):
    """A lookup timed out, the deadline passed or no server answered: temperror."""


_resolvers: dict[str, dns.resolver.Resolver] = {}
_resolvers_lock = threading.Lock()


def resolver_for(servers: str) -> dns.resolver.Resolver:
    """The resolver for GATEWAY_DNS_SERVERS ("host[:port]" list; empty: /etc/resolv.conf), made
    once per process with a cache, so a burst from one domain asks its records once."""
    with _resolvers_lock:
        found = _resolvers.get(servers)
        if found is None:
            found = _resolvers[servers] = _make_resolver(servers)
        return found


def _make_resolver(servers: str) -> dns.resolver.Resolver:
    entries = [s.strip() for s in servers.split(",") if s.strip()]
    resolver = dns.resolver.Resolver(configure=not entries)
    if entries:
        nameservers: list[str | dns.nameserver.Nameserver] = []
        for entry in entries:
            host, port = _host_port(entry)
            nameservers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = nameservers
    resolver.cache = dns.resolver.LRUCache(10_000)
    return resolver


def _host_port(entry: str) -> tuple[str, int]:
    """"192.0.2.1", "192.0.2.1:5353", "[2001:db8::1]:5353" or a bare IPv6 address."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest.lstrip(":") or 53)
    try:
        ipaddress.ip_address(entry)
        return entry, 53
    except ValueError:
        host, _, port = entry.rpartition(":")
        return host, int(port)


class Lookups:
    """One message's DNS lookups: one resolver, one deadline for all of them together."""

    def __init__(self, resolver: dns.resolver.Resolver, timeout: float) -> None:
        self.resolver = resolver
        self.deadline = time.monotonic() + timeout
        self.unanswered = False     # a server did not answer in time (not: a name does not exist)

    def left(self) -> float:
        """Seconds left for lookups, at least a little (a library's own per-lookup timeout)."""
        return max(self.deadline - time.monotonic(), 0.1)

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DnsTrouble("DNS deadline passed")
        return left

    def resolve(self, name: str, qtype: str) -> list[Any]:
        """The answer's records; [] when the name or the type does not exist."""
        try:
            answer = self.resolver.resolve(name, qtype, lifetime=self.remaining(), search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.NoResolverConfiguration) as exc:
            self.unanswered = True
            raise DnsTrouble(f"DNS {type(exc).__name__} for {name} {qtype}") from exc
        except dns.exception.DNSException as exc:  # a malformed name (too long, empty label)
            log.debug("DNS lookup of %r failed: %s", name, exc)
            return []
        return list(answer)

    def txt(self, name: str) -> list[bytes]:
        return [b"".join(r.strings) for r in self.resolve(name, "TXT")]

    # dkimpy's dnsfunc: the key record's text, or None.
    def dkim_key(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        records = self.txt(text.rstrip("."))
        return records[0] if records else None

    # authheaders' DMARC dnsfunc: the one DMARC record's text, or None (RFC 7489 6.6.3:
    # two records count as none).
    def dmarc_record(self, name: str) -> str | None:
        records = [r.decode("utf-8", "replace") for r in self.txt(name)]
        dmarc_records = [r for r in records if r.startswith("v=DMARC1")]
        return dmarc_records[0] if len(dmarc_records) == 1 else None

    # pyspf's DNSLookup contract: ((name, qtype), value) pairs.
    def spf_records(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        try:
            records = self.resolve(name, qtype)
        except DnsTrouble as exc:
            raise spf.TempError(str(exc)) from None
        found: list[tuple[tuple[str, str], Any]] = []
        for rdata in records:
            if qtype in ("A", "AAAA"):
                found.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                found.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                found.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                found.append(((name, qtype), rdata.strings))
        return found


# pyspf looks names up through its module-level DNSLookup; the lookups of the message being
# checked on this thread take its place, so SPF uses our resolver and deadline like the rest.
_current = threading.local()
_pyspf_lookup: Callable[..., Any] = spf.DNSLookup


def _spf_dns(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> Any:
    lookups: Lookups | None = getattr(_current, "lookups", None)
    if lookups is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    return lookups.spf_records(name, qtype)


spf.DNSLookup = _spf_dns


# --- the checks ------------------------------------------------------------------------------

def _peer_ip_and_helo(peer: str) -> tuple[str, str]:
    """The SMTP edge records "ip:port helo=name" (gateway/inbound/smtp.py)."""
    address, _, rest = peer.partition(" ")
    ip = address.rpartition(":")[0] if address.count(":") else address
    helo = rest.partition("helo=")[2].strip() if "helo=" in rest else ""
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        ip = ""
    return ip, helo


def _domain_of(address: str) -> str:
    return address.strip().strip("<>").rpartition("@")[2].strip().lower().rstrip(".")


_suffix_list: list[PublicSuffixList] = []
_suffix_lock = threading.Lock()


def _suffixes() -> PublicSuffixList:
    """The public suffix list authheaders ships, read once per process: authheaders' own
    get_org_domain reads and parses the whole file on every call (90 ms, measured), several
    times a message. Under a lock: a batch's first messages are checked side by side, and an
    lru_cache let each of those threads build the list at once (up to 16 builds of 0.2 s under
    one GIL, the first seconds of every worker process in bench/smtp_ingest.py's profile)."""
    if not _suffix_list:
        with _suffix_lock:
            if not _suffix_list:
                ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
                with importlib.resources.as_file(ref) as path, open(path, encoding="utf-8") as handle:
                    _suffix_list.append(PublicSuffixList(handle))
    return _suffix_list[0]


def load_tables() -> None:
    """Read the public suffix list now: a processor calls it at start, so the first mail it
    checks does not wait the 0.2 s (more on a loaded machine) it takes."""
    _suffixes()


@functools.lru_cache(maxsize=4096)
def _org(domain: str) -> str:
    """The organisational domain (RFC 7489 section 3.2) by the public suffix list. For a TLD the
    list does not know, its default rule "*" makes the TLD the suffix: one label more is the
    organisation (publicsuffix2 answers the bare TLD there, which would align every domain
    under it)."""
    if not domain:
        return ""
    try:
        org = str(_suffixes().get_public_suffix(domain))
    except Exception:  # a name the public suffix list cannot place
        return domain
    if "." not in org and domain.count(".") >= 1:
        return ".".join(domain.split(".")[-2:])
    return org


def check_spf(lookups: Lookups, ip: str, mail_from: str, helo: str) -> tuple[str, str]:
    """RFC 7208 for MAIL FROM (or postmaster@HELO for the null sender); (result, domain)."""
    sender = mail_from.strip().strip("<>")
    if not ip or not (sender or helo):
        return "none", _domain_of(sender)
    _current.lookups = lookups
    try:
        result, _ = spf.check2(ip, sender, helo or _domain_of(sender), querytime=lookups.left())
    except DnsTrouble:
        result = "temperror"
    except Exception:  # pyspf on a malformed address or record: nothing it can say
        log.debug("SPF check failed", exc_info=True)
        result = "permerror"
    finally:
        _current.lookups = None
    return _result(result), _domain_of(sender) or helo.lower()


def check_dkim(lookups: Lookups, raw: bytes, from_domain: str) -> tuple[str, str]:
    """RFC 6376, the first few signatures; (result, d=). A signature aligned with From wins."""
    try:
        count = sum(1 for name, _ in dkim.rfc822_parse(_header_block(raw))[0] if name.lower() == b"dkim-signature")
    except Exception:
        return "permerror", ""
    if count == 0:
        return "none", ""
    org = _org(from_domain)
    best: tuple[str, str] | None = None
    for index in range(min(count, MAX_SIGNATURES)):
        verifier = dkim.DKIM(raw, logger=_QUIET, timeout=lookups.left())
        try:
            result = "pass" if verifier.verify(idx=index, dnsfunc=lookups.dkim_key) else "fail"
        except DnsTrouble:
            result = "temperror"
        except dkim.ValidationError:   # the body or headers do not match the signature
            result = "fail"
        except dkim.DKIMException:     # a signature or key it cannot read
            result = "permerror"
        fields = getattr(verifier, "signature_fields", None) or {}
        domain = fields.get(b"d", b"").decode("ascii", "replace").lower()
        if result == "pass" and org and _org(domain) == org:
            return result, domain
        if best is None or (result == "pass" and best[0] != "pass"):
            best = (result, domain)
    return best or ("none", "")


_BLANK_LINE = re.compile(rb"\n\r?\n")


def _header_block(raw: bytes) -> bytes:
    """The message up to and with its first empty line, as dkimpy's `rfc822_parse` splits it
    (lines end in LF or CRLF): its header fields from this are those it reads from the whole
    message, and so are its errors. Counting the signatures on the whole message split every
    line of the body too, a quarter of a message's checks (4 KB mail, py-spy)."""
    if raw.startswith((b"\n", b"\r\n")):
        return b""
    blank = _BLANK_LINE.search(raw)
    return raw if blank is None else raw[:blank.end()]


_QUIET = logging.getLogger(__name__ + ".dkimpy")   # dkimpy logs every failed signature as an error
_QUIET.setLevel(logging.CRITICAL)


def check_dmarc(lookups: Lookups, from_domain: str, spf_result: str, spf_domain: str, dkim_result: str,
                dkim_domain: str) -> tuple[str, str]:
    """RFC 7489: the policy record (authheaders reads and validates it) of the From domain, else
    of its organisational domain (section 6.6.3); then relaxed or strict alignment of a passing
    SPF or DKIM domain (section 3.1). (result, policy); "none" without a record."""
    if not from_domain:
        return "permerror", ""
    try:
        record = lookup_receiver_record(from_domain, lookups.dmarc_record)
        org = _org(from_domain)
        subdomain = False
        if not record and org and org != from_domain:
            record, subdomain = lookup_receiver_record(org, lookups.dmarc_record), True
    except DnsTrouble:
        return "temperror", ""
    except DMARCException:
        return "permerror", ""
    if not record or not record.get("p"):
        return "none", ""
    policy = (record.get("sp") if subdomain else None) or record["p"]
    policy = policy.rstrip("\\")[:16]

    def aligned(domain: str, mode: str) -> bool:
        return bool(domain) and (domain == from_domain if mode == "s" else _org(domain) == org)

    if (spf_result == "pass" and aligned(spf_domain, record.get("aspf", "r"))) or \
            (dkim_result == "pass" and aligned(dkim_domain, record.get("adkim", "r"))):
        return "pass", policy
    return "fail", policy


# After a server left a lookup unanswered, the next messages only probe it briefly for a while:
# a resolver that is down costs each batch PROBE seconds, not GATEWAY_DNS_TIMEOUT, and checks
# are back to normal as soon as it answers again.
PROBE = 0.5
TROUBLE_WINDOW = 30.0
_trouble_until: dict[str, float] = {}


def authenticate(raw: bytes, parsed: ParsedMessage, mail_from: str, peer: str, settings: Settings) -> Verdicts:
    """SPF, DKIM and DMARC of one message received over SMTP, within GATEWAY_DNS_TIMEOUT."""
    timeout = settings.dns_timeout
    if time.monotonic() < _trouble_until.get(settings.dns_servers, 0.0):
        timeout = min(timeout, PROBE)
    lookups = Lookups(resolver_for(settings.dns_servers), timeout)
    try:
        return _check(lookups, raw, parsed, mail_from, peer)
    finally:
        if lookups.unanswered:
            _trouble_until[settings.dns_servers] = time.monotonic() + TROUBLE_WINDOW
        elif timeout < settings.dns_timeout:  # a probe got its answers: the server is back
            _trouble_until.pop(settings.dns_servers, None)


def _check(lookups: Lookups, raw: bytes, parsed: ParsedMessage, mail_from: str, peer: str) -> Verdicts:
    from_domain = _domain_of(parsed.from_.email) if parsed.from_ is not None else ""
    ip, helo = _peer_ip_and_helo(peer)
    spf_result, spf_domain = check_spf(lookups, ip, mail_from, helo)
    dkim_result, dkim_domain = check_dkim(lookups, raw, from_domain)
    dmarc_result, policy = check_dmarc(lookups, from_domain, spf_result, spf_domain, dkim_result, dkim_domain)
    org = _org(from_domain)
    aligned = bool(org) and ((spf_result == "pass" and _org(spf_domain) == org)
                             or (dkim_result == "pass" and _org(dkim_domain) == org))
    return Verdicts(spf=spf_result, spf_domain=spf_domain, dkim=dkim_result, dkim_domain=dkim_domain,
                    dmarc=dmarc_result, dmarc_policy=policy, from_domain=from_domain, aligned=aligned)


def provider_verdicts(provider: str, parsed: ParsedMessage, reported: str | None, mail_from: str = "") -> Verdicts:
    """What a provider webhook reported (webhooks/verdicts.py JSON), in our terms. Alignment is
    judged as for our own checks: a pass counts only for a domain aligned with From, or when the
    provider's own DMARC check passed."""
    try:
        data = json.loads(reported) if reported else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    from_domain = _domain_of(parsed.from_.email) if parsed.from_ is not None else ""
    org = _org(from_domain)
    spf_domain = _domain_of(mail_from)
    spf_r, dmarc_r = _result(data.get("spf")), _result(data.get("dmarc"))
    pairs = data.get("dkim") if isinstance(data.get("dkim"), list) else []
    signatures = [(str(p[0] or "").lower(), _result(p[1])) for p in pairs[:MAX_SIGNATURES]
                  if isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, type(None)))]
    dkim_r, dkim_domain = "none", ""
    for domain, result in signatures:   # an aligned pass first, then any pass, then the first
        if result == "pass" and domain and _org(domain) == org:
            dkim_r, dkim_domain = result, domain
            break
        if dkim_r == "none" or (result == "pass" and dkim_r != "pass"):
            dkim_r, dkim_domain = result, domain
    aligned = bool(org) and (dmarc_r == "pass"
                             or (spf_r == "pass" and bool(spf_domain) and _org(spf_domain) == org)
                             or (dkim_r == "pass" and bool(dkim_domain) and _org(dkim_domain) == org))
    return Verdicts(spf=spf_r, spf_domain=spf_domain, dkim=dkim_r, dkim_domain=dkim_domain, dmarc=dmarc_r,
                    from_domain=from_domain, aligned=aligned, reported_by=provider)


# --- a claimed batch -------------------------------------------------------------------------

_SOURCES = select(INBOUND.c.id, INBOUND.c.source, INBOUND.c.peer, INBOUND.c.authentication).where(
    INBOUND.c.id.in_(bindparam("ids", expanding=True)))
MAX_PARALLEL = 32  # messages of a batch checked at once (a claim is 32): DNS waits, it does not compute


def authenticate_claimed(engine: Engine, settings: Settings, claimed: Sequence[Any],
                         parsed: Sequence[ParsedMessage]) -> None:
    """Set `authentication` on each claimed message (gateway/inbound/threader.Inbound).

    The messages of a batch are checked side by side, so a resolver that stopped answering
    costs the batch about one GATEWAY_DNS_TIMEOUT, not one per message. Never raises for a
    message: whatever goes wrong leaves it with no verdict."""
    if not claimed:
        return
    try:
        with read_tx(engine) as conn:
            rows = {r.id: r for r in conn.execute(_SOURCES, {"ids": [item.id for item in claimed]})}
    except OperationalError:
        # The database is gone for a moment: storing the batch meets it next and hands the
        # claims back at once (gateway/inbound/processor.py); nothing to check until then.
        log.warning("could not read how %d claimed message(s) arrived; not authenticated", len(claimed))
        return
    jobs: list[tuple[Any, ParsedMessage, str]] = []
    for item, message in zip(claimed, parsed):
        row = rows.get(item.id)
        if row is None:
            continue
        if row.source == "smtp":
            jobs.append((item, message, row.peer or ""))
        else:
            item.authentication = provider_verdicts(row.source, message, row.authentication, item.mail_from)
    if not jobs:
        return

    def one(job: tuple[Any, ParsedMessage, str]) -> None:
        item, message, peer = job
        try:
            item.authentication = authenticate(item.raw, message, item.mail_from, peer, settings)
        except Exception:
            log.warning("authenticating inbound %s failed; no verdict", item.id, exc_info=True)
            item.authentication = NONE

    if len(jobs) == 1:
        one(jobs[0])
        return
    list(_checkers().map(one, jobs))


@functools.lru_cache(maxsize=1)
def _checkers() -> ThreadPoolExecutor:
    """The threads that check a batch's messages side by side, kept for the process: a pool per
    batch started and joined up to 16 threads for every chunk of 16 messages (a third of the
    processor's wall time in bench/processor_cpu.py --profile, 600 mails: 195 thread starts)."""
    return ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="auth")
