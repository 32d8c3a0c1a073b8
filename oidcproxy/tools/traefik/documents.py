"""
Reading the input: Kubernetes objects from YAML (PyYAML's C{safe_load_all}
only; nothing outside this tool imports it, so the package and the twistd
plugin never load it), and Traefik options read case-insensitively, with a
warning for each value of the wrong type.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

import attr
import yaml

SECRET_URN = "urn:k8s:secret:"

MIDDLEWARE_KINDS = ("Middleware",)
INGRESS_KINDS = ("IngressRoute",)

Warn = Callable[[str, str], None]
"""Records that something at C{where} (first argument) was not carried over exactly."""


class TraefikImportError(Exception):
    """
    The input cannot be imported at all (unreadable, invalid YAML, no OIDC
    middleware, or none of the name asked for): L{main} exits 1 with this message.
    """


@attr.s(frozen=True, auto_attribs=True)
class Document:
    """One Kubernetes object from the input."""

    source: str
    """Where it came from: C{FILE} or C{FILE#N} (the N-th document, from 1)."""
    data: Dict[str, Any]

    @property
    def kind(self) -> str:
        kind = self.data.get("kind")
        return kind if isinstance(kind, str) else ""

    @property
    def name(self) -> str:
        meta = self.data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        return name if isinstance(name, str) else ""

    @property
    def namespace(self) -> str:
        meta = self.data.get("metadata")
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        return ns if isinstance(ns, str) and ns else "default"

    @property
    def label(self) -> str:
        """C{Kind namespace/name (source)}, for messages."""
        return f"{self.kind} {self.namespace}/{self.name} ({self.source})"

    def oidc_options(self) -> Any:
        """C{spec.plugin.oidc} of a Traefik Hub OIDC C{Middleware}; None for other objects."""
        if self.kind not in MIDDLEWARE_KINDS:
            return None
        plugin = dig(self.data, "spec", "plugin")
        return lower_get(plugin, "oidc") if isinstance(plugin, dict) else None


def load_documents(text: str, source: str) -> List[Document]:
    """
    The Kubernetes objects of a (multi-document) YAML text. Empty documents
    are skipped; a C{kind: List} contributes its C{items}.

    @raise TraefikImportError: the text is not valid YAML, or a document is
        not a mapping.
    """
    try:
        parsed = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise TraefikImportError(f"{source}: invalid YAML: {one_line(str(e))}") from None
    out: List[Document] = []
    for number, data in enumerate(parsed, 1):
        where = source if len(parsed) == 1 else f"{source}#{number}"
        if data is None:
            continue
        if not isinstance(data, dict):
            raise TraefikImportError(f"{where}: expected a Kubernetes object (a mapping), "
                                     f"got {yaml_type(data)}")
        if data.get("kind") == "List" and isinstance(data.get("items"), list):
            for i, item in enumerate(data["items"]):
                if isinstance(item, dict):
                    out.append(Document(f"{where} items[{i}]", item))
            continue
        out.append(Document(where, data))
    return out


def secret_value(documents: List[Document], namespace: str, name: str, key: str) -> Optional[str]:
    """A value from a C{Secret} document of the input (C{stringData} or base64 C{data})."""
    for d in documents:
        if d.kind != "Secret" or d.name != name or d.namespace not in (namespace, "default"):
            continue
        plain = d.data.get("stringData")
        if isinstance(plain, dict) and isinstance(plain.get(key), (str, int)):
            return str(plain[key])
        encoded = d.data.get("data")
        if isinstance(encoded, dict) and isinstance(encoded.get(key), str):
            try:
                return base64.b64decode(encoded[key], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


class Options:
    """
    A mapping of Traefik options: case-insensitive lookups that remember
    which keys were read, so the rest can be reported as unknown. The typed
    getters warn about a value of the wrong type and return None.
    """

    def __init__(self, data: Mapping[Any, Any], where: str, warn: Warn) -> None:
        self.data = data
        self.where = where
        self.warn = warn
        self._keys = {str(k).lower(): k for k in data}
        self._used: Set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.where}.{name}"

    def get(self, name: str) -> Any:
        """The value of C{name} (None when absent or null)."""
        self._used.add(name.lower())
        key = self._keys.get(name.lower())
        return None if key is None else self.data[key]

    def unused(self) -> List[str]:
        return [str(k) for k in self.data if str(k).lower() not in self._used]

    def warn_unused(self) -> None:
        """Warn about every option no getter asked for."""
        for key in self.unused():
            self.warn(self.path(key), "not an option of Traefik Hub's OIDC middleware; not carried over")

    def string(self, name: str) -> Optional[str]:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.warn(self.path(name), f"expected a string, got {yaml_type(value)}; not carried over")
            return None
        return str(value)

    def boolean(self, name: str) -> Optional[bool]:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self.warn(self.path(name), f"expected true or false, got {yaml_type(value)}; "
                      "not carried over")
            return None
        return value

    def integer(self, name: str) -> Optional[int]:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.warn(self.path(name), f"expected a number, got {yaml_type(value)}; not carried over")
            return None
        return value

    def table(self, name: str) -> Optional[Options]:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.warn(self.path(name), f"expected a mapping, got {yaml_type(value)}; not carried over")
            return None
        return Options(value, self.path(name), self.warn)

    def string_map(self, name: str) -> Optional[Dict[str, str]]:
        table = self.table(name)
        if table is None:
            return None
        out = {}
        for key, value in table.data.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value is None:
                if value is None:
                    value = ""
                else:
                    self.warn(table.path(str(key)), f"expected a string, got {yaml_type(value)}; "
                              "not carried over")
                    continue
            out[str(key)] = str(value)
        return out


def yaml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__


def one_line(text: str) -> str:
    return " ".join(text.split())


def printable(text: str) -> str:
    """C{text} with each non-printable character (a newline...) escaped: one line, as written."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def lower_get(data: Mapping[Any, Any], name: str) -> Any:
    for key, value in data.items():
        if str(key).lower() == name:
            return value
    return None


def mapping(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def sequence(value: Any) -> List[Any]:
    return value if isinstance(value, list) else []


def dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def secret_urn(value: str) -> Optional[Tuple[str, str]]:
    """C{(name, key)} of C{urn:k8s:secret:NAME:KEY}, or None."""
    if not value.startswith(SECRET_URN):
        return None
    name, sep, key = value[len(SECRET_URN):].partition(":")
    if not sep or not name or not key or "/" in name + key:
        return None
    return name, key
