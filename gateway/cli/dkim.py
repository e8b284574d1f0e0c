"""`gateway dkim keygen`: a DKIM key for outgoing mail and the DNS record to publish."""
from __future__ import annotations

import argparse
import sys

from gateway.cli import common


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    """Write a DKIM private key (0600, never over an existing file) and print the DNS record."""
    import os
    from pathlib import Path

    from gateway.outbound.signing import dns_txt_lines, generate_keypair

    settings = common.settings()
    path = Path(args.output or settings.data_dir / f"dkim-{args.selector}.pem")
    pair = generate_keypair(args.type)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"gateway: {path} exists; not overwriting a key that may be published", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as fh:
        fh.write(pair.private_pem)
    print(f"private key ({pair.algorithm}) written to {path}")
    print("publish this DNS record:")
    print(dns_txt_lines(args.selector, settings.mail_domain, pair.dns_record))
    print("then set:")
    print(f"GATEWAY_DKIM_SELECTOR={args.selector}")
    print(f"GATEWAY_DKIM_PRIVATE_KEY_FILE={path.resolve()}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dkim_cmd = sub.add_parser("dkim", help="DKIM keys for outgoing mail").add_subparsers(dest="dkim_command",
                                                                                         required=True)
    keygen = dkim_cmd.add_parser("keygen", help="write a key pair and print the DNS TXT record to publish")
    keygen.add_argument("--selector", default="gateway", help="the DNS selector: <selector>._domainkey.<mail domain> (default: gateway)")
    keygen.add_argument("--type", choices=["rsa", "ed25519"], default="rsa",
                        help="rsa (2048 bit, understood everywhere) or ed25519 (RFC 8463)")
    keygen.add_argument("--output", help="key file (default: $GATEWAY_DATA_DIR/dkim-<selector>.pem)")
    keygen.set_defaults(func=cmd_dkim_keygen)
