"""The benchmarks' mail: German inquiries to one studio, each from its own guest.

`make_message` is what the SMTP benchmark sends and the processor benchmark stores: ~4 KB
multipart/alternative (text/plain and text/html of one German text, umlauts, half 8bit UTF-8
and half quoted-printable, each with its own Message-ID), or ~200 KB with a JPEG attachment
that never dedupes. `short_inquiry` is the body of every Mailgun post of the webhook benchmark,
`seed_inquiry` the one inquiry the outbound benchmark replies to.
"""
from __future__ import annotations

import base64
import email.utils
import html
import quopri
import random
import textwrap
import uuid
from email.header import Header

MAIL_DOMAIN = "mail.test"
STUDIO_SLUG = "inkwell"
RCPT = f"{STUDIO_SLUG}@{MAIL_DOMAIN}"
SIZE_200K = 200 * 1024

_FIRST = ["Jörg", "Jürgen", "Müge", "Björn", "Käthe", "Sören", "Gülşen", "Ömer", "Änne", "Lukas",
          "Sophie", "Maximilian", "Grete", "Jonas", "Lea", "Tobias", "Hannah", "Felix", "Zoë", "Ülkü"]
_LAST = ["Müller", "Schäfer", "Größer", "Köhler", "Weiß", "Bäcker", "Jäger", "Krüger", "Schröder",
         "Hoffmann", "Wöhler", "Fuß", "Dürr", "Löffler", "Brückner", "Vogt", "Kühn", "Straßer"]
_MOTIFS = ["Rückenmotiv", "Unterarm-Mandala", "Fineline-Blüte", "Schlüsselbein-Schriftzug",
           "Cover-up am Knöchel", "Japanischer Koi", "Geometrischer Fuchs", "Blütenranke am Oberschenkel"]
_PARAGRAPHS = [
    "Hallo liebes Inkwell-Team,\n\nich schreibe Ihnen, weil ich schon seit längerer Zeit über ein "
    "Tattoo nachdenke und mir Ihre Arbeiten auf Instagram ausgesprochen gut gefallen. Besonders die "
    "feinen Linien und die zurückhaltende Schattierung haben mich überzeugt.",
    "Meine Idee wäre ein {motif} in etwa der Größe einer Handfläche, eher schwarz-grau als farbig. "
    "Ich hätte gern, dass die Übergänge weich wirken und das Motiv nicht zu überladen ist. Natürlich "
    "bin ich offen für Vorschläge, Sie haben da sicher mehr Erfahrung als ich.",
    "Zur Größe: Ich schätze ungefähr 12 × 15 cm, aber das können wir gern beim Beratungsgespräch "
    "gemeinsam festlegen. Ist es möglich, vorab eine Skizze zu bekommen? Ich würde für den Entwurf "
    "selbstverständlich eine Anzahlung leisten, falls das bei Ihnen üblich ist.",
    "Zeitlich bin ich recht flexibel; am besten passen mir Termine unter der Woche ab 15 Uhr oder "
    "samstags vormittags. Im Juli bin ich zwei Wochen verreist, davor oder danach wäre ideal. Wie "
    "lange sind denn Ihre Wartezeiten momentan ungefähr?",
    "Noch eine Frage zur Pflege: Welche Salbe empfehlen Sie für die ersten Tage, und wie lange "
    "sollte ich nach dem Stechen auf Sauna, Schwimmbad und direkte Sonne verzichten? Ich möchte "
    "natürlich, dass das Ergebnis möglichst lange schön bleibt.",
    "Außerdem habe ich eine leichte Pflasterallergie – ist das ein Problem für die Folie, die nach "
    "dem Termin aufgeklebt wird? Falls ja, gibt es eine Alternative? Ich möchte das lieber vorher "
    "klären, damit es am Tag selbst keine Überraschungen gibt.",
    "Was die Kosten angeht, hätte ich gern eine grobe Einschätzung, damit ich planen kann. Ich weiß, "
    "dass sich das erst nach dem Gespräch genau sagen lässt, aber eine Spanne würde mir schon sehr "
    "helfen. Zahlen kann ich bar oder per Überweisung.",
    "Ich habe bereits zwei kleinere Tattoos (Handgelenk und Schulter), beide gut verheilt, also "
    "bin ich nicht ganz unerfahren. Trotzdem bin ich ein bisschen nervös, weil das hier deutlich "
    "größer wird und an einer empfindlicheren Stelle sitzt.",
    "Gibt es bei Ihnen die Möglichkeit, das Motiv auf zwei Sitzungen aufzuteilen? Mein Arzt meinte, "
    "bei längeren Sitzungen solle ich zwischendurch Pausen einlegen, und ich würde lieber auf "
    "Nummer sicher gehen. Über eine kurze Rückmeldung würde ich mich sehr freuen.",
    "Vielen Dank schon einmal für Ihre Mühe und die Zeit, die Sie sich für meine Anfrage nehmen. "
    "Ich freue mich darauf, von Ihnen zu hören, und bin gespannt auf Ihre Vorschläge.",
]


