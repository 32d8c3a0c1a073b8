"""
The page templates: XHTML files for L{twisted.web.template}, built in
(shipped beside this module) or replaced one by one from C{[pages]
templates_dir}, checked when loaded (well-formed, the slots each page must
keep, no slot or renderer the page does not fill), and flattened
synchronously.
"""

from __future__ import annotations

import os
from typing import Any, Dict, FrozenSet, List, Optional
from xml.parsers import expat

from twisted.web.template import Element, Tag, XMLString, flattenString, renderer

__all__ = ["BUILT_IN", "COMMON_SLOTS", "PAGES", "TemplateProblem", "check_template",
           "load_templates", "flatten"]

BUILT_IN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
"""The directory of the built-in templates (package data)."""

_T = "http://twistedmatrix.com/ns/twisted.web.template/0.1"

COMMON_SLOTS: FrozenSet[str] = frozenset({
    "lang", "title", "style", "logo", "organisation", "heading", "support", "footer"})
"""The slots every page fills: a template may use any of them."""

PAGES: Dict[str, Dict[str, FrozenSet[str]]] = {
    # page: {"required": slots it must keep, "optional": its other slots}
    "error": {"required": frozenset({"heading", "message"}), "optional": frozenset()},
    "forbidden": {"required": frozenset({"heading", "signed_in_as", "sign_out", "switch_account"}),
                  "optional": frozenset({"message", "route", "back"})},
    "login_failed": {"required": frozenset({"heading", "message", "try_again"}),
                     "optional": frozenset({"detail"})},
    "unavailable": {"required": frozenset({"heading", "message", "refresh"}),
                    "optional": frozenset({"retry_note", "retry"})},
    "logout": {"required": frozenset({"heading", "form", "script"}),
               "optional": frozenset({"message", "signed_in_as"})},
    "signed_out": {"required": frozenset({"heading", "sign_in"}),
                   "optional": frozenset({"message"})},
    "sign_in": {"required": frozenset({"heading", "sign_in"}),
                "optional": frozenset({"message"})},
    "step_up": {"required": frozenset({"heading", "message", "sign_in"}),
                "optional": frozenset({"retry_note", "back"})},
}
"""Each page's slots (besides L{COMMON_SLOTS}); its template is C{<page>.xhtml}."""


class TemplateProblem(ValueError):
    """A template that cannot be used; the message names the file, line and what is wrong."""


def check_template(page: str, path: str, text: bytes) -> None:
    """
    Refuse a template of C{page} that is not well-formed XML, lacks a slot
    the page must keep, uses a slot the page does not fill or a renderer
    other than C{page}, or has no element rendered by C{page}.

    @raise TemplateProblem: naming C{path}, the line and the slot.
    """
    slots = PAGES[page]
    known = COMMON_SLOTS | slots["required"] | slots["optional"]
    found: Dict[str, int] = {}
    problems: List[str] = []
    rendered = [False]
    parser = expat.ParserCreate(namespace_separator=" ")

    def start(name: str, attributes: Dict[str, str]) -> None:
        line = parser.CurrentLineNumber
        if name == f"{_T} slot":
            slot = attributes.get("name", "")
            found.setdefault(slot, line)
            if slot not in known:
                problems.append(f"line {line}: the {page} page has no slot {slot!r} "
                                f"(its slots: {', '.join(sorted(known))})")
        elif name.startswith(_T + " ") and name not in (f"{_T} attr", f"{_T} transparent"):
            problems.append(f"line {line}: <{name.split(' ', 1)[1]}> is not supported here")
        for key, value in attributes.items():
            if key == f"{_T} render":
                if value != "page":
                    problems.append(f"line {line}: the renderer {value!r} does not exist "
                                    "(only t:render=\"page\", which fills the slots)")
                else:
                    rendered[0] = True

    parser.StartElementHandler = start
    try:
        parser.Parse(text, True)
    except expat.ExpatError as e:
        raise TemplateProblem(f"{path}: line {e.lineno}, column {e.offset + 1}: not well-formed "
                              f"XML: {expat.ErrorString(e.code)}") from None
    if not rendered[0]:
        problems.append('no element has t:render="page" (put it on <html>)')
    for slot in sorted(slots["required"] - set(found)):
        problems.append(f"the slot {slot!r} is missing (the {page} page must keep it)")
    if problems:
        raise TemplateProblem(f"{path}: " + "; ".join(problems))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TemplateProblem(f"{path}: cannot read it: {e.strerror or e}") from None


def load_templates(templates_dir: Optional[str]) -> Dict[str, Any]:
    """
    A loader per page: the file of C{templates_dir} where there is one
    (checked), else the built-in one.

    @raise TemplateProblem: a replacement cannot be used.
    """
    loaders: Dict[str, Any] = {}
    for page in PAGES:
        name = page + ".xhtml"
        path = os.path.join(templates_dir, name) if templates_dir else None
        if path is None or not os.path.exists(path):
            path = os.path.join(BUILT_IN, name)
        text = _read(path)
        check_template(page, path, text)
        loaders[page] = XMLString(text)
    return loaders


class _Page(Element):
    """One page: its template, with every slot filled by the C{page} renderer."""

    def __init__(self, loader: Any, slots: Dict[str, Any]) -> None:
        super().__init__(loader)
        self._slots = slots

    @renderer
    def page(self, request: Any, tag: Tag) -> Tag:
        return tag.fillSlots(**self._slots)


def flatten(loader: Any, slots: Dict[str, Any]) -> bytes:
    """
    The page as bytes (with its doctype). The template engine escapes every
    value; nothing of it waits, so the result is there at once.
    """
    out: List[Any] = []
    flattenString(None, _Page(loader, slots)).addBoth(out.append)
    if not out:
        raise RuntimeError("a page's rendering did not finish at once")
    result = out[0]
    if not isinstance(result, bytes):
        result.raiseException()
    return b"<!DOCTYPE html>\n" + result
