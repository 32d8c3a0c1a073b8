"""
The pages the proxy itself shows people: 403 (who is signed in, sign out,
sign in as someone else, back), a failed login (why, try again),
unavailable (retries by itself), the sign-out confirmation, signed out and
the sign-in page; any other error gets a plain page in the same look.

One L{Pages} per guard, made from the configuration's C{[pages]} table
(organisation, logo, accent colour, footer, help link, templates, language).
Each page is a template of L{twisted.web.template} (which escapes every
value) and goes out with a strict Content-Security-Policy: no inline
script anywhere (the one script, which posts the sign-out form when
C{logout_confirm = false}, is a file loaded with a nonce), the stylesheet
allowed by its hash, no framing. API clients get JSON, as before.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlencode, urlsplit

from twisted.web.server import Request
from twisted.web.template import Tag, tags

from ...config import Config
from ...core.context import peek
from ...core.pages import answer, page_headers, render_error, style_hash, wants_json
from ..identity import user_name
from ..requests import mount_path, referer_below, target_below_mount
from .templates import BUILT_IN, TemplateProblem, flatten, load_templates
from .texts import LANGUAGES, TEXTS, choose_language, status_title

__all__ = ["LANGUAGES", "Pages", "TemplateProblem", "bounded_text"]

SCRIPT_PATH = "/pages/submit.js"
"""Below endpoints_prefix: the script that posts the sign-out form by itself."""

_MAX_DETAIL = 300
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_HTML = b"text/html; charset=utf-8"


def bounded_text(value: Any, limit: int = _MAX_DETAIL) -> str:
    """
    A value from elsewhere (an IdP's error_description, a claim) as text a
    page may show: control characters dropped, at most C{limit} characters
    (an ellipsis where it was cut). The template engine escapes it.
    """
    text = value if isinstance(value, str) else str(value)
    text = "".join(c for c in text[: limit * 4] if c.isprintable() or c == " ")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _words(text: str, **values: Any) -> List[Any]:
    """C{text} with each C{{name}} replaced by its value (a string or a tag)."""
    parts = _PLACEHOLDER.split(text)
    return [values[p] if i % 2 else p for i, p in enumerate(parts) if p]


def _origin(url: Optional[str]) -> Optional[str]:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _request_provider(request: Request) -> Optional[str]:
    """
    The named provider of the request's session, else of its route; None:
    C{[oidc]} (or none known).
    """
    ctx = peek(request)
    if ctx is None:
        return None
    return ctx.provider or (ctx.route.provider if ctx.route is not None else None)


class Pages:
    """
    The pages of one guard.

    @param config: the configuration (its C{[pages]} table, paths and provider).
    @param logout_targets: a callable giving the URLs a sign-out form's
        answer may redirect to, which the C{form-action} must allow: the
        IdPs' logout endpoints when they are known, the named providers'
        fixed landing pages after logout (C{[oidc]}'s is added here).
    @raise TemplateProblem: a template of C{templates_dir} cannot be used.
    """

    def __init__(self, config: Config, logout_targets: Any = None) -> None:
        self._config = config
        self._settings = settings = config.pages
        self._loaders = load_templates(settings.templates_dir)
        with open(os.path.join(BUILT_IN, "style.css"), encoding="utf-8") as f:
            css = f.read().replace("ACCENT", settings.accent_color)
        self._css = css
        self._style_source = style_hash(css)
        with open(os.path.join(BUILT_IN, "submit.js"), "rb") as f:
            self.script = f.read()
        self._logout_targets = logout_targets or (lambda: ())
        provider = settings.provider_name
        if not provider and config.oidc is not None:
            provider = urlsplit(config.oidc.issuer).hostname or config.oidc.issuer
        self._provider = provider or "the identity provider"

    def provider_label(self, name: str) -> str:
        """
        How the pages name the provider C{name}: C{[pages] provider_name} or
        the issuer's host for C{[oidc]}, the issuer's host for a named one.
        """
        if not name:
            return self._provider
        table = self._config.provider_config(name)
        if table is None:
            return name
        return urlsplit(table.issuer).hostname or table.issuer

    # -- what every page shares ----------------------------------------------------------

    def language(self, request: Request) -> str:
        """The language of the pages for C{request}."""
        setting = self._settings.language
        if setting != "auto":
            return setting
        accept = request.requestHeaders.getRawHeaders(b"accept-language", [])
        return choose_language(", ".join(v.decode("latin-1") for v in accept))

    def _text(self, lang: str, key: str, **values: Any) -> List[Any]:
        return _words(TEXTS[lang][key], **values)

    def _common(self, lang: str, heading: str) -> Dict[str, Any]:
        s = self._settings
        site = s.title or s.organisation
        logo: Union[str, Tag] = ""
        if s.logo_url:
            logo = tags.img(src=s.logo_url, alt="" if s.organisation else "Logo")
        return {
            "lang": lang,
            "title": f"{heading} · {site}" if site else heading,
            "style": tags.style(self._css),
            "logo": logo,
            "organisation": s.organisation,
            "heading": heading,
            "support": tags.a(TEXTS[lang]["support"], href=s.support_url)
            if s.support_url else "",
            "footer": tags.span(s.footer) if s.footer else "",
        }

    def _page(self, request: Request, page: str, code: int, lang: str, heading: str,
              slots: Dict[str, Any], headers: Optional[Dict[bytes, bytes]] = None,
              nonce: Optional[str] = None) -> bytes:
        """Render C{page} and set the answer's status and headers; return the body."""
        values = self._common(lang, heading)
        values.update(slots)
        body = flatten(self._loaders[page], values)
        script = f"script-src 'nonce-{nonce}'" if nonce else "script-src 'none'"
        forms = ["'self'"]
        for url in map(_origin, (*self._logout_targets(),
                                 self._config.oidc.post_logout_redirect_url
                                 if self._config.oidc is not None else None)):
            if url and url not in forms:
                forms.append(url)
        csp = (f"default-src 'none'; {script}; style-src 'self' {self._style_source}; "
               f"img-src 'self' https: data:; form-action {' '.join(forms)}; "
               "frame-ancestors 'none'; base-uri 'none'")
        out = page_headers(csp)
        if self._settings.language == "auto":
            out[b"vary"] = b"Accept-Language"
        out.update(headers or {})
        return answer(request, code, _HTML, body, out)

    # -- links to the guard's endpoints ----------------------------------------------------

    def _login_url(self, request: Request, target: str, prompt: Optional[str] = None,
                   provider: Optional[str] = None,
                   asked: Sequence[Tuple[str, str]] = ()) -> Optional[str]:
        """
        The login endpoint starting a login back to C{target} with
        C{provider} (by default the provider of the request's route), with
        the parameters C{asked} (a step-up's C{acr_values} and C{max_age});
        None when logins start elsewhere.
        """
        oidc = self._config.oidc
        query = [("rd", target)] + ([("prompt", prompt)] if prompt else []) + list(asked)
        if provider is None:
            provider = _request_provider(request)
        name = provider or None
        if name is not None:
            # A named provider's login starts at endpoints_prefix/login, when it is there.
            table = self._config.provider_config(name)
            if table is None or table.disable_login or \
                    (oidc is not None and (oidc.login_url or oidc.disable_login)):
                return None
            query.append(("provider", name))
            oidc = table
        if oidc is None or oidc.disable_login:
            return None
        path = oidc.login_url or self._config.endpoints_prefix + "/login"
        return mount_path(request) + path + "?" + urlencode(query)

    def _logout_action(self, request: Request) -> str:
        return mount_path(request) + self._config.logout_path

    def _logout_form(self, request: Request, lang: str, target: Optional[str], *,
                     secondary: bool = False, form_id: Optional[str] = None,
                     provider: Optional[str] = None) -> Tag:
        """
        A sign-out button: it ends the session of C{provider} (by default
        the request's session's named provider, or its route's).
        """
        form = tags.form(method="post", action=self._logout_action(request))
        if form_id:
            form(id=form_id)
        if target:
            form(tags.input(type="hidden", name="rd", value=target))
        if provider is None:
            provider = _request_provider(request)
        if provider is not None:
            form(tags.input(type="hidden", name="provider", value=provider))
        button = tags.button(TEXTS[lang]["logout_button"], type="submit")
        if secondary:
            button(**{"class": "secondary"})
        return form(button)

    # -- the pages -----------------------------------------------------------------------

    def error(self, request: Request, code: int, error: str, message: str,
              headers: Optional[Dict[bytes, bytes]] = None) -> bytes:
        """Any other error, in the look of the pages (a 503 retries by itself)."""
        lang = self.language(request)
        if code == 503:
            retry = (headers or {}).get(b"retry-after", b"5")
            return self._unavailable(request, code, lang, message, error, retry, None, headers)
        heading = TEXTS[lang]["error_heading"].format(code=code, title=status_title(lang, code))
        return self._page(request, "error", code, lang, heading, {"message": message}, headers)

    def _unavailable(self, request: Request, code: int, lang: str, message: str, error: str,
                     retry_after: bytes, retry_url: Optional[str],
                     headers: Optional[Dict[bytes, bytes]]) -> bytes:
        seconds = int(retry_after) if retry_after.isdigit() else 5
        texts = TEXTS[lang]
        reason = {"session_store_unavailable": "reason_store_down",
                  "idp_unavailable": "reason_idp_down"}.get(error)
        shown = texts[reason] if reason and not message.startswith("You are not") else message
        refresh = f"{seconds}" + (f"; url={retry_url}" if retry_url else "")
        again = retry_url or target_below_mount(request).decode("ascii", "replace")
        slots = {
            "message": shown,
            "refresh": Tag("meta")(**{"http-equiv": "refresh", "content": refresh}),
            "retry_note": texts["retry_note"].format(seconds=seconds),
            "retry": tags.a(texts["retry_now"], href=mount_path(request) + again
                            if again.startswith("/") and not retry_url else again,
                            **{"class": "button"}),
        }
        out = {b"retry-after": str(seconds).encode("ascii")}
        out.update(headers or {})
        return self._page(request, "unavailable", code, lang, texts["unavailable_heading"], slots,
                          out)

    def forbidden(self, request: Request, sub: str, claims: Dict[str, Any], route: str,
                  target: str, message: str) -> bytes:
        """
        403 from a route's rule: who is signed in, which route refused, and the
        ways on (sign out, sign in as someone else, back).
        """
        if wants_json(request):
            return render_error(request, 403, "forbidden", message, as_json=True)
        lang = self.language(request)
        texts = TEXTS[lang]
        user = user_name(self._config.username_claim, claims, sub)
        switch = self._login_url(request, target, self._settings.switch_account_prompt)
        slots = {
            "message": texts["forbidden_message"],
            "signed_in_as": self._text(lang, "signed_in_as",
                                       user=tags.strong(bounded_text(user, 120))),
            "route": self._text(lang, "route", route=tags.code(bounded_text(route, 120))),
            "switch_account": tags.a(texts["switch_account"], href=switch, **{"class": "button"})
            if switch else "",
            "sign_out": self._logout_form(request, lang, None, secondary=True),
            "back": tags.a(texts["back"], href=self._back(request), **{"class": "button secondary"}),
        }
        return self._page(request, "forbidden", 403, lang, texts["forbidden_heading"], slots)

    def _back(self, request: Request) -> str:
        """The same-origin page the browser came from, else the site's root."""
        public = self._config.public_url or ""
        path = referer_below(request, _origin(public))
        if path:
            return path
        return (urlsplit(public).path or "") + "/" if public else "/"

    def login_failed(self, request: Request, code: int, message: str, reason: str,
                     target: str, detail: Optional[str] = None,
                     headers: Optional[Dict[bytes, bytes]] = None, error: str = "login_failed",
                     values: Optional[Dict[str, str]] = None, retry: bool = False) -> bytes:
        """
        A login that did not work: why (the text C{reason}, with C{values}),
        what the IdP said where it said something (C{detail}: bounded,
        escaped), and "Try again": a fresh login back to C{target}. With
        C{retry} (the IdP is down or slow) it is the unavailable page, which
        starts that login again by itself after a while.
        """
        if wants_json(request):
            return render_error(request, code, error, message, headers, as_json=True)
        lang = self.language(request)
        texts = TEXTS[lang]
        again = self._login_url(request, target) or target
        if retry:
            after = (headers or {}).get(b"retry-after", b"5")
            return self._unavailable(request, code, lang, texts[reason], error, after,
                                     again, headers)
        shown: Union[str, Tag] = ""
        if detail:
            shown = tags.div(tags.p(texts["idp_says"]), tags.p(bounded_text(detail)),
                             **{"class": "detail"})
        slots = {
            "message": self._text(lang, reason,
                                  **{k: tags.code(v) for k, v in (values or {}).items()}),
            "detail": shown,
            "try_again": tags.a(texts["try_again"], href=again, **{"class": "button"}),
        }
        return self._page(request, "login_failed", code, lang, texts["login_failed_heading"],
                          slots, headers)

    def logout(self, request: Request, user: Optional[str], target: Optional[str],
               provider: str = "", several: bool = False) -> bytes:
        """
        The sign-out page of C{GET}: a form that posts to the logout endpoint
        (a link alone signs no one out) to end the session of C{provider}.
        With C{logout_confirm = false} it posts itself (a script file,
        allowed by a nonce). With C{several} providers, the page names the
        one whose session it ends.
        """
        lang = self.language(request)
        texts = TEXTS[lang]
        confirm = self._settings.logout_confirm
        nonce = None if confirm else secrets.token_urlsafe(16)
        script: Union[str, Tag] = ""
        if nonce is not None:
            script = tags.script(src=mount_path(request) + self._config.endpoints_prefix
                                 + SCRIPT_PATH, nonce=nonce)
        slots = {
            "message": texts["logout_message"] if confirm else texts["logout_auto"],
            "signed_in_as": self._signed_in_as(lang, user, provider if several else None),
            "form": self._logout_form(request, lang, target, form_id="logout-form",
                                      provider=provider if several else None),
            "script": script,
        }
        return self._page(request, "logout", 200, lang, texts["logout_heading"], slots,
                          nonce=nonce)

    def _signed_in_as(self, lang: str, user: Optional[str], provider: Optional[str]) -> Any:
        """Who is signed in (and with which C{provider}, when given); nothing without a user."""
        if not user:
            return ""
        name = tags.strong(bounded_text(user, 120))
        if provider is None:
            return self._text(lang, "logout_account", user=name)
        return self._text(lang, "logout_account_at", user=name,
                          provider=tags.strong(bounded_text(self.provider_label(provider), 120)))

    def signed_out(self, request: Request) -> bytes:
        """After signing out (without post_logout_redirect_url): it says so; sign in again."""
        lang = self.language(request)
        texts = TEXTS[lang]
        again = self._login_url(request, "/")
        slots = {
            "message": texts["signed_out_message"],
            "sign_in": tags.a(texts["sign_in_again"], href=again, **{"class": "button"})
            if again else "",
        }
        return self._page(request, "signed_out", 200, lang, texts["signed_out_heading"], slots)

    def sign_in(self, request: Request, target: str,
                headers: Optional[Dict[bytes, bytes]] = None,
                providers: Optional[Sequence[str]] = None) -> bytes:
        """
        C{sign_in_page = true}: a button naming the route's provider, before
        the browser goes there; with C{providers} (a route's choice), one
        button for each, each starting a login with its provider.
        """
        lang = self.language(request)
        texts = TEXTS[lang]
        if providers is None:
            ctx = peek(request)
            route = ctx.route if ctx is not None else None
            providers = [(route.provider or "") if route is not None else ""]
        buttons = [tags.a(texts["sign_in_with"].format(provider=self.provider_label(name)),
                          href=self._login_url(request, target, provider=name) or "/",
                          **{"class": "button"}) for name in providers]
        slots = {
            "message": texts["sign_in_message"],
            "sign_in": buttons,
        }
        return self._page(request, "sign_in", 401, lang, texts["sign_in_heading"], slots, headers)

    def step_up(self, request: Request, target: str, acr_values: Sequence[str],
                max_age: Optional[int], headers: Optional[Dict[bytes, bytes]] = None) -> bytes:
        """
        401 for an action (a form posted) the upstream refused for want of
        a stronger or more recent sign-in: it says so, and a button signs in
        again asking for C{acr_values} and C{max_age}, back to C{target}
        (the page the action was taken on) to try once more.
        """
        message = "This action needs a stronger or more recent sign-in."
        if wants_json(request):
            return render_error(request, 401, "insufficient_user_authentication", message,
                                headers, as_json=True)
        lang = self.language(request)
        texts = TEXTS[lang]
        asked = ([("acr_values", " ".join(acr_values))] if acr_values else []) + \
            ([("max_age", str(max_age))] if max_age is not None else [])
        again = self._login_url(request, target, asked=asked)
        slots = {
            "message": texts["step_up_message"],
            "retry_note": texts["step_up_note"] if again else "",
            "sign_in": tags.a(texts["step_up_button"], href=again, **{"class": "button"})
            if again else "",
            "back": tags.a(texts["back"], href=mount_path(request) + target,
                           **{"class": "button secondary"}),
        }
        return self._page(request, "step_up", 401, lang, texts["step_up_heading"], slots, headers)

    def script_answer(self, request: Request) -> bytes:
        """The script of the sign-out page (static)."""
        return answer(request, 200, b"text/javascript; charset=utf-8", self.script,
                      {b"cache-control": b"no-cache"})


