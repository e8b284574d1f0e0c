"""Every GATEWAY_* setting, parsed once and strictly.

Settings come only from the environment and an env file (`.env` in the working directory, or the
one GATEWAY_ENV_FILE names); an unknown GATEWAY_* name is an error with the nearest known name.
The same code runs as one `gateway serve` process or as Procfile roles. A missing secret
key is generated once into the data directory: a fresh install needs no manual step, and every
process sharing that directory (or that key) signs reply addresses identically.
"""
from __future__ import annotations

import difflib
import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal, Mapping

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.mail.addresses import valid_slug

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "please-change", "xxx"}


class Settings(BaseSettings):
    """Frozen settings; see config/example.env for the documented list."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str = ""              # default: sqlite:///<data_dir>/gateway.store.db
    db_busy_timeout: float = Field(5.0, gt=0)       # seconds to wait for a locked database
    # PostgreSQL with a synchronous standby: once a COMMIT has waited this long (the standby is
    # down), new mail gets 451 / 503 and /readyz 503; the COMMIT itself is never cancelled.
    db_commit_deadline: float = Field(10.0, gt=0)
    mail_domain: str = "mail.localhost"
    secret_key: str = ""                # default: generated into <data_dir>/secret_key

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(2525, ge=0, le=65535)
    smtp_hostname: str = ""             # name in the greeting; default: mail_domain
    smtp_max_message_size: int = Field(25 * 1024 * 1024, gt=0)
    smtp_max_recipients: int = Field(100, ge=1)
    smtp_max_connections: int = Field(200, ge=1)
    smtp_idle_timeout: float = Field(300.0, gt=0)    # RFC 5321 4.5.3.2: at least 5 minutes
    smtp_data_timeout: float = Field(600.0, gt=0)    # whole DATA phase, slowloris guard
    smtp_max_commands_without_progress: int = Field(30, ge=1)
    smtp_tls_cert_file: Path | None = None
    smtp_tls_key_file: Path | None = None
    # What one client, or all of them together, may hold of the SMTP server (docs/mail-flow.md).
    smtp_max_connections_per_ip: int = Field(50, ge=1)          # 421 4.7.0 at connect beyond it
    smtp_max_mail_per_session: int = Field(200, ge=1)           # MAIL commands; then 421, hang up
    smtp_max_rset_per_session: int = Field(200, ge=1)           # RSET commands; then 421, hang up
    smtp_max_unknown_rcpt_per_session: int = Field(20, ge=0)    # 550s; the next unknown is 421
    smtp_unknown_rcpt_cache_seconds: float = Field(10.0, ge=0)  # unknown studios remembered; 0: off
    smtp_unknown_rcpt_cache_size: int = Field(10_000, ge=0)     # at most this many remembered
    smtp_max_data_in_flight: int = Field(256 * 1024 * 1024, gt=0)  # DATA bytes of all sessions at once

    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    # Prometheus /metrics on a listener of its own, never the public HTTP one (gateway/api/metrics.py):
    # off while the port is unset; each process started by a role command serves its own.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Behind a reverse proxy: the addresses whose X-Forwarded-For / X-Forwarded-Proto are believed
    # (uvicorn's ProxyHeadersMiddleware), so rate limits count the client, not the proxy.
    # Comma-separated IPs or CIDRs, "*" for any; empty: believe no one. Default: a proxy on this host.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # Browser apps on other origins that may call /api/ (CORS, gateway/api/cors.py): comma-separated
    # exact origins such as https://app.example.com; empty (the default): no CORS headers at all.
    cors_origins: str = ""
    # Several `gateway smtp` (or `gateway web`) processes on one port: SO_REUSEPORT on both
    # listeners, and the kernel spreads new connections over them (docs/operations.md). Off by
    # default, so a second gateway started by mistake fails with "address in use" rather than
    # silently taking half the connections. Linux lets only the same user share the port.
    reuse_port: bool = False

    flood_max_new_per_hour: int = Field(20, ge=1)    # new conversations per sender per studio
    reply_max_per_conversation_per_hour: int = Field(30, ge=1)  # API replies, then 429 (outbound/reply_brake.py)
    subject_fallback_days: int = Field(30, ge=1)
    max_attachment_size: int = Field(25 * 1024 * 1024, gt=0)
    process_max_attempts: int = Field(3, ge=1)       # crashes before a message is quarantined
    process_time_budget: float = Field(30.0, ge=0)   # seconds one message may take to parse; 0: no budget
    poll_interval: float = Field(0.5, gt=0)          # how often role processes look for work
    # The live event stream, GET /api/v1/events (gateway/api/events.py, docs/api.md#live-events).
    events_poll_interval: float = Field(0.025, gt=0, le=5)   # seconds between a web process's looks at the log
    events_heartbeat: float = Field(15.0, gt=0, le=300)     # seconds between heartbeats and credential checks
    process_max_defer: float = Field(15.0, ge=0)     # seconds threading may wait while mail streams in

    # Who sent it (gateway/inbound/authentication.py): SPF, DKIM and DMARC of mail received over
    # SMTP, checked after the `250` while processing, never a reason to refuse or park mail.
    dns_servers: str = ""                             # "host[:port]", comma-separated; empty: /etc/resolv.conf
    dns_timeout: float = Field(5.0, gt=0, le=60)      # seconds all of one message's lookups may take
    acknowledgements_per_hour: int = Field(30, ge=0)  # acknowledgements one studio sends per hour at most

    # The public inquiry form /f/<slug> (gateway/forms/, docs/forms.md says which limits apply).
    form_min_fill_seconds: float = Field(3.0, ge=0)       # faster posts of our page are refused quietly
    form_per_ip_per_hour: int = Field(20, ge=1)           # submissions from one client address
    form_per_address_per_day: int = Field(5, ge=1)        # submissions per guest address and studio
    form_bare_per_ip_per_hour: int = Field(5, ge=1)       # the same for posts without our issued fields
    form_bare_per_address_per_day: int = Field(2, ge=1)
    form_daily_cap: int = Field(200, ge=1)                # submissions one studio takes per day, then "try later"

    # Outbound mail (replies): relay, retries, signing.
    smtp_relay_url: SecretStr | None = None           # smtp://[user:pass@]host[:port] | smtps://...; none: Maildir
    smtp_relay_timeout: float = Field(30.0, gt=0)
    outbound_retry_for: float = Field(2 * 24 * 3600.0, gt=0)   # seconds temporary failures are retried
    outbound_connections: int = Field(4, ge=1, le=64)          # parallel relay connections per worker
    outbound_lease: float = Field(60.0, gt=0)   # seconds a claimed reply is held; renewed while it is sent
    # /readyz says "degraded" (still 200) beyond these: mail piling up in the outbox (api/health.py).
    ready_outbox_max_waiting: int = Field(1000, ge=1)      # replies queued or being sent
    ready_outbox_max_age: float = Field(3600.0, gt=0)      # seconds the oldest of them has waited
    # Webhooks to the studios' own systems (gateway/outbound/webhooks.py).
    webhook_allow_loopback: bool = False   # development and tests only: http(s) to loopback addresses
    webhook_ca_file: Path | None = None    # an extra CA certificate to trust (a local test server)
    webhook_interval: float = Field(2.0, gt=0)   # seconds between the worker's delivery rounds
    dkim_selector: str = ""
    dkim_private_key_file: Path | None = None

    # Provider webhooks (webhooks/): each is off until its secret is configured.
    mailgun_signing_key: SecretStr | None = None      # Mailgun "HTTP webhook signing key"
    sendgrid_verification_key: str = ""               # Inbound Parse security policy's public key (base64 DER)
    sendgrid_basic_auth: SecretStr | None = None      # "user:password" from the Parse URL's credentials
    postmark_basic_auth: SecretStr | None = None      # "user:password" from the inbound webhook URL
    ses_topic_arns: str = ""                          # comma-separated SNS topics whose SES mail we take
    # sns.<region>.amazonaws.com(.cn), region-shaped (webhooks/sns.py: DEFAULT_CERT_HOST_PATTERN)
    ses_cert_host_pattern: str = (r"^sns\.(?:(?!cn-)[a-z]{2}(?:-gov)?-[a-z]+-[0-9]{1,2}\.amazonaws\.com"
                                  r"|cn-[a-z]+-[0-9]{1,2}\.amazonaws\.com\.cn)$")
    ses_cert_ca_file: Path | None = None              # CA bundle for fetching SNS certificates
    ses_auto_confirm: bool = False                    # confirm SNS subscriptions to the topics above
    webhook_max_age: float = Field(300.0, gt=0)       # seconds a signed timestamp stays valid

    # Billing (Stripe): off until the secret key is configured; every studio is then on `free`.
    stripe_secret_key: SecretStr | None = None        # sk_live_... / sk_test_... / rk_... (restricted key)
    stripe_webhook_secrets: SecretStr | None = None   # whsec_..., comma-separated during a rotation
    stripe_price_monthly: str = ""                    # price_... of the monthly plan
    stripe_price_yearly: str = ""                     # price_... of the yearly plan
    stripe_api_base: str = "https://api.stripe.com"  # tests point this at a local emulator
    stripe_max_retries: int = Field(4, ge=0, le=10)   # tries after the first on network trouble, 429 and 5xx
    stripe_retry_wait: float = Field(1.0, ge=0)       # first backoff in seconds, doubled each try
    billing_past_due_grace_days: float = Field(7.0, ge=0)   # paid features kept while a payment is late
    billing_return_url: str = "http://127.0.0.1:8000/"      # where Stripe Checkout sends the owner back

    # Backups and the deletion log kept beside them (it must outlive the database it describes).
    backup_dir: Path | None = None                    # default: <data_dir>/backups
    backup_keep: int = Field(7, ge=1)                 # scheduled backups kept
    backup_interval_hours: float = Field(0.0, ge=0)   # 0: no scheduled backups in the worker
    pg_bin_dir: Path | None = None                    # pg_dump/pg_restore/psql; default: found on PATH

    # Deleted conversations and messages are erased for good 30 days after deletion (gateway/lifecycle/purge.py).
    purge_interval_hours: float = Field(1.0, ge=0)    # how often the worker purges; 0: only `gateway purge`

    # The operator's own helpdesk: a studio address (e.g. helpdesk@<mail domain>) whose mail is
    # answered in the messenger like any studio's; LÖSCHEN to it asks for an account deletion.
    helpdesk_address: str = ""                        # empty: no helpdesk, no deletion by email
    helpdesk_name: str = "Helpdesk"                   # the helpdesk studio's name, the From of its mail
    # Base URL as browsers reach us: links in mail (deletion confirmation, web sign-in links) and
    # the origin the web pages' forms must come from. Empty: no links mailed.
    public_url: str = ""

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"      # json: one object a line, fields as keys (gateway/logs.py)
    # `gateway serve` runs its worker role (processing, outbox, rounds) in this many child
    # processes, so parsing doesn't take turns with accepting mail under one GIL and a burst is
    # threaded on both cores (gateway/worker_process.py). Default: two when the machine has a
    # second core (measured there; on SQLite more processes meet its one write lock more often
    # than they parse in parallel); 0 keeps every role in one process.
    serve_worker_processes: int | None = Field(default=None, ge=0, le=32)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("GATEWAY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        return value

    @field_validator("secret_key")
    @classmethod
    def _no_placeholder(cls, value: str) -> str:
        if value and not _strong_secret(value):
            raise ValueError("GATEWAY_SECRET_KEY must be at least 16 random characters, not a placeholder")
        return value

    @field_validator("mail_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().lower()
        if not value or any(c in value for c in "@ \r\n\t<>"):
            raise ValueError("GATEWAY_MAIL_DOMAIN must be a bare domain such as mail.example.com")
        return value

    @field_validator("smtp_tls_cert_file", "smtp_tls_key_file", "dkim_private_key_file", "ses_cert_ca_file",
                     "backup_dir", "pg_bin_dir", "serve_worker_processes", "metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`GATEWAY_X=` as config/example.env writes it means "not set": without this an empty
        path became Path(".") (a TLS certificate file named ".") and an empty switch an error."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mailgun_signing_key", "sendgrid_basic_auth", "postmark_basic_auth")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # empty means off
        secret = value.get_secret_value()
        if secret.lower() in _PLACEHOLDER_SECRETS or len(secret) < 8:
            raise ValueError("webhook secrets must be the provider's real key or user:password, not a placeholder")
        return value

    @field_validator("sendgrid_basic_auth", "postmark_basic_auth")
    @classmethod
    def _user_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError("basic auth settings are written user:password")
        return value

    @field_validator("stripe_secret_key", "stripe_webhook_secrets")
    @classmethod
    def _stripe_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # empty means off
        if value.get_secret_value().strip().lower() in _PLACEHOLDER_SECRETS:
            raise ValueError("Stripe secrets must be the real keys from the Stripe dashboard, not a placeholder")
        return value

    @field_validator("stripe_api_base")
    @classmethod
    def _stripe_base(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("GATEWAY_STRIPE_API_BASE must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("smtp_relay_url")
    @classmethod
    def _relay(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("smtp://", "smtps://")):
            raise ValueError("GATEWAY_SMTP_RELAY_URL must start with smtp:// or smtps://")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("GATEWAY_PUBLIC_URL must be an http(s) URL such as https://gateway.example.com")
        return value.rstrip("/")

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            scheme, sep, host = origin.partition("://")
            if scheme not in ("https", "http") or not sep or not host or any(c in host for c in "/*?# "):
                raise ValueError(f"GATEWAY_CORS_ORIGINS takes exact origins such as https://app.example.com "
                                 f"(scheme, host and port if any; no path, no wildcard), not {origin!r}")
        return value

    @property
    def cors_origin_set(self) -> frozenset[str]:
        """The origins of GATEWAY_CORS_ORIGINS, as a browser sends them (lower case, no trailing /)."""
        return frozenset(o.strip().lower() for o in self.cors_origins.split(",") if o.strip())

    @field_validator("helpdesk_address")
    @classmethod
    def _helpdesk_address(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("helpdesk_name")
    @classmethod
    def _helpdesk_name(cls, value: str) -> str:
        if not value.strip() or any(c in value for c in "\r\n\0\u2028\u2029"):
            raise ValueError("GATEWAY_HELPDESK_NAME must be a single non-empty line")
        return value.strip()

    @model_validator(mode="after")
    def _helpdesk_on_our_domain(self) -> "Settings":
        # The helpdesk is a studio: its mail must pass RCPT and threading like any studio's,
        # so its address has to be a plain studio address of the mail domain.
        local, _, domain = self.helpdesk_address.rpartition("@")
        if self.helpdesk_address and (domain != self.mail_domain or not valid_slug(local)):
            raise ValueError(f"GATEWAY_HELPDESK_ADDRESS must be <name>@{self.mail_domain} with a name of "
                             "a-z, 0-9 and inner hyphens (no +detail)")
        return self

    @property
    def helpdesk_slug(self) -> str:
        """The helpdesk studio's slug, or "" when there is no helpdesk."""
        return self.helpdesk_address.partition("@")[0]

    @property
    def ses_topics(self) -> frozenset[str]:
        return frozenset(arn.strip() for arn in self.ses_topic_arns.split(",") if arn.strip())

    @property
    def webhook_max_body(self) -> int:
        """Largest webhook body read: the biggest mail we accept, twice (raw MIME and parsed
        attachments side by side, as Mailgun and Postmark send them), base64-inflated, plus form
        and JSON overhead. Litestar's 10 MB default would refuse big inquiries with photos."""
        return 2 * (self.smtp_max_message_size * 4 // 3) + 1024 * 1024

    @property
    def stripe_webhook_secret_list(self) -> list[str]:
        """Every webhook signing secret accepted: old and new side by side during a rotation."""
        if self.stripe_webhook_secrets is None:
            return []
        return [s.strip() for s in self.stripe_webhook_secrets.get_secret_value().split(",") if s.strip()]

    @property
    def resolved_backup_dir(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @property
    def resolved_serve_worker_processes(self) -> int:
        if self.serve_worker_processes is not None:
            return self.serve_worker_processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return 2 if cores >= 2 else 0

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"

    @property
    def resolved_smtp_hostname(self) -> str:
        return self.smtp_hostname or self.mail_domain

    def secret(self) -> bytes:
        """The HMAC key for reply addresses: configured, or generated once and kept on disk.

        A key file is held to the same rule as GATEWAY_SECRET_KEY (at least 16 characters, no
        placeholder): an empty or truncated file (a full disk, a copy that went wrong, an
        operator's `touch`) would otherwise sign every reply address, deletion code and backup
        with a guessable key, silently. It is refused with the path to fix instead."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret_key"
        private_dir(self.data_dir)
        if not path.exists():
            _create_secret_file(path)
        value = path.read_text(encoding="utf-8", errors="replace").strip()
        if not _strong_secret(value):
            raise SecretKeyError(
                f"the secret key file {path} is empty, shorter than {MIN_SECRET_LENGTH} characters or a "
                "placeholder; restore it from your secret store (every reply address and backup signature "
                "depends on it), or, on a fresh install with no mail yet, delete it to have a new one generated")
        return value.encode()

    def derived_key(self, purpose: str) -> bytes:
        """A key for one purpose only, derived from the secret key (HMAC-SHA256 as a PRF,
        RFC 2104 / the "expand" step of RFC 5869): the raw secret never signs two kinds of data,
        so a signature made for a backup can never pass as a reply address or the reverse."""
        return hmac.new(self.secret(), b"studio-mail-gateway/" + purpose.encode(), hashlib.sha256).digest()


MIN_SECRET_LENGTH = 16
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create a directory readable by the gateway's user only (0700), parents too: the data
    directory holds the database, the secret key and mail drops.

    An existing directory is tightened only when we own it: a database pointed at a shared
    directory (/tmp, /var/lib) must not take it away from everyone else."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    stat = path.stat()
    if stat.st_uid == os.geteuid() and stat.st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR_MODE)


class SecretKeyError(RuntimeError):
    """The secret key on disk is unusable; the message names the file and what to do."""


def _strong_secret(value: str) -> bool:
    return len(value) >= MIN_SECRET_LENGTH and value.lower() not in _PLACEHOLDER_SECRETS


def _create_secret_file(path: Path) -> None:
    """Write a new key to a temporary file and link it into place: os.link fails if the name
    exists, so of two processes starting at once exactly one key wins, and nobody ever reads a
    file that exists but is not written yet (the old O_EXCL-then-write left that window)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won: its key is the one
    finally:
        tmp.unlink(missing_ok=True)


# Names under the GATEWAY_ prefix that are not settings, so the strict check below lets them pass:
# the env file's own name, and what the test suite and bench/ read for themselves (they run the
# gateway as a subprocess with their environment inherited).
ENV_FILE_VARIABLE = "GATEWAY_ENV_FILE"
EXEMPT_PREFIXES = ("GATEWAY_TEST_", "GATEWAY_BENCH_")
DEFAULT_ENV_FILE = ".env"


class SettingsFileError(ValueError):
    """The settings cannot be read: a named env file is missing, or a GATEWAY_* name is unknown.
    The message says which name, where it came from, and the nearest known setting."""


def known_names() -> frozenset[str]:
    return frozenset(f"GATEWAY_{name.upper()}" for name in Settings.model_fields)


def unknown_names(names: Iterable[str]) -> list[str]:
    """The GATEWAY_* names that are neither a setting nor exempt: a typo such as
    GATEWAY_SMTP_PROT was silently ignored before, and the server listened on the default port."""
    known = known_names()
    return sorted(name for name in set(names)
                  if name.upper().startswith("GATEWAY_") and name.upper() not in known
                  and name.upper() != ENV_FILE_VARIABLE and not name.upper().startswith(EXEMPT_PREFIXES))


def suggestion(name: str) -> str:
    """ "GATEWAY_SMTP_PORT" for "GATEWAY_SMTP_PROT": the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(name.upper(), sorted(known_names()), n=1, cutoff=0.6)
    return close[0] if close else ""


def env_file_path(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """The env file to read: the one GATEWAY_ENV_FILE names, which must exist (a named file that
    is missing is a deployment mistake, not "no settings"), else `.env` in the working directory
    when there is one, as twelve-factor tools (foreman, honcho, docker compose) expect."""
    environ = os.environ if environ is None else environ
    named = environ.get(ENV_FILE_VARIABLE, "")
    if named:
        path = Path(named)
        if not path.is_file():
            raise SettingsFileError(f"{ENV_FILE_VARIABLE} names {named}, which is not a readable file")
        return path
    default = (cwd or Path.cwd()) / DEFAULT_ENV_FILE
    return default if default.is_file() else None


def check_names(environ: Mapping[str, str], env_file: Path | None) -> None:
    """Refuse unknown GATEWAY_* names in the environment and in the env file, with a suggestion.
    Other names in the file are left alone: a Procfile runner's `.env` is shared with other tools."""
    from dotenv import dotenv_values  # pydantic-settings' own dependency, and its reader

    sources = [("environment", list(environ))]
    if env_file is not None:
        sources.append((str(env_file), list(dotenv_values(env_file))))
    problems = []
    for where, names in sources:
        for name in unknown_names(names):
            near = suggestion(name)
            hint = f"; did you mean {near}?" if near else "; see docs/settings.md for the known settings"
            problems.append(f"unknown setting {name} in the {where}{hint}" if where == "environment"
                            else f"unknown setting {name} in {where}{hint}")
    if problems:
        raise SettingsFileError("\n".join(problems))


def load_settings(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Settings from the environment and the env file, names checked first. Values in the
    environment win over the file's, as pydantic-settings (and docker compose) order them."""
    environ = os.environ if environ is None else environ
    env_file = env_file_path(environ, cwd)
    check_names(environ, env_file)
    return Settings(_env_file=env_file) if env_file is not None else Settings()  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
