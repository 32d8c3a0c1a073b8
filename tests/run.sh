#!/usr/bin/env bash
# The whole test suite, on a fresh machine of this kind (Debian, root, the
# package registries reachable). Installs what it needs:
#   - Debian: pypy3 and pypy3-venv (for the PyPy run), chromium and
#     chromium-driver (the browser login test), nginx (the forward-auth
#     test), when missing;
#   - the npm package oidc-provider (the real OpenID Provider of the
#     interoperability tests) from tests/integration/op/package-lock.json;
#   - a CPython venv (.venv-cpython) with the project and the checkers;
#   - a PyPy venv (.venv-pypy) with the project (cryptography<44, see
#     constraints-pypy.txt).
#   - hypothesis (requirements-test.txt) in both, and atheris in the CPython
#     one (requirements-dev.txt).
# Then: ruff, the documents' reStructuredText, mypy, every test on CPython,
# the fuzz targets on CPython for a bounded time (tests/fuzz/run.py), the unit
# tests on PyPy. The property tests (tests/test_prop_*.py) run in Hypothesis's
# "ci" profile (HYPOTHESIS_PROFILE=long searches longer).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}

step() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v pypy3 >/dev/null 2>&1 || need_apt+=(pypy3)
if command -v pypy3 >/dev/null 2>&1 && ! pypy3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need_apt+=(pypy3-venv)
fi
dpkg -s pypy3-venv >/dev/null 2>&1 || need_apt+=(pypy3-venv)
# Headless browser for tests/integration/test_login_interop.py.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# The front proxy of tests/integration/test_forward_auth.py.
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
    step "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

step "CPython venv"
[ -x .venv-cpython/bin/python ] || "$PY" -m venv .venv-cpython
.venv-cpython/bin/python -m pip install -q --disable-pip-version-check -U pip
.venv-cpython/bin/python -m pip install -q --disable-pip-version-check . -r requirements-dev.txt

step "test OpenID Provider (oidc-provider, from package-lock.json)"
(cd tests/integration/op && npm ci --no-audit --no-fund --loglevel=error)

step "PyPy venv"
[ -x .venv-pypy/bin/python ] || pypy3 -m venv .venv-pypy
.venv-pypy/bin/python -m pip install -q --disable-pip-version-check -U pip
.venv-pypy/bin/python -m pip install -q --disable-pip-version-check --prefer-binary \
    -c constraints-pypy.txt . -r requirements-test.txt

step "ruff"
.venv-cpython/bin/ruff check oidcproxy tests twisted setup.py bench

step "reStructuredText (README.rst, NEWS.rst, bench/README.rst)"
for doc in README.rst NEWS.rst bench/README.rst; do
    .venv-cpython/bin/python -m docutils --halt=warning "$doc" > /dev/null
done

step "mypy"
.venv-cpython/bin/mypy

unit_modules=$(cd tests && ls test_*.py | sed 's/\.py$//; s/^/tests./')

hypothesis_cases() {  # what the property tests wrote in trial's directories (tests/props.py)
    cat "$1"/hypothesis-cases.txt "$1"/*/hypothesis-cases.txt 2>/dev/null \
        | awk '{n+=$2; t++} END {printf "hypothesis: %d generated cases in %d property tests\n", n, t}'
}

logs=$(mktemp -d)
set +e  # run both suites whatever the first one says; the summary decides
step "all tests on CPython ($(.venv-cpython/bin/python -V))"
.venv-cpython/bin/python -m twisted.trial --temp-directory=/tmp/_trial_cpython -j2 tests \
    2>&1 | tee "$logs/cpython.log"
cpython_status=${PIPESTATUS[0]}
grep -ho 'LOGIN_ROUND_TRIP_MS=.*' /tmp/_trial_cpython/test.log 2>/dev/null || true
hypothesis_cases /tmp/_trial_cpython

step "fuzz targets on CPython (atheris, 5 s each)"
.venv-cpython/bin/python tests/fuzz/run.py --seconds 5
fuzz_status=$?

step "unit tests on PyPy ($(.venv-pypy/bin/python -c 'import sys; print(sys.version.split()[0], "/ PyPy", ".".join(map(str, sys.pypy_version_info[:3])))'))"
.venv-pypy/bin/python -m twisted.trial --temp-directory=/tmp/_trial_pypy -j2 $unit_modules \
    2>&1 | tee "$logs/pypy.log"
pypy_status=${PIPESTATUS[0]}
hypothesis_cases /tmp/_trial_pypy
set -e

count() {  # successes and failures from trial's summary line
    local log=$1 ok bad
    ok=$(tail -3 "$log" | { grep -Eo 'successes=[0-9]+' || true; } | cut -d= -f2)
    bad=$(tail -3 "$log" | { grep -Eo '(failures|errors)=[0-9]+' || true; } \
        | awk -F= '{s+=$2} END {print s+0}')
    echo "${ok:-0} ${bad:-0}"
}
read -r c_ok c_bad < <(count "$logs/cpython.log")
read -r p_ok p_bad < <(count "$logs/pypy.log")
[ "$cpython_status" -eq 0 ] || c_bad=$((c_bad > 0 ? c_bad : 1))
[ "$pypy_status" -eq 0 ] || p_bad=$((p_bad > 0 ? p_bad : 1))
[ "$fuzz_status" -eq 0 ] || c_bad=$((c_bad + 1))  # a fuzz crash counts as a failed test
echo
echo "cpython: $c_ok passed, $c_bad failed"
echo "pypy: $p_ok passed, $p_bad failed"
echo "total: $((c_ok + p_ok)) passed, $((c_bad + p_bad)) failed"
[ "$cpython_status" -eq 0 ] && [ "$pypy_status" -eq 0 ] && [ "$fuzz_status" -eq 0 ]
