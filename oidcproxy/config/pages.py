"""
The C{[pages]} table: how the pages the proxy itself shows look (the
organisation's name, logo, colour, footer, help link, replacement
templates) and speak (their language), and which of them it shows.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from .reader import Table
from .schema import LANGUAGES, PagesConfig

__all__ = ["LANGUAGES", "PagesConfig", "read_pages"]


_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_MAX_TEXT = 200


def accent_color(text: str) -> str:
    """a CSS hex colour, ``#rgb`` or ``#rrggbb``"""
    if not _COLOR.fullmatch(text):
        raise ValueError(f"{text!r} is not a colour like \"#1d4ed8\" or \"#15c\"")
    return text.lower()


def link(text: str) -> str:
    """an https URL, or a path on this site (``/static/logo.svg``)"""
    if text.startswith("/") and not text.startswith("//"):
        if any(c.isspace() or not c.isprintable() for c in text):
            raise ValueError(f"{text!r} has spaces or control characters")
        return text
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.netloc or \
            any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{text!r} is neither an https URL nor a path starting with /")
    return text


def short_text(text: str) -> str:
    """one line of at most 200 characters"""
    if len(text) > _MAX_TEXT or not text.isprintable():
        raise ValueError("expected one line of at most 200 printable characters")
    return text


def directory(path: str) -> str:
    """an existing directory"""
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    return path


def language(text: str) -> str:
    """``"auto"`` or one of ``"en"``, ``"de"``"""
    if text != "auto" and text not in LANGUAGES:
        raise ValueError(f"{text!r} is not \"auto\" or one of "
                         + ", ".join(f'"{code}"' for code in LANGUAGES))
    return text


def read_pages(t: Table) -> PagesConfig:
    d = PagesConfig()
    return PagesConfig(
        title=t.string("title", d.title, check=short_text, default_text="the organisation",
                       doc="Put after each page's own title in the browser tab."),
        organisation=t.string("organisation", d.organisation, check=short_text,
                              doc="The organisation's name, at the top of every page."),
        logo_url=t.string("logo_url", None, check=link,
                          doc="A logo shown beside the name: an https URL or a path on this "
                          "site (a route must serve it without login)."),
        accent_color=t.string("accent_color", d.accent_color, check=accent_color,
                              doc="The colour of buttons and links (``#rgb`` or ``#rrggbb``)."),
        footer=t.string("footer", d.footer, check=short_text,
                        doc="One line of text at the bottom of every page."),
        support_url=t.string("support_url", None, check=link,
                             doc="Where a \"Help\" link on every page leads (an https URL or a "
                             "path)."),
        templates_dir=t.string(
            "templates_dir", None, check=directory,
            doc="A directory of templates that replace the built-in ones one by one "
            "(``forbidden.xhtml``, ``login_failed.xhtml``, ``unavailable.xhtml``, "
            "``logout.xhtml``, ``signed_out.xhtml``, ``sign_in.xhtml``, ``error.xhtml``); "
            "``--check`` refuses one that is not well-formed or lacks a slot it must keep."),
        language=t.string("language", d.language, check=language,
                          doc="The language of the built-in texts: ``\"en\"``, ``\"de\"``, or "
                          "``\"auto\"`` to follow each browser's ``Accept-Language``."),
        logout_confirm=t.boolean(
            "logout_confirm", d.logout_confirm,
            doc="Ask \"Sign out of this site?\" on ``GET`` of the logout endpoint; false "
            "signs out at once (a page that posts the same-origin form by itself)."),
        sign_in_page=t.boolean(
            "sign_in_page", d.sign_in_page,
            doc="Show a page with a sign-in button naming the provider before sending a "
            "browser to log in, rather than redirecting it at once."),
        switch_account_prompt=t.choice(
            "switch_account_prompt", ("login", "select_account"), d.switch_account_prompt,
            doc="The ``prompt`` of the login that \"Sign in as someone else\" starts on the "
            "403 page."),
        provider_name=t.string("provider_name", d.provider_name, check=short_text,
                               default_text="the issuer's host name",
                               doc="The provider's name on the sign-in button."),
    )
