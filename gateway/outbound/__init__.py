"""The path of a studio's answer out: a reply row and an outbox job (`replies`), composed,
rendered and DKIM-signed mail (`compose`, `render`, `signing`), sent by the outbox worker
through the relay (`outbox`, `relay`). Acknowledgements enter here through the same door."""
