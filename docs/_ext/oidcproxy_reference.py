"""
The reference pages' generators: the configuration keys as the parser
declares them (L{oidcproxy.config.keys}) and the command-line options of the
twistd plugin's C{Options} class, so the reference cannot drift from either.

Directives:

- C{.. oidcproxy-config-reference::} every table and key, each with an
  anchor (C{config-session-lifetime}) that the C{:key:} role links to
  (C{:key:`session.lifetime`}).
- C{.. oidcproxy-cli-reference::} every option of C{twistd oidcproxy}, each
  an C{.. option::} that C{:option:`twistd oidcproxy --config`} links to.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

from docutils import nodes
from sphinx.addnodes import desc_signature
from sphinx.application import Sphinx
from sphinx.domains.std import GenericObject
from sphinx.util.docutils import SphinxDirective

from oidcproxy.config.keys import Key, config_keys, tables, toml_value
from oidcproxy.tap import Options
from oidcproxy.tools.traefik.names import HUB_NAMES

PROGRAM = "twistd oidcproxy"


def _indent(text: str, by: str = "   ") -> List[str]:
    return [by + line if line else "" for line in text.splitlines()]


def _heading(title: str, underline: str) -> List[str]:
    return [title, underline * len(title), ""]


def _default(key: Key) -> str:
    if key.inherits is not None:
        return f"as :key:`{key.inherits}`"
    if key.required:
        return "none: required"
    literal = key.default_toml()
    if literal is not None:
        return f"``{literal}``"
    if key.default_text is not None:
        text = key.default_text
        return f"``{text}``" if text.startswith('"') else text
    return "not set"


def _kind(key: Key) -> str:
    if key.kind == "secret":
        return "secret (a string, or ``{ env = ... }``, ``{ file = ... }``, ``{ credential = ... }``)"
    if key.kind == "list of secrets":
        return "list of secrets"
    if key.free:
        return "table"
    return key.kind


def config_key_lines(key: Key) -> List[str]:
    """One key (or free-form table) as an C{.. config::} object description."""
    lines = [f".. config:: {key.path}", ""]
    fields = [(":Type:", _kind(key))]
    if key.free and key.default is not None:
        fields.append((":Default:", "see below"))
    elif not key.free:
        fields.append((":Default:", _default(key)))
    if key.allowed:
        fields.append((":Allowed:", key.allowed))
    hub = HUB_NAMES.get(key.path)
    if hub is not None:
        fields.append((":Traefik Hub:", f"``{hub}``"))
    lines += [f"   {name} {value}" for name, value in fields]
    lines += [""] + _indent(key.doc) + [""]
    if key.free and key.default is not None:
        lines += ["   The default:", "", "   .. code-block:: toml", ""]
        for name, value in key.default:
            shown = value[0] if len(value) == 1 else list(value)
            lines.append(f"      {name} = {toml_value('', shown)}")
        lines.append("")
    return lines


def config_reference_lines(keys: Optional[List[Key]] = None) -> List[str]:
    """The whole configuration reference, in reStructuredText."""
    lines: List[str] = []
    for head, members in tables(keys if keys is not None else config_keys()):
        if head is None:
            lines += _heading("Top level", "-")
            lines += ["The keys before the first table.", ""]
        else:
            title = f"[[{head.path}]]" if head.kind == "array of tables" else f"[{head.path}]"
            lines += _heading(title, "-")
            if head.free:
                lines += config_key_lines(head)
            else:
                lines += [f".. config:: {head.path}", "", "   :Type: " + head.kind, ""]
                lines += _indent(head.doc) + [""]
        for key in members:
            lines += config_key_lines(key)
    return lines


_LITERAL = re.compile(r"`([^`]+)`")


def _help(text: str) -> str:
    """A help text as reStructuredText: its `name` quotes as literals, one paragraph."""
    return _LITERAL.sub(r"``\1``", " ".join(text.split()))


def cli_options() -> List[Dict[str, Any]]:
    """Every option of the plugin's C{Options}: names, argument, default and help."""
    options = Options()
    shorts: Dict[str, str] = {}
    for short, long in options.synonyms.items():
        if short != long and len(short) == 1:
            shorts[long] = short
    out = []
    seen = set()
    for spec in options.longOpt:
        name = spec.rstrip("=")
        if name in seen:
            continue
        seen.add(name)
        out.append({
            "name": name,
            "short": shorts.get(name),
            "argument": name.upper().replace("-", "_") if spec.endswith("=") else None,
            "default": options.defaults.get(name) if spec.endswith("=") else None,
            "help": _help(options.docs.get(name, "")),
        })
    return out


def cli_reference_lines() -> List[str]:
    """The options of C{twistd oidcproxy} as C{.. option::} descriptions."""
    lines = [f".. program:: {PROGRAM}", ""]
    for option in cli_options():
        names = []
        argument = option["argument"]
        if option["short"]:
            names.append(f"-{option['short']}" + (f" <{argument}>" if argument else ""))
        names.append(f"--{option['name']}" + (f"=<{argument}>" if argument else ""))
        lines += [f".. option:: {', '.join(names)}", ""]
        lines += _indent(option["help"]) + [""]
        if argument:
            default = option["default"]
            lines += [f"   Default: {'``' + str(default) + '``' if default is not None else 'none'}.", ""]
    return lines


class ConfigKey(GenericObject):
    """C{.. config:: session.lifetime}: a key, its anchor C{config-session-lifetime}."""

    indextemplate = "pair: %s; configuration key"

    def add_target_and_index(self, name: str, sig: str, signode: desc_signature) -> None:
        node_id = "config-" + re.sub(r"[^a-z0-9]+", "-", name.lower())
        signode["ids"].append(node_id)
        self.state.document.note_explicit_target(signode)
        self.indexnode["entries"].append(("pair", f"{name}; configuration key", node_id, "", None))
        self.env.domains.standard_domain.note_object(self.objtype, name, node_id, location=signode)


class ConfigReference(SphinxDirective):
    """C{.. oidcproxy-config-reference::}: every table and key of the configuration."""

    has_content = False

    def run(self) -> List[nodes.Node]:
        return self.parse_text_to_nodes("\n".join(config_reference_lines()),
                                        allow_section_headings=True)


class CLIReference(SphinxDirective):
    """C{.. oidcproxy-cli-reference::}: every option of C{twistd oidcproxy}."""

    has_content = False

    def run(self) -> List[nodes.Node]:
        return self.parse_text_to_nodes("\n".join(cli_reference_lines()))


def setup(app: Sphinx) -> Dict[str, Any]:
    app.add_object_type("config", "key", objname="configuration key")
    app.add_directive_to_domain("std", "config", ConfigKey, override=True)
    app.add_directive("oidcproxy-config-reference", ConfigReference)
    app.add_directive("oidcproxy-cli-reference", CLIReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
