"""
The skip policy (L{tests.helpers}): a test whose program, file or module is
missing fails, naming what to install, unless C{OIDCPROXY_TESTS_ALLOW_SKIP=1}
makes it skip with the same message; no test skips any other way; and
C{tests/run.sh} installs every Debian package a test asks for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, Iterator, Tuple

from twisted.trial.reporter import TestResult
from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase

from tests import helpers
from tests.helpers import (
    ALLOW_SKIP,
    MissingRequirement,
    missing,
    require_file,
    require_module,
    require_program,
    set_env,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOWHERE = "/nonexistent/oidcproxy-test"


class _NeedsAProgram(SynchronousTestCase):
    """A test needing a program no machine has (not named test_*, so trial does not collect it)."""

    def needs_it(self) -> None:
        require_program("oidcproxy-no-such-program", "oidcproxy-no-such-package")


def _run_one() -> TestResult:
    result = TestResult()
    _NeedsAProgram("needs_it").run(result)
    return result


class PolicyTests(SynchronousTestCase):
    def forbid(self) -> None:
        set_env(self, {ALLOW_SKIP: None})

    def allow(self) -> None:
        set_env(self, {ALLOW_SKIP: "1"})

    def test_missing_program_fails_naming_the_package(self) -> None:
        """Without the variable, a missing program is a failure saying what to apt-get install."""
        self.forbid()
        e = self.assertRaises(MissingRequirement, require_program,
                              "oidcproxy-no-such-program", "oidcproxy-no-such-package")
        self.assertIsInstance(e, FailTest)
        self.assertEqual(
            str(e),
            "oidcproxy-no-such-program is not installed: apt-get install oidcproxy-no-such-package "
            f"(tests/run.sh installs it) (or set {ALLOW_SKIP}=1 to skip instead of failing)")

    def test_missing_program_skips_when_allowed(self) -> None:
        """With OIDCPROXY_TESTS_ALLOW_SKIP=1 the same is a skip with the same message."""
        self.allow()
        e = self.assertRaises(SkipTest, require_program,
                              "oidcproxy-no-such-program", "oidcproxy-no-such-package")
        self.assertEqual(
            str(e),
            "oidcproxy-no-such-program is not installed: apt-get install oidcproxy-no-such-package "
            "(tests/run.sh installs it)")

    def test_only_1_allows(self) -> None:
        """Another value (0, empty, yes, true) does not allow skipping; 1 does."""
        for value in ("0", "", "yes", "true"):
            set_env(self, {ALLOW_SKIP: value})
            self.assertIsInstance(missing("x"), MissingRequirement)
        set_env(self, {ALLOW_SKIP: "1"})
        self.assertIsInstance(missing("x"), SkipTest)

    def test_trial_counts_a_failure(self) -> None:
        """trial reports a test with a missing part as failed, not skipped..."""
        self.forbid()
        result = _run_one()
        self.assertEqual((len(result.failures), len(result.errors), len(result.skips)), (1, 0, 0))
        self.assertIn("apt-get install oidcproxy-no-such-package", str(result.failures[0][1].value))

    def test_trial_counts_a_skip_when_allowed(self) -> None:
        """... and, with the variable, as skipped, with the message as the reason."""
        self.allow()
        result = _run_one()
        self.assertEqual((len(result.failures), len(result.errors), len(result.skips)), (0, 0, 1))
        self.assertIn("apt-get install oidcproxy-no-such-package", result.skips[0][1])

    def test_program_found_on_path(self) -> None:
        """A program on $PATH is returned as its absolute path."""
        self.forbid()
        path = require_program("sh", "dash")
        self.assertTrue(os.path.isabs(path) and os.access(path, os.X_OK), path)

    def test_program_at_a_given_path(self) -> None:
        """With a path, that exact file must be executable; the message names the path."""
        self.forbid()
        self.assertEqual(require_program("python", "python3", path=sys.executable), sys.executable)
        e = self.assertRaises(MissingRequirement, require_program, "x", "x-package", path=NOWHERE)
        self.assertIn(f"{NOWHERE} is not installed: apt-get install x-package", str(e))

    def test_file(self) -> None:
        """A missing file fails, saying why it should be there; a present one is returned."""
        self.forbid()
        self.assertEqual(require_file(__file__, "it is this test"), __file__)
        e = self.assertRaises(MissingRequirement, require_file, NOWHERE, "run `npm ci` there")
        self.assertIn(f"{NOWHERE} is missing: run `npm ci` there", str(e))
        self.allow()
        self.assertRaises(SkipTest, require_file, NOWHERE, "run `npm ci` there")

    def test_module(self) -> None:
        """A missing module fails, saying how to install it; a present one is imported."""
        self.forbid()
        self.assertIs(require_module("json", "it is in the standard library"), sys.modules["json"])
        e = self.assertRaises(MissingRequirement, require_module, "oidcproxy_no_such_module",
                              "pip install -r requirements-dev.txt")
        self.assertIn("the Python module oidcproxy_no_such_module is not installed", str(e))
        self.assertIn("pip install -r requirements-dev.txt", str(e))
        self.allow()
        self.assertRaises(SkipTest, require_module, "oidcproxy_no_such_module", "pip install it")


def _test_sources() -> Iterator[Tuple[str, str]]:
    """Every Python file under tests/ (the OP's node_modules left out): its path and text."""
    for top, dirs, files in os.walk(HERE):
        dirs[:] = sorted(d for d in dirs if d not in ("node_modules", "__pycache__"))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(top, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, ROOT), f.read()


class EveryTestFollowsThePolicy(SynchronousTestCase):
    SKIPS = re.compile(r"\bSkipTest\b|\bskipTest\(|\bunittest\.skip|^\s*skip\s*=|\bskipIf\b|\bskipUnless\b",
                       re.MULTILINE)
    ASKED = re.compile(r"require_program\(\s*\"[^\"]+\",\s*\"([^\"]+)\"")

    def test_no_other_skips(self) -> None:
        """No test module skips except through tests.helpers (so nothing skips silently)."""
        own = {os.path.relpath(p, ROOT) for p in (helpers.__file__, __file__)}
        found = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
                 for name, text in _test_sources() if name not in own
                 for m in self.SKIPS.finditer(text)]
        self.assertEqual(found, [])

    def test_run_sh_installs_every_package_asked_for(self) -> None:
        """Every Debian package a require_program call names is one tests/run.sh installs."""
        with open(os.path.join(ROOT, "tests", "run.sh"), encoding="utf-8") as f:
            installed = set()
            for line in f:
                installed.update(re.findall(r"need_apt\+=\(([^)]*)\)", line))
        installed = {word for words in installed for word in words.split()}
        asked = {package for name, text in _test_sources()
                 if not name.endswith("test_skip_policy.py")
                 for package in self.ASKED.findall(text)}
        self.assertGreater(len(asked), 3, "no require_program calls found: the pattern is stale")
        self.assertEqual(sorted(asked - installed), [])


