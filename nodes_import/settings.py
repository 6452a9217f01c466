"""How a configuration key is declared on a dataclass field, and what is derived from it.

``config.py`` declares each key once, on the field that holds its value::

    batch_size: int = setting("node.import.batch.size", 35_000, doc="Rows per batch ...")

The field keeps its ``Setting`` in ``dataclasses.field(metadata=...)``. A field whose type
is a dataclass is a section (``Config.imports``, ``ImportConfig.retry``). This module holds
the generic parts that read the declarations back: the value kinds and their coercion from
YAML and from environment text, the per-key checks, walking the sections, building the
dataclasses from flat validated values, and the reference tables. It knows no key and reads
no file and no environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeAlias, get_type_hints

from nodes_import.errors import ConfigError

# A key's kind: int, float, bool or str (the Python type), or one of these names.
OPTIONAL_STR = "str?"  # a string or null
STR_LIST = "list[str]"  # a list of strings; in the environment separated by os.pathsep
MAPPING = "mapping"  # a free-form mapping (librdkafka properties); a later layer merges into it
Kind: TypeAlias = type | str

# How the reference names the kinds whose error name is terse.
KIND_TEXT = {OPTIONAL_STR: "str or null", STR_LIST: "list of str"}

# The dataclasses.field metadata entry that holds a field's Setting.
METADATA_KEY = "nodes_import.setting"

# Environment text read as a bool.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

# (validated key value, environment) -> the field's value
Resolver = Callable[[Any, Mapping[str, str]], Any]


@dataclass(frozen=True)
class Setting:
    """One configuration key: its name, default, kind, meaning and checks.

    ``default`` is the key's value when nothing sets it (what ``KEYS`` and ``config.yaml``
    show). Every ``int`` key must be positive; ``choices``, ``minimum`` and ``maximum`` add
    checks. ``resolve`` turns the validated value into the field's value when the kind's
    plain conversion (list -> tuple, mapping -> dict, empty optional string -> None) is not
    enough, e.g. a null that means "a place found at start-up". ``secret`` keeps the field
    out of ``repr``.
    """

    key: str
    default: Any
    kind: Kind
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    resolve: Resolver | None = None
    secret: bool = False

    def coerce(self, value: Any, *, from_text: bool) -> Any:
        """A value from YAML (or, ``from_text``, from environment text) -> the key's kind."""
        return coerce(self.key, self.kind, value, from_text=from_text)

    def check(self, value: Any) -> None:
        """Raise ``ConfigError`` naming the key when a coerced value is out of range."""
        key = self.key
        if self.kind is int and self.minimum is None and value <= 0:  # else: the minimum
            raise ConfigError(f"{key}: must be positive, got {value}")
        low, high = self.minimum, self.maximum
        if low is not None and high is not None and not low <= value <= high:
            raise ConfigError(f"{key}: must be within {low}..{high}, got {value}")
        if low is not None and value < low:
            raise ConfigError(f"{key}: must be at least {low}, got {value}")
        if high is not None and value > high:
            raise ConfigError(f"{key}: must be at most {high}, got {value}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{key}: one of {', '.join(self.choices)}, got {value!r}")

    def to_field(self, value: Any, environ: Mapping[str, str]) -> Any:
        """A validated key value -> the value its dataclass field holds."""
        if self.resolve is not None:
            return self.resolve(value, environ)
        return _field_value(self.kind, value)

    def type_text(self) -> str:
        """The kind and its checks, for the reference table (``int > 0``, ``float 0..1``)."""
        if self.choices:
            return " | ".join(f"`{choice}`" for choice in self.choices)
        text = KIND_TEXT.get(kind_name(self.kind), kind_name(self.kind))
        if self.kind is int and self.minimum is None:
            text += " > 0"
        if self.minimum is not None and self.maximum is not None:
            return f"{text} {self.minimum}..{self.maximum}"
        if self.minimum is not None:
            text += f" ≥ {self.minimum}"
        if self.maximum is not None:
            text += f", ≤ {self.maximum}"
        return text

    def default_text(self) -> str:
        """The default as YAML writes it (``null``, ``true``, ``[]``, ``35000``)."""
        if isinstance(self.default, str):
            return f"`{self.default}`"
        return f"`{json.dumps(self.default)}`"


@dataclass(frozen=True)
class Retired:
    """A key of an earlier design that is refused rather than silently ignored."""

    replacement: str  # the key to set instead
    why: str

    def message(self, key: str) -> str:
        """Why ``key`` is refused and what to set instead."""
        return f"{key} is not supported: {self.why}; set {self.replacement} instead"


def setting(key: str, default: Any, *, doc: str, kind: Kind | None = None,
            choices: tuple[str, ...] = (), minimum: float | None = None,
            maximum: float | None = None, resolve: Resolver | None = None,
            secret: bool = False, field_default: Any = MISSING) -> Any:
    """A dataclass field declaring the configuration key ``key``.

    The kind follows from the default (None: an optional string, [] a list of strings, {} a
    mapping) unless given. The field's own default (for a dataclass built directly, as tests
    do) is the key's default converted as ``build()`` would, or ``field_default``.
    """
    spec = Setting(key, default, kind or kind_of(default), " ".join(doc.split()), choices,
                   minimum, maximum, resolve, secret)
    metadata = {METADATA_KEY: spec}
    if field_default is not MISSING:
        return field(default=field_default, repr=not secret, metadata=metadata)
    if spec.kind == MAPPING:
        return field(default_factory=lambda: dict(default), repr=not secret, metadata=metadata)
    return field(default=_field_value(spec.kind, default), repr=not secret, metadata=metadata)