def _german_body(rng: random.Random, name: str, motif: str, target: int) -> str:
    """Plain German text of about `target` UTF-8 bytes, wrapped at 76 columns."""
    parts = [_PARAGRAPHS[0], _PARAGRAPHS[1].format(motif=motif)]
    middle = _PARAGRAPHS[2:-1]
    while len("\n\n".join(parts).encode()) < target - 400:
        parts.append(rng.choice(middle))
    parts.append(_PARAGRAPHS[-1])
    parts.append(f"Viele Grüße\n{name}\n\n-- \nTel. 0151 {rng.randint(1000000, 9999999)}")
    lines: list[str] = []
    for para in "\n\n".join(parts).split("\n"):
        lines.extend(textwrap.wrap(para, 76) or [""])
    return "\n".join(lines)


def _crlf_dotstuff(text: bytes) -> bytes:
    """CRLF line ends and RFC 5321 4.5.2 dot-stuffing, as a client puts a message on the wire."""
    lines = text.replace(b"\r\n", b"\n").split(b"\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def _jpeg_like(rng: random.Random, size: int) -> bytes:
    """A JPEG-shaped blob (SOI, JFIF APP0, incompressible payload, EOI) that never dedupes."""
    header = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x48\x00\x48\x00\x00"
    return header + rng.randbytes(max(0, size - len(header) - 2)) + b"\xff\xd9"


def _html(text: str) -> str:
    """The HTML alternative of a plain body, as a mail client writes it: one <p> a paragraph
    (short lines, the greeting and signature, kept apart with <br>), lines wrapped at 76 columns
    (an 8bit part must stay under 998 octets a line)."""
    paragraphs = []
    for para in text.split("\n\n"):
        lines = [html.escape(line) for line in para.split("\n")]
        paragraphs.append(("<br>\n" if max(map(len, lines)) < 40 else " ").join(lines))
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    lines: list[str] = []
    for line in body.split("\n"):
        lines.extend(textwrap.wrap(line, 76, break_long_words=False, break_on_hyphens=False) or [""])
    return ('<!DOCTYPE html>\n<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html; '
            'charset=UTF-8">\n</head>\n<body>\n' + "\n".join(lines) + "\n</body>\n</html>")


def _part(content_type: str, cte: str, text: str) -> bytes:
    body = text.encode() if cte == "8bit" else quopri.encodestring(text.encode()).rstrip(b"\n")
    return (f"Content-Type: {content_type}; charset=UTF-8\nContent-Transfer-Encoding: {cte}\n\n").encode() + body


def _multipart(kind: str, boundary: str, parts: list[bytes], preamble: bytes = b"") -> tuple[str, bytes]:
    """(Content-Type value, body) of a multipart entity."""
    delimiter = b"--" + boundary.encode()
    body = preamble + b"".join(delimiter + b"\n" + part + b"\n" for part in parts) + delimiter + b"--"
    return f'multipart/{kind}; boundary="{boundary}"', body


def make_message(run: str, index: int, size: str) -> tuple[str, bytes, bool]:
    """(envelope sender, wire bytes, needs BODY=8BITMIME) for one distinct guest and subject.

    "small": ~4 KB multipart/alternative, text/plain and text/html of the same German text, as
    Thunderbird sends it; half the parts 8bit UTF-8 (sent with BODY=8BITMIME), half
    quoted-printable. "200k": the same alternative inside multipart/mixed with a ~195 KB
    base64 JPEG-like attachment that never dedupes (quoted-printable text).
    The wire bytes are CRLF-terminated lines, dot-stuffed, without the final CRLF.CRLF."""
    rng = random.Random(f"{run}-{index}")
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    sender = f"guest{index}.{run}@example.org"
    motif = rng.choice(_MOTIFS)
    subject = f"Anfrage Tattoo-Termin #{index}: {motif} – Größe & Preis?"
    eight_bit = size == "small" and index % 2 == 0   # half 8bit UTF-8, half quoted-printable
    cte = "8bit" if eight_bit else "quoted-printable"
    text = _german_body(rng, name, motif, 1450)
    headers = [
        f"From: {email.utils.formataddr((name, sender), charset='utf-8')}",
        f"To: Inkwell Tattoo <{RCPT}>",
        f"Subject: {Header(subject, 'utf-8').encode()}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: <bench.{run}.{index}.{uuid.uuid4().hex[:8]}@example.org>",
        "MIME-Version: 1.0",
        "User-Agent: Mozilla/5.0 Thunderbird/115.10.1",
        "Content-Language: de-DE",
    ]
    tag = f"{index:06d}{rng.getrandbits(48):012x}"
    alternative = _multipart("alternative", f"------------alt{tag}",
                             [_part("text/plain; format=flowed", cte, text), _part("text/html", cte, _html(text))])
    if size == "small":
        content_type, body = alternative
    else:
        inner = f"Content-Type: {alternative[0]}\n\n".encode() + alternative[1]
        fixed = len("\n".join(headers)) + len(inner) + 500
        payload = max(1024, (SIZE_200K - fixed) * 57 // 78)   # base64 grows 4/3 plus CRLF per 76
        image = base64.encodebytes(_jpeg_like(rng, payload)).rstrip(b"\n")
        attachment = (f'Content-Type: image/jpeg; name="motiv-skizze-{index}.jpg"\n'
                      f'Content-Disposition: attachment; filename="motiv-skizze-{index}.jpg"\n'
                      "Content-Transfer-Encoding: base64\n\n").encode() + image
        content_type, body = _multipart("mixed", f"------------mix{tag}", [inner, attachment],
                                        b"This is a multi-part message in MIME format.\n")
    raw = "\n".join(headers + [f"Content-Type: {content_type}"]).encode() + b"\n\n" + body
    return sender, _crlf_dotstuff(raw), eight_bit


def unstuffed(wire: bytes) -> bytes:
    """A message as the acceptor stores it: the client's dot-stuffing taken off again."""
    return wire.replace(b"\r\n..", b"\r\n.")


def short_inquiry(run: str, index: int) -> bytes:
    """A short 8bit German inquiry (~2 KB) from guest `index` with its own Message-ID."""
    body_text = ("Hallo liebes Team,\r\n\r\nich würde mir gern ein Tattoo stechen lassen: eine "
                 "feine Linienzeichnung auf dem Unterarm, etwa 12 cm groß. Habt ihr im Dezember "
                 "noch Termine frei? Ich bin flexibel, am liebsten nachmittags.\r\n\r\n") * 8
    return (f"From: Gast {index} <{guest(run, index)}>\r\nTo: {RCPT}\r\n"
            f"Subject: Anfrage {run} #{index}\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + body_text + f"Viele Grüße\r\nGast {index}\r\n").encode()


def guest(run: str, index: int) -> str:
    """The envelope sender of `short_inquiry(run, index)`."""
    return f"gast{index}.{run}@example.org"


SEED_SENDER = "lena@example.org"


def seed_inquiry(index: int = 0) -> bytes:
    """Lena's inquiry (index 0), or guest `index`'s: the conversations the outbound benchmark's
    replies answer."""
    sender = SEED_SENDER if index == 0 else f"guest{index}@example.org"
    return (f"From: Lena <{sender}>\r\nTo: {RCPT}\r\nSubject: Tattoo Anfrage\r\n"
            f"Message-ID: <seed{index or ''}@example.org>\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n\r\n"
            "Hallo!\r\n").encode()


def seed_sender(index: int) -> str:
    return SEED_SENDER if index == 0 else f"guest{index}@example.org"