def _run_sh() -> str:
    with open(os.path.join(ROOT, "tests", "run.sh"), encoding="utf-8") as f:
        return f.read()


def _shell_function(name: str) -> str:
    """The text of the function C{name} in tests/run.sh, to run on its own."""
    m = re.search(rf"^{name}\(\) \{{.*?^\}}$", _run_sh(), re.MULTILINE | re.DOTALL)
    assert m is not None, f"tests/run.sh has no function {name}"
    return m.group(0)


class RunScriptTests(SynchronousTestCase):
    """The summary of tests/run.sh counts skips, and under CI a skip fails the run."""

    def bash(self, script: str, env: Dict[str, str], *args: str) -> Tuple[int, str]:
        """Run C{script} in bash with C{args} as its arguments and only C{env} (and PATH) set."""
        done = subprocess.run(["bash", "-c", script, "run.sh", *args], capture_output=True,
                              text=True, timeout=30,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})
        return done.returncode, done.stdout

    def count(self, summary: str) -> str:
        log = self.mktemp()
        with open(log, "w", encoding="ascii") as f:
            f.write(f"-------\nRan 12 tests in 0.5s\n\n{summary}\n")
        code, out = self.bash(_shell_function("count") + '\ncount "$1"', {}, log)
        self.assertEqual(code, 0)
        return out.strip()

    def test_count_reads_skips(self) -> None:
        """count() gives successes, failures plus errors, and skips from trial's summary."""
        self.assertEqual(self.count("FAILED (skips=2, failures=1, errors=3, successes=6)"), "6 4 2")
        self.assertEqual(self.count("PASSED (skips=5, successes=7)"), "7 0 5")
        self.assertEqual(self.count("PASSED (successes=12)"), "12 0 0")

    def test_skips_fail_under_ci(self) -> None:
        """Under CI=true (or CI=1) one skipped test fails the run; none passes it."""
        check = _shell_function("skips_allowed") + '\nskips_allowed "$N"'
        for ci in ("true", "1"):
            self.assertEqual(self.bash(check, {"CI": ci, "N": "1"})[0], 1, ci)
            self.assertEqual(self.bash(check, {"CI": ci, "N": "0"})[0], 0, ci)

    def test_skips_pass_outside_ci(self) -> None:
        """Without CI (or CI=false) skipped tests are counted, and the run may pass."""
        check = _shell_function("skips_allowed") + '\nskips_allowed "$N"'
        self.assertEqual(self.bash(check, {"N": "3"})[0], 0)
        self.assertEqual(self.bash(check, {"CI": "false", "N": "3"})[0], 0)

    def test_summary_lines_name_skips(self) -> None:
        """The summary prints 'N passed, N failed, N skipped' per runtime and in total."""
        text = _run_sh()
        for who in ("cpython", "pypy", "total"):
            self.assertRegex(text, rf'echo "{who}: .* passed, .* failed, .* skipped"')
        self.assertIn("if ! skips_allowed $((c_skip + p_skip)); then", text)

    def test_trial_directories_per_checkout(self) -> None:
        """trial works in directories of this checkout (gitignored), never in a fixed /tmp one."""
        text = _run_sh()
        self.assertNotIn("/tmp/_trial", text)
        self.assertIn('cpython_temp=$ROOT/_trial_temp_cpython', text)
        self.assertIn('pypy_temp=$ROOT/_trial_temp_pypy', text)
        self.assertEqual(len(re.findall(r'--temp-directory="\$(cpython|pypy)_temp"', text)), 2)
        with open(os.path.join(ROOT, ".gitignore"), encoding="utf-8") as f:
            self.assertIn("_trial_temp*/", f.read().split())

    def test_installs_start_no_service(self) -> None:
        """apt_install puts a policy-rc.d refusing every start (101) in place, then takes it away."""
        body = _shell_function("apt_install")
        self.assertIn("exit 101", body)
        self.assertRegex(body, r'if \[ -n "\$saved" \]; then mv "\$saved" "\$policy"; '
                               r'else rm -f "\$policy"; fi')
        self.assertIn('apt_install "${need_apt[@]}"', _run_sh())
        self.assertNotRegex(_run_sh(), r"(?m)^\s*apt-get install")
