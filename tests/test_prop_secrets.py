"""
Properties of secret references in the config (a literal, C{{ env = ... }},
C{{ file = ... }}, C{{ credential = ... }}) on generated values, files and
environments: a secret is read exactly, or the config is refused with a
one-line error; never another exception.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Optional
from unittest import mock

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import ConfigError, parse_config
from oidcproxy.config.secrets import secret_bytes

from .props import given
from .test_prop_durations import MINIMAL, assertConfigError

NAMES = st.sampled_from(["key", "KEY_2", "a.b", "", ".", "..", "a/b", "../key", "k\x00y", "k\ny",
                         "é", " key", "missing"])
CONTENTS = st.one_of(
    st.none(),  # no such file
    st.binary(max_size=80),
    st.sampled_from([b"", b"\n", b"\r\n", b"x" * 40 + b"\n", b"x" * 40 + b"\r\n", b"x" * 40 + b"\n\n",
                     "\u00e9".encode("utf-8") * 20, b"\xff" * 40, b"\x00" * 40]),
)
REFERENCES = st.one_of(
    st.text(max_size=50),
    st.fixed_dictionaries({"env": NAMES}),
    st.fixed_dictionaries({"file": NAMES}),
    st.fixed_dictionaries({"credential": NAMES}),
    st.dictionaries(st.sampled_from(["env", "file", "credential", "value", ""]),
                    st.one_of(NAMES, st.integers(), st.booleans(), st.lists(NAMES, max_size=2)),
                    max_size=3),
    st.integers(), st.booleans(), st.floats(), st.lists(st.text(max_size=3), max_size=2),
)


def expected(reference: Any, environ: Dict[str, str], files: Dict[str, Optional[bytes]],
             credentials: bool) -> Optional[str]:
    """The secret a valid reference names (None when it cannot be read)."""
    if isinstance(reference, str):
        return reference
    if not isinstance(reference, dict) or len(reference) != 1:
        return None
    (kind, name), = reference.items()
    if not isinstance(name, str) or not name or any(c < " " or c == "\x7f" for c in name):
        return None  # no variable or file is read under a name with a control character
    if kind == "env":
        return environ.get(name)
    if kind == "credential" and (not credentials or "/" in name or name in (".", "..")):
        return None
    if kind not in ("file", "credential"):
        return None
    content = files.get(name)
    if content is None:
        return None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


class SecretReferenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    @given(REFERENCES, st.dictionaries(NAMES.filter(lambda n: n and "\x00" not in n and "=" not in n),
                                       st.text(max_size=40).filter(lambda v: "\x00" not in v),
                                       max_size=3),
           st.dictionaries(NAMES, CONTENTS, max_size=4), st.booleans())
    @example({"file": "k\x00y"}, {}, {}, False)
    @example({"credential": "k\x00y"}, {}, {}, True)
    @example({"env": "k\ny"}, {}, {}, False)
    @example({"file": "key"}, {}, {"key": b"x" * 40 + b"\n"}, False)
    def test_read_exactly_or_refused(self, reference: Any, environ: Dict[str, str],
                                     files: Dict[str, Optional[bytes]], credentials: bool) -> None:
        """
        session.secrets = [reference]: the secret is the literal, the
        variable or the file (one trailing newline dropped), exactly; or the
        config is refused with one-line problems naming the key.
        """
        # A directory of this example's own: no file of an earlier example is found.
        self.directory = tempfile.mkdtemp(dir=self.base)
        written: Dict[str, Optional[bytes]] = {}
        for name, content in files.items():
            if content is None or not name or name in (".", "..") or "/" in name or "\x00" in name:
                continue
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(content)
            written[name] = content
        if isinstance(reference, dict) and isinstance(reference.get("file"), str) and \
                reference["file"] in written:
            reference = {"file": os.path.join(self.directory, reference["file"])}
            written = {reference["file"]: written[os.path.basename(reference["file"])]}
        patched = {"CREDENTIALS_DIRECTORY": self.directory} if credentials else {}
        patched.update(environ)
        data = dict(MINIMAL, session={"secrets": [reference]})
        try:
            with mock.patch.dict(os.environ, patched, clear=False):
                if not credentials:
                    os.environ.pop("CREDENTIALS_DIRECTORY", None)
                config = parse_config(data, "generated.toml")
        except ConfigError as e:
            assertConfigError(self, e)
            for line in e.lines():
                self.assertIn("session.secrets[0]", line)
            want = expected(reference, environ, written, credentials)
            # Refused only when missing or short: measured as the parser
            # measures (hex and base64 decoded: 40 "x" are 30 bytes).
            self.assertTrue(want is None or len(secret_bytes(want).data) < 32, (reference, want))
            return
        (secret,) = config.session.secrets
        self.assertEqual(secret.reveal(), expected(reference, environ, written, credentials))
        self.assertNotIn(secret.reveal(), repr(secret))
