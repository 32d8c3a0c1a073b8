#!/usr/bin/env bash
# The whole test suite, on a fresh machine of this kind (Debian, root, the
# package registries reachable). Installs what it needs:
#   - Debian, when missing: pypy3 and pypy3-venv (for the PyPy run), chromium
#     and chromium-driver (the browser login test), nginx (the forward-auth
#     test), redis-server (the Redis tests start their own, on free ports),
#     systemd (systemd-analyze verifies the unit files), nodejs and npm (the
#     test OpenID Provider); with a temporary /usr/sbin/policy-rc.d, so that
#     installing them starts no system service (nginx on 80, Redis on 6379);
#   - the npm package oidc-provider (the real OpenID Provider of the
#     interoperability tests) from tests/integration/op/package-lock.json;
#   - a CPython venv (.venv-cpython) with the project and the checkers;
#   - a PyPy venv (.venv-pypy) with the project (cryptography<44, see
#     constraints-pypy.txt).
#   - hypothesis (requirements-test.txt) in both, and atheris in the CPython
#     one (requirements-dev.txt).
# Then: ruff, the documents' reStructuredText, the Sphinx documentation
# (docs/, warnings as errors), mypy, every test on CPython,
# the fuzz targets on CPython for a bounded time (tests/fuzz/run.py), the unit
# tests on PyPy. The property tests (tests/test_prop_*.py) run in Hypothesis's
# "ci" profile (HYPOTHESIS_PROFILE=long searches longer).
# trial works in _trial_temp_cpython/ and _trial_temp_pypy/ of this checkout.
# A test missing a program, file or module fails saying what to install
# (tests/helpers.py), unless OIDCPROXY_TESTS_ALLOW_SKIP=1 makes it skip; the
# summary counts the skipped tests, and under CI=true any skip fails the run.
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
# The Redis tests (tests/integration/redis_server.py starts its own servers).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# systemd-analyze verify, in tests/integration/test_systemd.py.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The test OpenID Provider (tests/integration/op) runs on Node.js.
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)

apt_install() {  # Debian packages, without starting the services they bring
    local policy=/usr/sbin/policy-rc.d saved="" status=0
    if [ -e "$policy" ]; then
        saved=$(mktemp)
        cp -p "$policy" "$saved"
    fi
    printf '#!/bin/sh\n# tests/run.sh is installing packages: start no service\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || status=$?
    if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
    return "$status"
}

if [ ${#need_apt[@]} -gt 0 ]; then
    step "installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    apt_install "${need_apt[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "Node.js $(node -v) is too old: tests/integration/op/package.json needs >= 20.19" >&2
    exit 1
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
.venv-cpython/bin/ruff check oidcproxy tests twisted setup.py bench docs

step "reStructuredText (README.rst, NEWS.rst, bench/README.rst, tests/data/README.rst)"
for doc in README.rst NEWS.rst bench/README.rst tests/data/README.rst; do
    .venv-cpython/bin/python -m docutils --halt=warning "$doc" > /dev/null
done

step "documentation (Sphinx, warnings are errors) into _build/docs"
PYTHONPATH="$ROOT" .venv-cpython/bin/sphinx-build -W --keep-going -q -b html docs "$ROOT/_build/docs"

step "mypy"
.venv-cpython/bin/mypy

unit_modules=$(cd tests && ls test_*.py | sed 's/\.py$//; s/^/tests./')

hypothesis_cases() {  # what the property tests wrote in trial's directories (tests/props.py)
    cat "$1"/hypothesis-cases.txt "$1"/*/hypothesis-cases.txt 2>/dev/null \
        | awk '{n+=$2; t++} END {printf "hypothesis: %d generated cases in %d property tests\n", n, t}'
}

cpython_temp=$ROOT/_trial_temp_cpython  # per checkout: two checkouts do not collide
pypy_temp=$ROOT/_trial_temp_pypy
logs=$(mktemp -d)
set +e  # run both suites whatever the first one says; the summary decides
step "all tests on CPython ($(.venv-cpython/bin/python -V))"
.venv-cpython/bin/python -m twisted.trial --temp-directory="$cpython_temp" -j2 tests \
    2>&1 | tee "$logs/cpython.log"
cpython_status=${PIPESTATUS[0]}
grep -ho 'LOGIN_ROUND_TRIP_MS=.*' "$cpython_temp/test.log" 2>/dev/null || true
hypothesis_cases "$cpython_temp"

step "fuzz targets on CPython (atheris, 5 s each)"
.venv-cpython/bin/python tests/fuzz/run.py --seconds 5
fuzz_status=$?

step "unit tests on PyPy ($(.venv-pypy/bin/python -c 'import sys; print(sys.version.split()[0], "/ PyPy", ".".join(map(str, sys.pypy_version_info[:3])))'))"
.venv-pypy/bin/python -m twisted.trial --temp-directory="$pypy_temp" -j2 $unit_modules \
    2>&1 | tee "$logs/pypy.log"
pypy_status=${PIPESTATUS[0]}
hypothesis_cases "$pypy_temp"
set -e

count() {  # successes, failures and skips from trial's summary line
    local log=$1 ok bad skipped
    ok=$(tail -3 "$log" | { grep -Eo 'successes=[0-9]+' || true; } | cut -d= -f2)
    bad=$(tail -3 "$log" | { grep -Eo '(failures|errors)=[0-9]+' || true; } \
        | awk -F= '{s+=$2} END {print s+0}')
    skipped=$(tail -3 "$log" | { grep -Eo 'skips=[0-9]+' || true; } | cut -d= -f2)
    echo "${ok:-0} ${bad:-0} ${skipped:-0}"
}
skips_allowed() {  # whether $1 skipped tests may pass: not under CI (CI=true)
    case "${CI:-}" in
        true | 1) [ "$1" -eq 0 ] ;;
        *) true ;;
    esac
}
read -r c_ok c_bad c_skip < <(count "$logs/cpython.log")
read -r p_ok p_bad p_skip < <(count "$logs/pypy.log")
[ "$cpython_status" -eq 0 ] || c_bad=$((c_bad > 0 ? c_bad : 1))
[ "$pypy_status" -eq 0 ] || p_bad=$((p_bad > 0 ? p_bad : 1))
[ "$fuzz_status" -eq 0 ] || c_bad=$((c_bad + 1))  # a fuzz crash counts as a failed test
echo
echo "cpython: $c_ok passed, $c_bad failed, $c_skip skipped"
echo "pypy: $p_ok passed, $p_bad failed, $p_skip skipped"
echo "total: $((c_ok + p_ok)) passed, $((c_bad + p_bad)) failed, $((c_skip + p_skip)) skipped"
if ! skips_allowed $((c_skip + p_skip)); then
    echo "CI=$CI: no test may be skipped (trial's [SKIPPED] lines above say why each was)" >&2
    exit 1
fi
[ "$cpython_status" -eq 0 ] && [ "$pypy_status" -eq 0 ] && [ "$fuzz_status" -eq 0 ]
