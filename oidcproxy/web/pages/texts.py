"""
The built-in words of the pages, per language, and the choice of a
language from C{Accept-Language}.

A text with C{{name}} in it has a value put there by the page (escaped by
the template engine, like every value). Every language has every key: a
test checks it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ...config.pages import LANGUAGES

__all__ = ["LANGUAGES", "TEXTS", "choose_language"]

TEXTS: Dict[str, Dict[str, str]] = {
    "en": {
        "error_heading": "{code} {title}",
        "forbidden_heading": "You cannot see this page",
        "forbidden_message": "Your account is not allowed to see this part of the site.",
        "signed_in_as": "You are signed in as {user}.",
        "route": "Refused by the rule of {route}.",
        "sign_out": "Sign out",
        "switch_account": "Sign in as someone else",
        "back": "Back",
        "login_failed_heading": "The sign-in did not work",
        "try_again": "Try again",
        "idp_says": "The identity provider said:",
        "unavailable_heading": "Temporarily unavailable",
        "retry_note": "This page tries again by itself in {seconds} seconds.",
        "retry_now": "Try again now",
        "logout_heading": "Sign out",
        "logout_message": "Sign out of this site?",
        "logout_account": "You are signed in as {user}.",
        "logout_account_at": "You are signed in as {user} with {provider}.",
        "logout_button": "Sign out",
        "logout_auto": "Signing you out…",
        "signed_out_heading": "You are signed out",
        "signed_out_message": "You have signed out of this site.",
        "sign_in_again": "Sign in again",
        "sign_in_heading": "Sign in",
        "sign_in_message": "This site needs you to sign in.",
        "sign_in_with": "Sign in with {provider}",
        "step_up_heading": "A stronger sign-in is needed",
        "step_up_message": "This action needs a stronger or more recent sign-in than the one "
                           "you have. It was not carried out.",
        "step_up_note": "Sign in again, then try the action once more.",
        "step_up_button": "Sign in again",
        "support": "Help",
        "reason_idp_refused": "The identity provider did not let the sign-in through "
                              "(it answered {error}).",
        "reason_access_denied": "The sign-in was cancelled or refused at the identity "
                                "provider ({error}).",
        "reason_unknown_state": "This sign-in attempt is unknown or has expired.",
        "reason_state_used": "This sign-in attempt was already used.",
        "reason_not_verified": "The sign-in could not be verified.",
        "reason_idp_error": "The identity provider could not complete the sign-in.",
        "reason_idp_down": "The identity provider cannot be reached at the moment.",
        "reason_idp_slow": "The identity provider did not answer in time.",
        "reason_malformed": "The answer of the identity provider was malformed.",
        "reason_store_down": "Sessions are temporarily unavailable.",
        "reason_step_up_exhausted": "This page needs a stronger or more recent sign-in, and "
                                    "the identity provider did not give it after several "
                                    "attempts.",
        "reason_step_up_acr": "The identity provider did not confirm the sign-in level "
                              "asked for.",
        "reason_step_up_auth_time": "The identity provider did not confirm a sign-in as "
                                    "recent as asked for.",
    },
    "de": {
        "error_heading": "{code} {title}",
        "forbidden_heading": "Diese Seite ist für Sie gesperrt",
        "forbidden_message": "Ihr Konto darf diesen Teil der Website nicht sehen.",
        "signed_in_as": "Sie sind als {user} angemeldet.",
        "route": "Abgelehnt von der Regel für {route}.",
        "sign_out": "Abmelden",
        "switch_account": "Als jemand anderes anmelden",
        "back": "Zurück",
        "login_failed_heading": "Die Anmeldung hat nicht geklappt",
        "try_again": "Erneut versuchen",
        "idp_says": "Der Identitätsanbieter meldet:",
        "unavailable_heading": "Vorübergehend nicht erreichbar",
        "retry_note": "Diese Seite versucht es in {seconds} Sekunden von selbst erneut.",
        "retry_now": "Jetzt erneut versuchen",
        "logout_heading": "Abmelden",
        "logout_message": "Von dieser Website abmelden?",
        "logout_account": "Sie sind als {user} angemeldet.",
        "logout_account_at": "Sie sind als {user} mit {provider} angemeldet.",
        "logout_button": "Abmelden",
        "logout_auto": "Sie werden abgemeldet …",
        "signed_out_heading": "Sie sind abgemeldet",
        "signed_out_message": "Sie haben sich von dieser Website abgemeldet.",
        "sign_in_again": "Wieder anmelden",
        "sign_in_heading": "Anmelden",
        "sign_in_message": "Für diese Website müssen Sie sich anmelden.",
        "sign_in_with": "Mit {provider} anmelden",
        "step_up_heading": "Eine stärkere Anmeldung ist nötig",
        "step_up_message": "Diese Aktion verlangt eine stärkere oder neuere Anmeldung als Ihre "
                           "jetzige. Sie wurde nicht ausgeführt.",
        "step_up_note": "Melden Sie sich erneut an und versuchen Sie die Aktion dann noch einmal.",
        "step_up_button": "Erneut anmelden",
        "support": "Hilfe",
        "reason_idp_refused": "Der Identitätsanbieter hat die Anmeldung nicht zugelassen "
                              "(Antwort: {error}).",
        "reason_access_denied": "Die Anmeldung wurde beim Identitätsanbieter abgebrochen "
                                "oder abgelehnt ({error}).",
        "reason_unknown_state": "Dieser Anmeldeversuch ist unbekannt oder abgelaufen.",
        "reason_state_used": "Dieser Anmeldeversuch wurde bereits verwendet.",
        "reason_not_verified": "Die Anmeldung konnte nicht überprüft werden.",
        "reason_idp_error": "Der Identitätsanbieter konnte die Anmeldung nicht abschließen.",
        "reason_idp_down": "Der Identitätsanbieter ist im Moment nicht erreichbar.",
        "reason_idp_slow": "Der Identitätsanbieter hat nicht rechtzeitig geantwortet.",
        "reason_malformed": "Die Antwort des Identitätsanbieters war fehlerhaft.",
        "reason_store_down": "Sitzungen sind vorübergehend nicht verfügbar.",
        "reason_step_up_exhausted": "Diese Seite verlangt eine stärkere oder neuere Anmeldung, "
                                    "und der Identitätsanbieter hat sie auch nach mehreren "
                                    "Versuchen nicht bestätigt.",
        "reason_step_up_acr": "Der Identitätsanbieter hat die verlangte Anmeldestufe nicht "
                              "bestätigt.",
        "reason_step_up_auth_time": "Der Identitätsanbieter hat keine so neue Anmeldung wie "
                                    "verlangt bestätigt.",
    },
}

_TITLES = {
    "en": {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Content Too Large", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"},
    "de": {400: "Ungültige Anfrage", 401: "Nicht angemeldet", 403: "Verboten",
           404: "Nicht gefunden", 405: "Methode nicht erlaubt", 413: "Anfrage zu groß",
           500: "Interner Fehler", 502: "Fehlerhaftes Gateway", 503: "Nicht verfügbar",
           504: "Gateway-Zeitüberschreitung"},
}


def status_title(language: str, code: int) -> str:
    """The name of HTTP status C{code} in C{language}."""
    return _TITLES[language].get(code, _TITLES["en"].get(code, "Error"))


def _ranges(header: str) -> List[Tuple[float, int, str]]:
    """The language ranges of an C{Accept-Language} value: (-q, position, range), best first."""
    out = []
    for position, item in enumerate(header.split(",")[:32]):
        parts = item.strip().split(";")
        tag = parts[0].strip().lower()
        if not tag:
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            out.append((-q, position, tag))
    out.sort()
    return out


def choose_language(accept: Optional[str], supported: Sequence[str] = LANGUAGES,
                    fallback: str = "en") -> str:
    """
    The supported language the C{Accept-Language} value C{accept} likes
    best (by q-value, then order; C{de-CH} matches C{de}, C{*} the
    fallback), or C{fallback}.
    """
    if not accept:
        return fallback
    for _, _, tag in _ranges(accept):
        if tag == "*":
            return fallback
        primary = tag.split("-", 1)[0]
        if primary in supported:
            return primary
    return fallback