def setting_of(metadata: Mapping[str, Any]) -> Setting | None:
    """The Setting a dataclass field declares, if it declares one."""
    spec = metadata.get(METADATA_KEY)
    return spec if isinstance(spec, Setting) else None


def kind_of(default: Any) -> Kind:
    """The kind a default implies."""
    if default is None:
        return OPTIONAL_STR
    if isinstance(default, list):
        return STR_LIST
    if isinstance(default, Mapping):
        return MAPPING
    for kind in (bool, int, float, str):  # bool first: a bool is an int
        if isinstance(default, kind):
            return kind
    raise TypeError(f"no configuration kind for a default of {default!r}")


def kind_name(kind: Kind) -> str:
    """``int``, ``str?``, ``list[str]``...: how errors name a kind."""
    return kind if isinstance(kind, str) else kind.__name__


def _field_value(kind: Kind, value: Any) -> Any:
    if kind == STR_LIST:
        return tuple(value)
    if kind == MAPPING:
        return dict(value)
    if kind == OPTIONAL_STR:
        return value or None
    return value


def merge_mapping(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys set over it; a key ``override`` sets to None goes."""
    merged = {**base, **override}
    return {key: value for key, value in merged.items()
            if not (value is None and key in override)}


def coerce(key: str, kind: Kind, value: Any, *, from_text: bool) -> Any:
    """``value`` as ``kind``, or a ``ConfigError`` naming ``key``.

    ``from_text``: the value is environment text, so ``"20_000"`` is an int, ``"off"`` a
    bool, ``"a:b"`` a list and ``"{k: v}"`` (YAML) a mapping.
    """
    if value is None:
        if kind == OPTIONAL_STR:
            return None
        raise ConfigError(f"{key}: a value is required")
    try:
        return _coerce(kind, value, from_text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: expected {kind_name(kind)}, got {value!r}") from exc


def _coerce(kind: Kind, value: Any, from_text: bool) -> Any:
    text = value if from_text and isinstance(value, str) else None
    if kind == OPTIONAL_STR or kind is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if kind is bool:
        if text is not None and text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind is int:
        if text is not None:
            return int(text.replace("_", ""))
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if kind is float:
        if text is not None:
            return float(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if kind == STR_LIST:
        if text is not None and text.lstrip().startswith("["):  # YAML: items may hold ':'
            import yaml  # only for such a value: most commands start without one

            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(str(exc)) from exc
        elif text is not None:
            return [part for part in text.split(os.pathsep) if part]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError
        return list(value)
    if kind == MAPPING:
        if text is not None:
            import yaml

            try:
                value = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise ValueError(str(exc)) from exc
        if not isinstance(value, Mapping):
            raise TypeError
        return {str(k): v for k, v in value.items()}
    raise AssertionError(f"unhandled config kind {kind!r}")


# -- sections: the dataclasses that hold the settings -----------------------------------


def sections(cls: type[Any]) -> Iterator[tuple[str, type[Any]]]:
    """(attribute, dataclass) of each section field of the dataclass ``cls``, in order."""
    hints = get_type_hints(cls)
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        if setting_of(item.metadata) is None and isinstance(kind, type) \
                and dataclasses.is_dataclass(kind):
            yield item.name, kind


def walk(cls: type[Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Depth first below ``cls``: (attribute path, Setting) per key and (path, dataclass)
    per section, a section before its keys."""
    nested = dict(sections(cls))
    for item in dataclasses.fields(cls):
        spec = setting_of(item.metadata)
        if spec is not None:
            yield (*path, item.name), spec
        elif item.name in nested:
            yield (*path, item.name), nested[item.name]
            yield from walk(nested[item.name], (*path, item.name))


def build_dataclass(cls: type[Any], values: Mapping[str, Any], environ: Mapping[str, str],
                    given: Mapping[str, Any] | None = None) -> Any:
    """The dataclass ``cls`` from flat validated key values: each setting field from its
    key, each section built the same way, the other fields from ``given``."""
    nested = dict(sections(cls))
    arguments = dict(given or {})
    for item in dataclasses.fields(cls):
        spec = setting_of(item.metadata)
        if spec is not None:
            arguments[item.name] = spec.to_field(values[spec.key], environ)
        elif item.name in nested:
            arguments[item.name] = build_dataclass(nested[item.name], values, environ)
    return cls(**arguments)


def reference_tables(root: type[Any], env_text: Callable[[str], str]) -> list[str]:
    """Markdown lines: per section below ``root`` a heading (``## Import (`cfg.imports`)``),
    the first paragraph of its docstring and a table of its keys. ``env_text(key)`` fills
    the environment column."""
    lines: list[str] = []
    for path, item in walk(root):
        if isinstance(item, Setting):
            doc = item.doc + (" Never logged or shown: keep secrets in the environment."
                              if item.secret else "")
            cells = [f"`{item.key}`", item.type_text(), item.default_text(),
                     env_text(item.key), doc]
            lines.append(table_row(cells))
            continue
        title = item.__name__.removesuffix("Config")
        summary = " ".join((item.__doc__ or "").split("\n\n")[0].split()).replace("``", "`")
        lines += ["", f"## {title} (`cfg.{'.'.join(path)}`)", "", summary, "",
                  table_row(["key", "type", "default", "environment variable", "what it does"]),
                  table_row(["---"] * 5)]
    return lines


def table_row(cells: list[str]) -> str:
    """A markdown table row; a ``|`` inside a cell is escaped."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
