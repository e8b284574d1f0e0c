"""A form definition: fields in the studio's order, checked before it is saved.

The definition is stored as JSON (form_version.definition_json) and parsed into these frozen
dataclasses whenever it is read. Checking is strict and names the first problem, because the
owner edits it through the API and a vague 422 would leave them guessing. The guest's email is
always a field (the conversation goes on by email) and the consent checkbox is not a field at
all: it is always there, outside the studio's control, linking the studio's privacy page.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

LANGUAGES = ("de", "en")
MAX_FIELDS = 50
MAX_OPTIONS = 100
MAX_LABEL = 200
MAX_HELP = 1000
# Upload limits a studio may choose at most: more would let one form post fill the disk.
MAX_FILES_LIMIT = 10
MAX_FILE_SIZE_LIMIT = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 5
DEFAULT_MAX_FILE_SIZE = 5 * 1024 * 1024

TYPES = ("short_text", "long_text", "email", "name", "phone", "select", "multi_select", "checkbox",
         "date", "number", "files")
WITH_OPTIONS = ("select", "multi_select")
# Field keys become form input names and JSON keys; the issued fields (gateway/forms/issue.py)
# start with an underscore, so a studio's key can never collide with them.
_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")


class InvalidDefinition(ValueError):
    """The definition cannot be saved; the message names the problem (answered 422)."""


@dataclass(frozen=True)
class Option:
    value: str
    label: dict[str, str]


@dataclass(frozen=True)
class Field:
    key: str
    type: str
    required: bool = False
    label: dict[str, str] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    max_files: int = DEFAULT_MAX_FILES
    max_size: int = DEFAULT_MAX_FILE_SIZE
    min: float | None = None
    max: float | None = None

    def label_in(self, language: str) -> str:
        return text_in(self.label, language) or self.key

    def help_in(self, language: str) -> str:
        return text_in(self.help, language)

    def option_label(self, value: str, language: str) -> str:
        for option in self.options:
            if option.value == value:
                return text_in(option.label, language) or option.value
        return value


@dataclass(frozen=True)
class Definition:
    fields: tuple[Field, ...]

    @property
    def email_key(self) -> str:
        return next(f.key for f in self.fields if f.type == "email")

    def to_json(self) -> dict[str, Any]:
        out = []
        for f in self.fields:
            item: dict[str, Any] = {"key": f.key, "type": f.type, "required": f.required, "label": f.label}
            if f.help:
                item["help"] = f.help
            if f.type in WITH_OPTIONS:
                item["options"] = [{"value": o.value, "label": o.label} for o in f.options]
            if f.type == "files":
                item["max_files"], item["max_size"] = f.max_files, f.max_size
            if f.type == "number":
                item.update({k: v for k, v in (("min", f.min), ("max", f.max)) if v is not None})
            out.append(item)
        return {"fields": out}


def text_in(texts: dict[str, str], language: str) -> str:
    """The text in `language`, else in the other one: a studio may write only German."""
    return texts.get(language) or next((texts[lang] for lang in LANGUAGES if texts.get(lang)), "")


def parse_definition(data: Any) -> Definition:
    """A definition from its JSON form; InvalidDefinition naming the first problem."""
    if not isinstance(data, dict) or not isinstance(data.get("fields"), list):
        raise InvalidDefinition("the definition must be an object with a list `fields`")
    unknown = set(data) - {"fields"}
    if unknown:
        raise InvalidDefinition(f"unknown key {sorted(unknown)[0]!r} in the definition")
    raw_fields = data["fields"]
    if len(raw_fields) > MAX_FIELDS:
        raise InvalidDefinition(f"a form has at most {MAX_FIELDS} fields, this one has {len(raw_fields)}")
    fields: list[Field] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_fields):
        parsed = _field(raw, index)
        if parsed.key in seen:
            raise InvalidDefinition(f"fields[{index}]: duplicate key {parsed.key!r}")
        seen.add(parsed.key)
        fields.append(parsed)
    emails = [f for f in fields if f.type == "email"]
    if not emails:
        raise InvalidDefinition("the form needs a field of type `email`: the guest's answer comes by email")
    if len(emails) > 1:
        raise InvalidDefinition("the form has one field of type `email`, the guest's address")
    if not emails[0].required:
        raise InvalidDefinition(f"the email field {emails[0].key!r} must be required")
    return Definition(tuple(fields))


_FIELD_KEYS = {"key", "type", "required", "label", "help", "options", "max_files", "max_size", "min", "max"}


def _field(raw: Any, index: int) -> Field:
    where = f"fields[{index}]"
    if not isinstance(raw, dict):
        raise InvalidDefinition(f"{where} must be an object")
    unknown = set(raw) - _FIELD_KEYS
    if unknown:
        raise InvalidDefinition(f"{where}: unknown key {sorted(unknown)[0]!r}")
    key, kind = raw.get("key"), raw.get("type")
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidDefinition(f"{where}: key must be 1-40 lower-case letters, digits or _ starting with a letter")
    where = f"{where} ({key})"
    if kind not in TYPES:
        raise InvalidDefinition(f"{where}: unknown type {kind!r}; known are {', '.join(TYPES)}")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise InvalidDefinition(f"{where}: required must be true or false")
    label = _texts(raw.get("label"), f"{where}.label", MAX_LABEL)
    if not any(label.values()):
        raise InvalidDefinition(f"{where}: a label in German or English is needed")
    options: list[Option] = []
    if kind in WITH_OPTIONS:
        raw_options = raw.get("options")
        if not isinstance(raw_options, list) or not raw_options or len(raw_options) > MAX_OPTIONS:
            raise InvalidDefinition(f"{where}: a {kind} needs 1-{MAX_OPTIONS} options")
        values: set[str] = set()
        for n, option in enumerate(raw_options):
            if not isinstance(option, dict) or not isinstance(option.get("value"), str) \
                    or not 0 < len(option["value"]) <= 100:
                raise InvalidDefinition(f"{where}.options[{n}] needs a value of 1-100 characters")
            if option["value"] in values:
                raise InvalidDefinition(f"{where}.options[{n}]: duplicate value {option['value']!r}")
            values.add(option["value"])
            options.append(Option(option["value"], _texts(option.get("label"), f"{where}.options[{n}].label",
                                                          MAX_LABEL)))
    elif "options" in raw:
        raise InvalidDefinition(f"{where}: only select and multi_select have options")
    max_files = _bounded_int(raw.get("max_files", DEFAULT_MAX_FILES), 1, MAX_FILES_LIMIT, f"{where}.max_files")
    max_size = _bounded_int(raw.get("max_size", DEFAULT_MAX_FILE_SIZE), 1024, MAX_FILE_SIZE_LIMIT,
                            f"{where}.max_size")
    low, high = _number(raw.get("min"), f"{where}.min"), _number(raw.get("max"), f"{where}.max")
    if low is not None and high is not None and low > high:
        raise InvalidDefinition(f"{where}: min is above max")
    return Field(key=key, type=kind, required=required, label=label,
                 help=_texts(raw.get("help"), f"{where}.help", MAX_HELP), options=tuple(options),
                 max_files=max_files, max_size=max_size, min=low, max=high)


def _texts(raw: Any, where: str, limit: int) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, str):  # one text for both languages
        raw = {"de": raw, "en": raw}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InvalidDefinition(f"{where} must be an object of texts by language (de, en)")
    unknown = set(raw) - set(LANGUAGES)
    if unknown:
        raise InvalidDefinition(f"{where}: unknown language {sorted(unknown)[0]!r}; known are de, en")
    if any(len(v) > limit for v in raw.values()):
        raise InvalidDefinition(f"{where}: at most {limit} characters")
    return {lang: raw[lang].strip() for lang in LANGUAGES if raw.get(lang, "").strip()}


def _bounded_int(value: Any, low: int, high: int, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidDefinition(f"{where} must be a whole number from {low} to {high}")
    return value


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidDefinition(f"{where} must be a number")
    return float(value)


def _t(de: str, en: str) -> dict[str, str]:
    return {"de": de, "en": en}


# What a studio that never edited its form offers (issue 17): name, email, what the guest would
# like, placement, size, reference images, preferred dates.
DEFAULT = Definition((
    Field("name", "name", True, _t("Name", "Name")),
    Field("email", "email", True, _t("E-Mail", "Email")),
    Field("idea", "long_text", True, _t("Was möchtest du?", "What would you like?"),
          _t("Motiv, Stil, Farbe: alles, was uns hilft.", "Motif, style, colour: anything that helps us.")),
    Field("placement", "short_text", False, _t("Körperstelle", "Placement"),
          _t("Zum Beispiel Unterarm innen.", "For example inner forearm.")),
    Field("size", "number", False, _t("Größe in cm", "Size in cm"), min=1, max=300),
    Field("images", "files", False, _t("Referenzbilder", "Reference images"),
          _t("Bis zu 5 Bilder, je höchstens 5 MB.", "Up to 5 images, at most 5 MB each.")),
    Field("dates", "short_text", False, _t("Wunschtermine", "Preferred dates"),
          _t("Wann passt es dir?", "When would suit you?")),
))
