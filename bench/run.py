"""
The oidcproxy benchmark: one command, a bounded time, ratios measured in one
run (see bench/README.rst).

    bench/run [--quick] [--duration S] [--repeats N] [--with-apache] [--json FILE]
    bench/run --compare REF [--compare-to REF2] [--quick] [...]
    bench/run --profile [--profile-seconds S] [--profiler sample|cprofile]
    bench/run --overload [--overload-seconds S]
    bench/run --h2 [--quick] [--runtimes ...]
    bench/run --instructions [--compare REF [--compare-to REF2]]

C{bench/run} installs what is missing and runs this file with the project's
CPython venv. Everything listens on 127.0.0.1 on free ports; every process
started here is stopped at the end, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import pstats
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import browser

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OP_SCRIPT = os.path.join(ROOT, "tests", "integration", "op", "op.mjs")
OP_PACKAGE = os.path.join(ROOT, "tests", "integration", "op", "node_modules", "oidc-provider")
RUNTIME_PYTHONS = {
    "cpython": os.path.join(ROOT, ".venv-cpython", "bin", "python"),
    "pypy": os.path.join(ROOT, ".venv-pypy", "bin", "python"),
}
CLIENT_ID = "oidcproxy-bench"
BEARER_ISSUER = "https://gateway.bench.invalid"
BEARER_AUDIENCE = "bench-api"
UPSTREAM_BODY = "oidcproxy-bench upstream says hello\n" * 4
"""The upstream's answer to every request: 144 bytes of text/plain."""
UPSTREAM_MARK = b"oidcproxy-bench upstream"
START_TIMEOUT = 45.0
STOP_GRACE = 5.0
WRK_THREADS = 2
WRK_CONNECTIONS = 50
LOGIN_CONCURRENCY = 4
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

SCENARIOS = {
    "U": "the upstream directly (nginx; the limit)",
    "F": "bench/floor.py: bare streaming Agent proxy, persistent pool, no auth",
    "P": "oidcproxy, public route (auth = \"none\")",
    "C": "oidcproxy, cookie session",
    "R": "oidcproxy, Redis session",
    "B": "oidcproxy, bearer JWT (RS256), verified-token cache",
    "WC": "C with workers = 2",
    "WR": "R with workers = 2",
    "XC": "Apache + mod_auth_openidc, client-cookie sessions",
    "XR": "Apache + mod_auth_openidc, Redis sessions",
    "L": "complete logins (proxy + OP), concurrency 4",
}


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class BenchError(Exception):
    """Something the run cannot go on without; the message says what."""


# -- processes -----------------------------------------------------------------


class Child:
    """
    A process started by the bench, in a session (and process group) of its
    own, so that stopping it stops whatever it started (twistd's workers,
    nginx's workers) and a Ctrl-C in the terminal reaches only the bench,
    which then stops everything in order.
    """

    def __init__(self, name: str, args: Sequence[str], workdir: str,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = os.path.join(workdir, f"{name}.log")
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=workdir, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def describe(self) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"{self.name} ({state}); last output:\n{self.output()[-2000:]}"

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                # Stragglers in the group (workers whose parent died first).
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return
            except subprocess.TimeoutExpired:
                continue


class Children:
    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.started: List[Child] = []

    def start(self, name: str, args: Sequence[str], env: Optional[Dict[str, str]] = None) -> Child:
        child = Child(name, args, self.workdir, env)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            child.stop()


def wait_for(check: Callable[[], Any], timeout: float, what: str, child: Optional[Child] = None,
             interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if child is not None and child.process.poll() is not None:
            raise BenchError(f"{what}: {child.describe()}")
        if time.monotonic() > deadline:
            detail = f"\n{child.describe()}" if child is not None else ""
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def reserve_port() -> socket.socket:
    """
    A socket bound to a free loopback port; close it just before the port is used.

    The port is drawn at random from below the kernel's ephemeral range
    (ip_local_port_range), not from port 0: between the close and the
    child's own bind (a second or two of interpreter start-up), a port of
    the ephemeral range can become the source port of any outgoing
    connection on the machine (wrk's, the proxies', another test run's),
    and the child then fails with "Address already in use". Ports below the
    range are only ever taken by an explicit bind.
    """
    high = _ephemeral_low() - 1
    low = max(10000, high - 12000)
    for _ in range(500):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", random.randint(low, high)))
        except OSError:
            s.close()
            continue
        return s
    raise BenchError(f"no free port found in {low}-{high}")


def free_port() -> int:
    s = reserve_port()
    try:
        return int(s.getsockname()[1])
    finally:
        s.close()


def port_line(child: Child) -> Optional[int]:
    for line in child.output().splitlines():
        if line.startswith("PORT "):
            return int(line.split()[1])
    return None


def child_env(source_tree: bool, tree: str = ROOT) -> Dict[str, str]:
    """
    The environment of a child; with C{source_tree}, its oidcproxy is the
    one in C{tree} (the working tree, or a checkout of another revision for
    --compare), not the copy installed in the venv.
    """
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    if source_tree:
        env["PYTHONPATH"] = tree
    # PyPy runs as docs/howto/pypy.rst recommends: with its heap capped (without it,
    # PyPy's collector lets resident memory grow by GBs under load). CPython
    # ignores the variable.
    env.setdefault("PYPY_GC_MAX", "256MB")
    return env


def group_pids(pid: int) -> List[int]:
    """C{pid} and its children (twistd's workers), from /proc."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(entry))
    return pids


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of C{pid} (not of its children), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def http_get(url: str, headers: Optional[Dict[str, str]] = None,
             timeout: float = 5.0) -> Tuple[int, Dict[str, str], bytes]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path + ("?" + parts.query if parts.query else ""),
                           headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def reachable(url: str, headers: Optional[Dict[str, str]] = None, status: int = 200) -> bool:
    try:
        return http_get(url, headers, timeout=2.0)[0] == status
    except OSError:
        return False


# -- the services ----------------------------------------------------------------


def port_retried(start: Callable[[], Any], what: str, attempts: int = 3) -> Any:
    """
    C{start()}, again on a fresh port when the child it started lost its port
    to another process ("Address already in use") before it could bind.
    """
    for attempt in range(attempts):
        try:
            return start()
        except BenchError as e:
            if "already in use" not in str(e) or attempt == attempts - 1:
                raise
            say(f"note: {what} lost its port to another process; retrying on another")
    raise AssertionError("unreachable")


def start_nginx(children: Children, workdir: str, locations: str = "") -> Tuple[str, Child]:
    """nginx as the upstream; C{locations}: more C{location} blocks for its server."""
    result: Tuple[str, Child] = port_retried(
        lambda: _start_nginx(children, workdir, locations), "nginx")
    return result


def _start_nginx(children: Children, workdir: str, locations: str) -> Tuple[str, Child]:
    port = free_port()
    prefix = os.path.join(workdir, "nginx")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    body = UPSTREAM_BODY.replace("\n", "\\n")
    with open(conf, "w", encoding="ascii") as f:
        f.write(f"""\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
{locations}    }}
}}
""")
    child = children.start("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-p", prefix,
                                     "-c", conf, "-e", os.path.join(prefix, "logs", "error.log")])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: reachable(url + "/"), 10, "nginx to answer", child)
    except BenchError as e:
        # nginx says why (a port in use, say) in its error log, not on stdout.
        try:
            with open(os.path.join(prefix, "logs", "error.log"), encoding="utf-8",
                      errors="replace") as f:
                errors = f.read()[-2000:]
        except OSError:
            errors = ""
        raise BenchError(f"{e}\nnginx's error log:\n{errors}") from None
    return url, child


def start_redis(children: Children, workdir: str, name: str = "redis") -> str:
    url: str = port_retried(lambda: _start_redis(children, workdir, name), name)
    return url


def _start_redis(children: Children, workdir: str, name: str) -> str:
    port = free_port()
    child = children.start(name, [shutil.which("redis-server") or "/usr/bin/redis-server",
                                     "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", workdir,
                                     "--dbfilename", f"{name}.rdb",
                                     "--protected-mode", "yes"])
    wait_for(lambda: "Ready to accept connections" in child.output(), 10, "redis-server", child)
    return f"redis://127.0.0.1:{port}"


def start_op(children: Children, redirect_uris: Sequence[str], client_secret: str) -> str:
    args = [shutil.which("node") or "node", OP_SCRIPT, "--port=0", f"--client-id={CLIENT_ID}",
            f"--client-secret={client_secret}"]
    args += [f"--redirect-uri={uri}" for uri in redirect_uris]
    child = children.start("op", args)
    port = wait_for(lambda: port_line(child), 20, "the OP's PORT line", child)
    return f"http://127.0.0.1:{port}"


def start_floor(children: Children, runtime: str, upstream: str) -> Tuple[str, Child]:
    child = children.start(f"floor-{runtime}", [RUNTIME_PYTHONS[runtime],
                                                os.path.join(HERE, "floor.py"),
                                                "--upstream", upstream],
                           env=child_env(source_tree=False))
    port = wait_for(lambda: port_line(child), START_TIMEOUT, f"the {runtime} floor's PORT", child)
    return f"http://127.0.0.1:{port}", child


def bearer_material(workdir: str) -> Tuple[str, str]:
    """
    An RSA key of our own for the C{[bearer]} issuer: the JWKS file the proxy
    reads and an RS256 access token (RFC 9068 shape) signed with it.
    """
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = "bench-" + secrets.token_hex(4)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    path = os.path.join(workdir, "bearer-jwks.json")
    with open(path, "w", encoding="ascii") as f:
        json.dump({"keys": [jwk]}, f)
    now = int(time.time())
    token = jwt.encode(
        {"iss": BEARER_ISSUER, "aud": BEARER_AUDIENCE, "sub": "bench-client", "iat": now,
         "exp": now + 3600, "scope": "read", "client_id": "bench-client",
         "jti": secrets.token_hex(8)},
        key, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})
    return path, token


def proxy_config(port: int, issuer: str, client_secret: str, session_secret: str,
                 store: str, upstream: str, jwks_file: str, redis_url: Optional[str] = None,
                 workers: int = 1) -> str:
    text = f"""\
listen = ["tcp:{port}:interface=127.0.0.1"]
public_url = "http://127.0.0.1:{port}"
"""
    if workers != 1:
        text += f"workers = {workers}\n"
    text += f"""
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{client_secret}"
scopes = ["openid", "email", "profile", "groups"]
pkce = true
token_endpoint_auth_method = "client_secret_basic"

[session]
store = "{store}"
secrets = ["{session_secret}"]
lifetime = "1h"

[bearer]
issuer = "{BEARER_ISSUER}"
audiences = ["{BEARER_AUDIENCE}"]
jwks_file = "{jwks_file}"

[headers]
X-Forwarded-User = ["preferred_username", "sub"]
X-Forwarded-Email = "email"
X-Forwarded-Groups = "groups"
"""
    if redis_url is not None:
        # Only for Redis sessions: with cookie sessions a [redis] table turns
        # on the revocation list (a Redis round trip per request).
        text += f'\n[redis]\nurl = "{redis_url}/0"\nkey_prefix = "bench-{port}:"\n'
    for path, auth in (("/public", "none"), ("/api", "bearer"), ("/", "session")):
        text += f'\n[[routes]]\npath = "{path}"\nupstream = "{upstream}"\nauth = "{auth}"\n'
    return text


def twistd(runtime: str) -> str:
    return os.path.join(os.path.dirname(RUNTIME_PYTHONS[runtime]), "twistd")


def check_config(runtime: str, path: str) -> Optional[str]:
    """None when C{--check} accepts the file, else its problem lines."""
    result = subprocess.run(
        [twistd(runtime), "--pidfile=", "oidcproxy", "--config", path, "--check"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=child_env(source_tree=True), timeout=120, check=False, cwd=os.path.dirname(path))
    if result.returncode == 0:
        return None
    lines = result.stdout.decode("utf-8", "replace").strip().splitlines()
    problems = [line.strip() for line in lines if line.startswith("config: ")]
    return " / ".join(problems) or (lines[-1].strip() if lines else f"exit status {result.returncode}")


def workers_refused(runtime: str, workdir: str, upstream: str, jwks_file: str) -> Optional[str]:
    """
    None when C{--check} accepts C{workers = 2}; else why W cannot run (the
    config's problem line, or the last line of whatever else went wrong).
    """
    path = os.path.join(workdir, "workers-check.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(proxy_config(free_port(), "http://127.0.0.1:9", "x", secrets.token_urlsafe(32),
                             "cookie", upstream, jwks_file, workers=2))
    problem = check_config(runtime, path)
    if problem is None:
        return None
    if problem.startswith("config: "):
        return f"twistd oidcproxy --check refuses workers = 2: {problem}"
    # --check itself broke (not a refusal): starting the pool decides.
    say(f"note: --check of a workers = 2 config failed ({problem}); trying to start it anyway")
    return None


class Proxy:
    def __init__(self, name: str, runtime: str, child: Child, url: str, workers: int) -> None:
        self.name = name
        self.runtime = runtime
        self.child = child
        self.url = url
        self.workers = workers
        self.cookie: Optional[str] = None
        self.set_cookies: List[Tuple[str, str]] = []
        """Every cookie set during its login (name, value)."""

    def pids(self) -> List[int]:
        return group_pids(self.child.pid)

    def rss(self) -> Dict[str, float]:
        pids = self.pids()
        sizes = [rss_mb(pid) for pid in pids]
        result = {"rss_mb": round(sum(sizes), 1)}
        if len(pids) > 1:
            result["rss_worker_max_mb"] = round(max(sizes[1:]), 1)
            result["rss_parent_mb"] = round(sizes[0], 1)
        return result


def start_proxy(children: Children, workdir: str, name: str, runtime: str,
                reserved: socket.socket, config: str, extra: Sequence[str] = (),
                workers: int = 1, tree: str = ROOT,
                command: Optional[Sequence[str]] = None,
                env: Optional[Dict[str, str]] = None,
                start_timeout: Optional[float] = None) -> Proxy:
    """
    A proxy of C{tree}'s code on C{runtime}, run by twistd (or by
    C{command}, a launcher given twistd's arguments after it).
    """
    port = int(reserved.getsockname()[1])
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config)
    reserved.close()
    # The log observer the units in etc/ use.
    child = children.start(name, [*(command or [twistd(runtime)]), *extra, "-n", "--pidfile=",
                                  "--logger=oidcproxy.logs.text", "oidcproxy",
                                  "--config", path],
                           env=env or child_env(source_tree=True, tree=tree))
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        # Listening, and the OP's metadata read: a login starts with a 302.
        # With several workers each reads it: ask a few times.
        return all(reachable(url + "/oidc/login", browser.NAVIGATE, 302) for _ in range(2 * workers))

    # A worker pool that is not up in 20 s will not be (W is reported unavailable).
    if start_timeout is None:
        start_timeout = START_TIMEOUT if workers == 1 else 20.0
    wait_for(ready, start_timeout,
             f"{name} to listen and read the OP's metadata", child, 0.25)
    return Proxy(name, runtime, child, url, workers)


# -- Apache httpd + mod_auth_openidc (scenario X) ------------------------------------

APACHE_MODULES = "/usr/lib/apache2/modules"


def apache_available() -> Optional[str]:
    if not os.path.exists("/usr/sbin/apache2"):
        return "apache2 is not installed (bench/run --with-apache installs it)"
    if not os.path.exists(os.path.join(APACHE_MODULES, "mod_auth_openidc.so")):
        return "libapache2-mod-auth-openidc is not installed"
    return None


def start_apache(children: Children, workdir: str, name: str, reserved: socket.socket,
                 issuer: str, client_secret: str, upstream: str,
                 redis_url: Optional[str]) -> Proxy:
    port = int(reserved.getsockname()[1])
    root = os.path.join(workdir, name)
    os.makedirs(root, exist_ok=True)
    modules = ["mpm_event", "authz_core", "authz_user", "authn_core", "auth_openidc", "proxy",
               "proxy_http"]
    loads = "".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so\n" for m in modules)
    if redis_url is not None:
        address = redis_url.split("//", 1)[1]
        session = f"OIDCSessionType server-cache\nOIDCCacheType redis\nOIDCRedisCacheServer {address}\n"
    else:
        session = "OIDCSessionType client-cookie\n"
    user = ""
    if os.geteuid() == 0:
        user = "User www-data\nGroup www-data\n"
    conf = os.path.join(root, "httpd.conf")
    with open(conf, "w", encoding="ascii") as f:
        f.write(f"""\
ServerRoot {root}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {root}/httpd.pid
ErrorLog {root}/error.log
LogLevel warn
{user}{loads}
# Two processes of threads, about what the event MPM runs by default on a small machine.
StartServers 2
ServerLimit 2
ThreadsPerChild 64
MaxRequestWorkers 128
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 120

OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration
OIDCClientID {CLIENT_ID}
OIDCClientSecret {client_secret}
OIDCProviderTokenEndpointAuth client_secret_basic
OIDCRedirectURI http://127.0.0.1:{port}/oidc/callback
OIDCCryptoPassphrase {secrets.token_urlsafe(32)}
OIDCScope "openid email profile groups"
OIDCPKCEMethod S256
OIDCSessionInactivityTimeout 3600
OIDCSessionMaxDuration 3600
OIDCStateMaxNumberOfCookies 5 true
{session}
ProxyPass /oidc/callback !
ProxyPass / {upstream}/ keepalive=On
ProxyPassReverse / {upstream}/

<Location />
    AuthType openid-connect
    Require valid-user
</Location>
""")
    reserved.close()
    child = children.start(name, ["/usr/sbin/apache2", "-f", conf, "-DFOREGROUND"])
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: reachable(url + "/", browser.NAVIGATE, 302), START_TIMEOUT,
             f"{name} to answer with a login redirect", child, 0.25)
    return Proxy(name, "apache", child, url, 1)


# -- load ------------------------------------------------------------------------------

WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class Target:
    """One thing put under load: a scenario on a runtime."""

    def __init__(self, scenario: str, runtime: str, url: str, headers: Dict[str, str],
                 proxy: Proxy, side: str = "") -> None:
        self.scenario = scenario
        self.side = side
        """With --compare, which revision: "A" or "B"; else (and for U and F) ""."""
        self.warmup_s: Optional[float] = None
        """PyPy: seconds of load until its 1 s rate reached its settled level."""
        self.warmup_settled = True
        self.warmup_rates: List[float] = []
        self.runtime = runtime
        self.url = url
        self.headers = headers
        self.proxy = proxy
        self.runs: List[Dict[str, Any]] = []
        self.problems: List[str] = []
        self.rss: Dict[str, float] = {}

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.runtime}" + (f"/{self.side}" if self.side else "")

    def probe(self) -> Optional[str]:
        """None when one request gets the upstream's answer; else what went wrong."""
        try:
            status, _, body = http_get(self.url, self.headers)
        except OSError as e:
            return f"probe failed: {e}"
        if status != 200 or UPSTREAM_MARK not in body:
            return f"probe got {status} instead of the upstream's 200"
        return None

    def measure_rss(self) -> None:
        self.rss = self.proxy.rss()


def run_wrk(target: Target, duration: float, script: str) -> Dict[str, Any]:
    args = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "-s", script]
    for name, value in target.headers.items():
        args += ["-H", f"{name}: {value}"]
    args.append(target.url)
    result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=duration + 60, check=False)
    output = result.stdout.decode("utf-8", "replace")
    match = re.search(r"^BENCH_RESULT ([\d ]+)$", output, re.M)
    if result.returncode != 0 or match is None:
        raise BenchError(f"wrk failed on {target.key}: {output[-1000:]}")
    requests, duration_us, p50, p99, *errors = (int(n) for n in match.group(1).split())
    return {
        "rps": requests / (duration_us / 1e6),
        "p50_ms": p50 / 1000.0,
        "p99_ms": p99 / 1000.0,
        "requests": requests,
        "errors": dict(zip(("connect", "read", "write", "status", "timeout"), errors)),
    }


def run_logins(proxy: Proxy, duration: float, concurrency: int = LOGIN_CONCURRENCY) -> Dict[str, Any]:
    """
    Complete logins through C{proxy} for C{duration} seconds, C{concurrency}
    at a time, each in a fresh browser; logins per second, the proxy's CPU
    time per login and the client-side time of one login.
    """
    url = proxy.url + "/bench/login"
    stop = time.monotonic() + duration
    done: List[float] = []
    failures: List[str] = []
    lock = threading.Lock()

    def loop() -> None:
        while time.monotonic() < stop:
            try:
                took = browser.timed_login(url)
            except (OSError, browser.LoginFailed) as e:
                with lock:
                    failures.append(str(e))
                continue
            with lock:
                done.append(took)

    cpu_before = cpu_seconds(proxy.child.pid)
    start = time.monotonic()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(proxy.child.pid) - cpu_before
    return {
        "logins_per_s": len(done) / elapsed,
        "cpu_ms_per_login": cpu * 1000.0 / len(done) if done else None,
        "login_p50_ms": statistics.median(done) * 1000.0 if done else None,
        "logins": len(done),
        "failures": len(failures),
        "failure_example": failures[0][:300] if failures else None,
    }


WARMUP_WINDOW = 3
"""PyPy's warm-up looks at this many consecutive 1 s rates at a time."""


def rates_settled(rates: Sequence[float], settle: float) -> bool:
    """
    Whether 1 s rates have stopped climbing: the last L{WARMUP_WINDOW} are
    within C{settle} of the highest of them, or (on a machine noisier than
    that) their median is no more than C{settle} above the median of the
    L{WARMUP_WINDOW} before them.
    """
    last = rates[-WARMUP_WINDOW:]
    if len(last) < WARMUP_WINDOW:
        return False
    if max(last) - min(last) <= settle * max(last):
        return True
    before = rates[-2 * WARMUP_WINDOW:-WARMUP_WINDOW]
    return (len(before) == WARMUP_WINDOW
            and statistics.median(last) <= (1 + settle) * statistics.median(before))


def warm_up(target: Target, args: argparse.Namespace, script: str) -> None:
    """
    Load before the measured rounds. CPython: C{args.warmup} seconds. PyPy:
    until its JIT has settled (L{rates_settled}: three consecutive 1 s rates
    within C{args.pypy_settle} of the highest of them, or no longer climbing;
    after at least C{args.pypy_warmup_min} seconds and twice C{args.warmup},
    at most C{args.pypy_warmup_max}: before its JIT starts, PyPy's rate can be
    flat for a few seconds at a tenth of what follows); the
    time it took is recorded, and reported, per scenario. A fixed second or
    two is not enough on PyPy: the rounds would measure the JIT's progress.
    Two rates are not enough either: the JIT's progress has plateaus (C on
    PyPy went 451, 394, 452, 588, 862, 878 and then 3,300 req/s).
    """
    if target.runtime != "pypy":
        run_wrk(target, args.warmup, script)
        return
    started = time.monotonic()
    minimum = max(args.pypy_warmup_min, args.warmup * 2)
    rates = target.warmup_rates
    ends: List[float] = []
    while True:
        rates.append(run_wrk(target, 1.0, script)["rps"])
        elapsed = time.monotonic() - started
        ends.append(elapsed)
        settled = rates_settled(rates, args.pypy_settle)
        if (settled and elapsed >= minimum) or elapsed >= args.pypy_warmup_max:
            break
    # The finding: how long this process served below its settled rate (the
    # end of the first second within --pypy-settle of the last seconds' median).
    level = statistics.median(rates[-WARMUP_WINDOW:])
    target.warmup_s = round(next(end for rate, end in zip(rates, ends)
                                 if rate >= (1 - args.pypy_settle) * level), 1)
    target.warmup_settled = settled
    say(f"warm-up {target.key}: at {level:,.0f} req/s after {target.warmup_s:g}s "
        f"({elapsed:.0f}s of warm-up{'' if settled else ', not settled: bounded'}), "
        f"1 s rates {', '.join(f'{r:,.0f}' for r in rates)}")


# -- results ---------------------------------------------------------------------------


def median_of(runs: Sequence[Dict[str, Any]], key: str) -> Optional[float]:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(target: Target) -> Dict[str, Any]:
    summary: Dict[str, Any] = {"runs": target.runs, **target.rss}
    if target.warmup_s is not None:
        summary["warmup_s"] = target.warmup_s
        summary["warmup_rates"] = [round(r) for r in target.warmup_rates]
        summary["warmup_settled"] = target.warmup_settled
    if target.problems:
        summary["problems"] = target.problems
    if target.scenario == "L":
        for key in ("logins_per_s", "cpu_ms_per_login", "login_p50_ms"):
            summary[key] = median_of(target.runs, key)
        summary["failures"] = sum(run["failures"] for run in target.runs)
        examples = [run["failure_example"] for run in target.runs if run["failure_example"]]
        if examples:
            summary["failure_example"] = examples[0]
    else:
        for key in ("rps", "p50_ms", "p99_ms"):
            summary[key] = median_of(target.runs, key)
        errors: Dict[str, int] = {}
        for run in target.runs:
            for name, count in run["errors"].items():
                errors[name] = errors.get(name, 0) + count
        summary["errors"] = {k: v for k, v in errors.items() if v}
    return summary


def ratios(results: Dict[str, Dict[str, Dict[str, Any]]]) -> Dict[str, Any]:
    """P/F, C/F, ..., W/C, X ratios and PyPy/CPython, each from medians of this run."""

    def rps(scenario: str, runtime: str) -> Optional[float]:
        return results.get(scenario, {}).get(runtime, {}).get("rps")

    def p99(scenario: str, runtime: str) -> Optional[float]:
        return results.get(scenario, {}).get(runtime, {}).get("p99_ms")

    def div(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return round(a / b, 3) if a is not None and b else None

    out: Dict[str, Any] = {}
    for runtime in ("cpython", "pypy"):
        r: Dict[str, Any] = {}
        for scenario in ("P", "C", "R", "B"):
            r[f"{scenario}/F"] = div(rps(scenario, runtime), rps("F", runtime))
            a, b = p99(scenario, runtime), p99("F", runtime)
            r[f"{scenario} p99 - F p99 (ms)"] = round(a - b, 2) if a is not None and b is not None \
                else None
        r["F/U"] = div(rps("F", runtime), rps("U", "nginx"))
        r["WC/C"] = div(rps("WC", runtime), rps("C", runtime))
        r["WR/R"] = div(rps("WR", runtime), rps("R", runtime))
        r["C/XC"] = div(rps("C", runtime), rps("XC", "apache"))
        r["R/XR"] = div(rps("R", runtime), rps("XR", "apache"))
        r["WC/XC"] = div(rps("WC", runtime), rps("XC", "apache"))
        r["WR/XR"] = div(rps("WR", runtime), rps("XR", "apache"))
        out[runtime] = {k: v for k, v in r.items() if v is not None}
    pypy = {}
    for scenario, by_runtime in results.items():
        key = "logins_per_s" if scenario == "L" else "rps"
        value = div(by_runtime.get("pypy", {}).get(key), by_runtime.get("cpython", {}).get(key))
        if value is not None:
            pypy[scenario] = value
    out["pypy/cpython"] = pypy
    return out


def fmt(value: Optional[float], digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(results: Dict[str, Dict[str, Dict[str, Any]]], unavailable: Dict[str, str],
          ratio: Dict[str, Any]) -> str:
    """The results as text: one row per scenario, one column group per runtime."""
    runtimes = [r for r in ("cpython", "pypy") if any(r in by for by in results.values())]
    both = len(runtimes) == 2

    def cells(s: Optional[Dict[str, Any]]) -> str:
        if s is None:
            return f"{'-':>9} {'-':>7} {'-':>7} {'-':>6}  "
        rss = s.get("rss_worker_max_mb", s.get("rss_mb"))
        return (f"{fmt(s.get('rps')):>9} {fmt(s.get('p50_ms'), 2):>7} {fmt(s.get('p99_ms'), 2):>7} "
                f"{fmt(rss, 0):>6}{flag(s)}")

    header = f"{'':<4}" + "".join(f"| {r:<9} {'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>6}  "
                                  for r in runtimes)
    header += "| pypy/cpython" if both else ""
    sub = f"{'':<4}" + "".join(f"| {'req/s':<9} {'':>7} {'':>7} {'':>6}  " for r in runtimes)
    lines = [header, sub, "-" * len(header)]
    for scenario in ("U", "F", "P", "C", "R", "B", "WC", "WR", "XC", "XR"):
        by_runtime = results.get(scenario)
        if not by_runtime:
            continue
        if scenario in ("U", "XC", "XR"):
            runtime = "nginx" if scenario == "U" else "apache"
            lines.append(f"{scenario:<4}| {cells(by_runtime[runtime])}({runtime})")
            continue
        row = f"{scenario:<4}" + "".join(f"| {cells(by_runtime.get(r))}" for r in runtimes)
        if both:
            row += f"| {fmt(ratio['pypy/cpython'].get(scenario), 2)}"
        lines.append(row)
    login = results.get("L", {})
    for runtime in runtimes:
        s = login.get(runtime)
        if s:
            lines.append(
                f"L {runtime}: {fmt(s['logins_per_s'], 1)} logins/s, "
                f"{fmt(s['cpu_ms_per_login'], 2)} ms proxy CPU per login, "
                f"{fmt(s['login_p50_ms'], 0)} ms per login, {s['failures']} failed{flag(s)}")
    lines.append("")
    for runtime in runtimes:
        if ratio.get(runtime):
            lines.append(f"ratios {runtime}: " + ", ".join(
                f"{k} {v}" for k, v in ratio[runtime].items()))
    if both and ratio.get("pypy/cpython"):
        lines.append("pypy/cpython: " + ", ".join(f"{k} {v}" for k, v in ratio["pypy/cpython"].items()))
    for scenario, reason in unavailable.items():
        lines.append(f"{scenario}: unavailable: {reason}")
    for scenario, by_runtime in results.items():
        for runtime, s in by_runtime.items():
            for problem in s.get("problems", []):
                lines.append(f"! {scenario}/{runtime}: {problem}")
            if s.get("errors"):
                lines.append(f"! {scenario}/{runtime}: wrk errors {s['errors']}")
            if s.get("failure_example"):
                lines.append(f"! {scenario}/{runtime}: a failed login: {s['failure_example']}")
    lines.append("(medians of the rounds; RSS after the last round, for workers = 2 the largest "
                 "worker's; ratios of req/s, p99 differences in ms)")
    return "\n".join(lines)


def flag(summary: Dict[str, Any]) -> str:
    return " !" if summary.get("problems") or summary.get("errors") or summary.get("failures") else "  "


def machine() -> Dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(args: Sequence[str]) -> str:
        try:
            out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=30, check=False).stdout.decode("utf-8", "replace")
        except OSError:
            return "-"
        return out.strip().splitlines()[0] if out.strip() else "-"

    info = {
        "cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
        "load_before": os.getloadavg()[0],
        "wrk": version(["wrk", "--version"]), "nginx": version(["nginx", "-v"]),
        "redis": version(["redis-server", "--version"]), "node": version(["node", "--version"]),
        "commit": version(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
    }
    for runtime, python in RUNTIME_PYTHONS.items():
        if os.path.exists(python):
            info[runtime] = version([python, "-c", "import sys; print(sys.version.split()[0], "
                                     "getattr(sys, 'pypy_version_info', ''))"])
    return info


# -- the run ---------------------------------------------------------------------------------


def preflight(args: argparse.Namespace) -> List[str]:
    missing = [tool for tool in ("wrk", "nginx", "redis-server", "node") if not shutil.which(tool)
               and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        raise BenchError(f"missing: {', '.join(missing)} (bench/run installs them)")
    if not os.path.isdir(OP_PACKAGE):
        raise BenchError(f"oidc-provider is not installed in {os.path.dirname(OP_PACKAGE)}: "
                         "run `npm ci` there (bench/run does)")
    runtimes = []
    for runtime in args.runtimes.split(","):
        if runtime not in RUNTIME_PYTHONS:
            raise BenchError(f"--runtimes: unknown runtime {runtime!r} (cpython, pypy)")
        if not os.access(RUNTIME_PYTHONS[runtime], os.X_OK):
            say(f"note: {RUNTIME_PYTHONS[runtime]} is missing: no {runtime} scenarios")
            continue
        runtimes.append(runtime)
    if not runtimes:
        raise BenchError("no runtime to measure")
    return runtimes


class Side:
    """
    One revision under test: the working tree (label "" without --compare),
    or, with --compare, A (the REF given) and B (--compare-to, by default the
    working tree), each from its own directory.
    """

    def __init__(self, label: str, tree: str, description: str) -> None:
        self.label = label
        self.tree = tree
        self.description = description

    def name(self, base: str) -> str:
        return f"{self.label}-{base}" if self.label else base


class Checkouts:
    """Temporary git worktrees of other revisions, under the work directory."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.paths: List[str] = []

    def add(self, ref: str, label: str) -> Side:
        resolved = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", "--quiet",
                                   f"{ref}^{{commit}}"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, check=False)
        commit = resolved.stdout.decode("ascii", "replace").strip()
        if resolved.returncode != 0 or not commit:
            raise BenchError(f"--compare: {ref!r} is not a revision of this repository")
        path = os.path.join(self.workdir, f"tree-{label}")
        self.paths.append(path)
        added = subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, commit],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, check=False)
        if added.returncode != 0:
            raise BenchError(f"git worktree add {ref} failed: "
                             f"{added.stdout.decode('utf-8', 'replace').strip()}")
        subject = subprocess.run(["git", "-C", path, "log", "-1", "--format=%h %s"],
                                 stdout=subprocess.PIPE, check=False).stdout.decode(
                                     "utf-8", "replace").strip()
        return Side(label, path, f"{ref} ({subject})")

    def remove(self) -> None:
        for path in self.paths:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        if self.paths:
            subprocess.run(["git", "-C", ROOT, "worktree", "prune"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        self.paths = []


def sides_of(args: argparse.Namespace, checkouts: Checkouts) -> List[Side]:
    if args.compare is None:
        return [Side("", ROOT, "the working tree")]
    a = checkouts.add(args.compare, "A")
    if args.compare_to is None:
        head = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h"],
                              stdout=subprocess.PIPE, check=False).stdout.decode().strip()
        b = Side("B", ROOT, f"the working tree (on {head})")
    else:
        b = checkouts.add(args.compare_to, "B")
    return [a, b]


def run(args: argparse.Namespace, children: Children, workdir: str,
        checkouts: Optional[Checkouts] = None) -> Dict[str, Any]:
    runtimes = preflight(args)
    started = time.monotonic()
    info = machine()
    sides = sides_of(args, checkouts or Checkouts(workdir))
    say(f"bench: {', '.join(runtimes)}; {args.repeats} rounds of {args.duration:g}s per scenario; "
        f"work directory {workdir}")
    for side in sides:
        if side.label:
            say(f"side {side.label}: {side.description}")
    upstream, nginx = start_nginx(children, workdir)
    redis_url = start_redis(children, workdir)
    jwks_file, token = bearer_material(workdir)
    client_secret = secrets.token_urlsafe(24)
    session_secret = secrets.token_urlsafe(32)
    unavailable: Dict[str, str] = {}

    # The proxies that will run, each on a port reserved now: the OP must
    # know every redirect URI before it starts.
    plan: List[Tuple[str, str, str, int, Side]] = []  # (name, runtime, store, workers, side)
    for side in sides:
        for runtime in runtimes:
            plan += [(side.name(f"cookie-{runtime}"), runtime, "cookie", 1, side),
                     (side.name(f"redis-{runtime}"), runtime, "redis", 1, side)]
    if not args.no_workers:
        problem = workers_refused(runtimes[0], workdir, upstream, jwks_file)
        if problem is None:
            for side in sides:
                for runtime in runtimes:
                    plan += [(side.name(f"w2-cookie-{runtime}"), runtime, "cookie", 2, side),
                             (side.name(f"w2-redis-{runtime}"), runtime, "redis", 2, side)]
        else:
            unavailable["W"] = problem
            say(f"W: unavailable: {problem}")
    apache_plan: List[Tuple[str, bool]] = []
    if args.with_apache:
        problem = apache_available()
        if problem is None:
            apache_plan = [("apache-cookie", False), ("apache-redis", True)]
        else:
            unavailable["X"] = problem
            say(f"X: unavailable: {problem}")
    reserved = {name: reserve_port() for name, *_ in plan}
    reserved.update({name: reserve_port() for name, _ in apache_plan})
    redirect_uris = [f"http://127.0.0.1:{s.getsockname()[1]}/oidc/callback" for s in reserved.values()]
    issuer = start_op(children, redirect_uris, client_secret)

    targets: List[Target] = [
        Target("U", "nginx", upstream + "/u", {}, Proxy("nginx", "nginx", nginx, upstream, 1))]
    proxies: Dict[str, Proxy] = {}
    for runtime in runtimes:
        floor_url, floor_child = start_floor(children, runtime, upstream)
        floor = Proxy(f"floor-{runtime}", runtime, floor_child, floor_url, 1)
        targets.append(Target("F", runtime, floor_url + "/f", {}, floor))
    for name, runtime, store, workers, side in plan:
        w_key = side.name(f"W/{runtime}")
        if workers != 1 and w_key in unavailable:
            reserved.pop(name).close()
            continue
        config = proxy_config(reserved[name].getsockname()[1], issuer, client_secret, session_secret,
                              store, upstream, jwks_file,
                              redis_url if store == "redis" else None, workers)
        say(f"starting {name}")
        try:
            proxy = start_proxy(children, workdir, name, runtime, reserved.pop(name), config,
                                workers=workers, tree=side.tree)
            proxy.cookie, proxy.set_cookies = browser.login_cookies(proxy.url + "/bench/login")
        except (BenchError, OSError, browser.LoginFailed) as e:
            if workers == 1:
                raise BenchError(f"{name}: {e}") from None
            # W is being built: a pool that does not start is reported, not fatal.
            first = str(e).splitlines()[0]
            unavailable[w_key] = (f"{name} did not start: {first} ({name}.log in the "
                                  f"work directory; --keep keeps it)")
            say(f"{w_key}: unavailable: {unavailable[w_key]}")
            children.started[-1].stop()
            continue
        proxies[name] = proxy
    for name, use_redis in apache_plan:
        say(f"starting {name}")
        proxies[name] = proxy = start_apache(children, workdir, name, reserved.pop(name), issuer,
                                             client_secret, upstream, redis_url if use_redis else None)
        proxy.cookie = browser.session_cookie(proxy.url + "/bench/login")
    # Per scenario and runtime, the sides next to each other: a group is
    # measured A B in one round and B A in the next.
    groups: List[List[Target]] = [[target] for target in targets]
    for runtime in runtimes:
        per_side: List[List[Target]] = []
        for side in sides:
            cookie_proxy = proxies[side.name(f"cookie-{runtime}")]
            redis_proxy = proxies[side.name(f"redis-{runtime}")]
            mine = [
                Target("P", runtime, cookie_proxy.url + "/public/p", {}, cookie_proxy, side.label),
                Target("C", runtime, cookie_proxy.url + "/app/c",
                       {"Cookie": cookie_proxy.cookie or ""}, cookie_proxy, side.label),
                Target("R", runtime, redis_proxy.url + "/app/r",
                       {"Cookie": redis_proxy.cookie or ""}, redis_proxy, side.label),
                Target("B", runtime, cookie_proxy.url + "/api/b",
                       {"Authorization": f"Bearer {token}"}, cookie_proxy, side.label),
            ]
            for store, scenario in (("cookie", "WC"), ("redis", "WR")):
                pool = proxies.get(side.name(f"w2-{store}-{runtime}"))
                if pool is not None:
                    mine.append(Target(scenario, runtime, pool.url + "/app/w",
                                       {"Cookie": pool.cookie or ""}, pool, side.label))
            per_side.append(mine)
        by_key: Dict[str, List[Target]] = {}
        for mine in per_side:
            for target in mine:
                by_key.setdefault(f"{target.scenario}/{target.runtime}", []).append(target)
        groups += list(by_key.values())
    for name, scenario in (("apache-cookie", "XC"), ("apache-redis", "XR")):
        if name in proxies:
            proxy = proxies[name]
            groups.append([Target(scenario, "apache", proxy.url + "/app/x",
                                  {"Cookie": proxy.cookie or ""}, proxy)])
    for runtime in runtimes:
        groups.append([Target("L", runtime, "", {}, proxies[side.name(f"cookie-{runtime}")],
                              side.label) for side in sides])
    everything = [target for group in groups for target in group]
    import extras

    measured = sides[-1]
    cookie_sizes = extras.cookie_sizes(proxies[measured.name(f"cookie-{runtimes[0]}")],
                                       proxies[measured.name(f"redis-{runtimes[0]}")],
                                       os.path.join(workdir,
                                                    f"{measured.name('cookie-' + runtimes[0])}.toml"))

    for target in everything:
        if target.scenario == "L":
            continue
        problem = target.probe()
        if problem:
            raise BenchError(f"{target.key}: {problem}")

    script = os.path.join(workdir, "report.lua")
    with open(script, "w", encoding="ascii") as f:
        f.write(WRK_SCRIPT)
    say(f"ready after {time.monotonic() - started:.0f}s; warming up")
    for target in everything:
        if target.scenario == "L":
            run_logins(target.proxy, args.warmup)
        else:
            warm_up(target, args, script)

    for round_number in range(args.repeats):
        # Interleaved: every scenario once per round, each round starting
        # one further along, so no scenario always follows the same one;
        # the sides of one scenario alternate which goes first.
        shift = round_number % len(groups)
        for group in groups[shift:] + groups[:shift]:
            for target in (group if round_number % 2 == 0 else list(reversed(group))):
                measure(target, round_number, args, script)
    for group in groups:
        for target in group:
            if target.scenario == "L":
                target.measure_rss()

    by_side: Dict[str, Dict[str, Dict[str, Dict[str, Any]]]] = {}
    for target in everything:
        by_side.setdefault(target.side, {}).setdefault(target.scenario, {})[target.runtime] = \
            summarise(target)
    shared = by_side.pop("", {})
    settings = {"duration_s": args.duration, "repeats": args.repeats, "warmup_s": args.warmup,
                "pypy_warmup": f"until {WARMUP_WINDOW} 1 s rates within {args.pypy_settle:.0%}, "
                               f"at most {args.pypy_warmup_max:g}s",
                "login_duration_s": args.login_duration, "wrk": f"-t{WRK_THREADS} "
                f"-c{WRK_CONNECTIONS}", "login_concurrency": LOGIN_CONCURRENCY,
                "upstream_body_bytes": len(UPSTREAM_BODY),
                "bearer": "RS256 JWT of a bench-generated key ([bearer] jwks_file)"}
    machine_line = (f"machine: {info['cpu']}, {info['cores']} cores, load average "
                    f"{info['load_before']:.1f} at the start; CPython {info.get('cpython', '-')}, "
                    f"PyPy {info.get('pypy', '-')[:6]}")
    outcome: Dict[str, Any] = {"machine": info, "settings": settings, "unavailable": unavailable,
                               "cookie_sizes": cookie_sizes}
    if not by_side:
        results = shared
        ratio = ratios(results)
        outcome.update({
            "scenarios": {k: v for k, v in SCENARIOS.items() if k in results or k == "L"},
            "results": results, "ratios": ratio,
            "table": table(results, unavailable, ratio) + warmup_line(results) + "\n"
            + extras.cookie_line(cookie_sizes) + "\n" + machine_line})
    else:
        text = []
        outcome["sides"] = {}
        merged_by_side = {}
        for side in sides:
            merged = {**shared, **by_side.get(side.label, {})}
            merged_by_side[side.label] = merged
            ratio = ratios(merged)
            outcome["sides"][side.label] = {"revision": side.description, "results": merged,
                                            "ratios": ratio}
            text.append(f"=== {side.label}: {side.description} ===\n"
                        + table(merged, {k: v for k, v in unavailable.items()
                                         if not k.startswith(("A-", "B-")) or
                                         k.startswith(side.label + "-")}, ratio)
                        + warmup_line(by_side.get(side.label, {})))
        compared, lines = compare(merged_by_side["A"], merged_by_side["B"], runtimes)
        outcome["comparison"] = compared
        outcome["scenarios"] = {k: v for k, v in SCENARIOS.items()}
        text.append(f"=== B/A: B = {sides[1].description}, A = {sides[0].description} ===\n"
                    + "\n".join(lines))
        text.append(extras.cookie_line(cookie_sizes) + "\n" + machine_line)
        outcome["table"] = "\n\n".join(text)
    outcome["elapsed_s"] = round(time.monotonic() - started, 1)
    return outcome


def measure(target: Target, round_number: int, args: argparse.Namespace, script: str) -> None:
    """One round of C{target}: wrk (or logins for L), its result kept and said."""
    if target.scenario == "L":
        result = run_logins(target.proxy, args.login_duration)
        target.runs.append(result)
        say(f"round {round_number + 1}/{args.repeats} {target.key}: "
            f"{result['logins_per_s']:.1f} logins/s, "
            f"{fmt(result['cpu_ms_per_login'], 2)} ms CPU/login")
        return
    result = run_wrk(target, args.duration, script)
    problem = target.probe()
    if problem and problem not in target.problems:
        target.problems.append(problem)
    target.runs.append(result)
    target.measure_rss()
    say(f"round {round_number + 1}/{args.repeats} {target.key}: {result['rps']:,.0f} req/s, "
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")


def warmup_line(results: Dict[str, Dict[str, Dict[str, Any]]]) -> str:
    """PyPy's warm-up time per scenario (until its 1 s rates settled), as one line."""
    parts = [f"{scenario} {s['warmup_s']:g}s" + ("" if s.get("warmup_settled") else " (not settled)")
             for scenario, by_runtime in results.items()
             for runtime, s in by_runtime.items() if s.get("warmup_s") is not None]
    return ("\nPyPy warm-up, seconds of load until the rate reached its settled level: "
            + ", ".join(parts)) if parts else ""


def compare(a: Dict[str, Dict[str, Dict[str, Any]]], b: Dict[str, Dict[str, Dict[str, Any]]],
            runtimes: Sequence[str]) -> Tuple[Dict[str, Any], List[str]]:
    """
    Per scenario and runtime: both medians, B/A, each side's ratio to F, and
    whether the difference is within the rounds' spread: it is noise when the
    range (lowest to highest round) of one side overlaps the other's.
    """
    out: Dict[str, Any] = {}
    lines = [f"{'':<8}{'A':>9} {'B':>9} {'B/A':>6} {'A/F':>6} {'B/F':>6}  "
             f"{'A rounds':>15} {'B rounds':>15}  verdict"]
    noise: List[str] = []
    beyond: List[str] = []
    for runtime in runtimes:
        floor = a.get("F", {}).get(runtime, {}).get("rps")
        for scenario in ("P", "C", "R", "B", "WC", "WR", "L"):
            sa, sb = a.get(scenario, {}).get(runtime), b.get(scenario, {}).get(runtime)
            if not sa or not sb:
                continue
            key = "logins_per_s" if scenario == "L" else "rps"
            ra = [run[key] for run in sa["runs"] if run.get(key) is not None]
            rb = [run[key] for run in sb["runs"] if run.get(key) is not None]
            ma, mb = sa.get(key), sb.get(key)
            if not ra or not rb or not ma or mb is None:
                continue
            name = f"{scenario}/{runtime}"
            if min(rb) > max(ra):
                verdict = "B faster, beyond the spread"
            elif min(ra) > max(rb):
                verdict = "B slower, beyond the spread"
            else:
                verdict = "noise"
            (noise if verdict == "noise" else beyond).append(
                name if verdict == "noise" else f"{name} {mb / ma:.2f}x")
            entry = {"A": round(ma, 1), "B": round(mb, 1), "B/A": round(mb / ma, 3),
                     "A rounds": [round(r, 1) for r in ra], "B rounds": [round(r, 1) for r in rb],
                     "verdict": verdict}
            if scenario != "L" and floor:
                entry["A/F"] = round(ma / floor, 3)
                entry["B/F"] = round(mb / floor, 3)
            for side, s in (("A", sa), ("B", sb)):
                if s.get("warmup_s") is not None:
                    entry[f"{side} warm-up s"] = s["warmup_s"]
            out[name] = entry
            digits = 1 if scenario == "L" else 0
            lines.append(
                f"{name:<8}{fmt(ma, digits):>9} {fmt(mb, digits):>9} {mb / ma:>6.3f} "
                f"{fmt(entry.get('A/F'), 2):>6} {fmt(entry.get('B/F'), 2):>6}  "
                f"{fmt(min(ra), digits) + '-' + fmt(max(ra), digits):>15} "
                f"{fmt(min(rb), digits) + '-' + fmt(max(rb), digits):>15}  {verdict}")
    lines.append("within the rounds' spread (noise): " + (", ".join(noise) or "none"))
    lines.append("beyond it (B/A): " + (", ".join(beyond) or "none"))
    rounds = min((min(len(e["A rounds"]), len(e["B rounds"])) for e in out.values()), default=0)
    if rounds:
        chance = 2 * math.factorial(rounds) ** 2 / math.factorial(2 * rounds)
        lines.append(f"(two equal revisions leave the {rounds} rounds' ranges apart by chance "
                     f"{chance:.1%} of the time per scenario: a single 'beyond' among many "
                     f"scenarios can be luck; --repeats 5 makes it {2 * 120 ** 2 / 3628800:.1%})")
    lines.append("(req/s, L logins/s: medians of the rounds; F is shared by both sides)")
    return out, lines


# -- profiles -------------------------------------------------------------------------------


PROFILE_VENV = os.path.join(HERE, ".venv-profile")
"""bench/requirements.txt installed (py-spy), by bench/run --profile."""
PROFILE_PYPY_PATH = os.path.join(HERE, ".venv-profile-pypy")
"""bench/requirements-pypy.txt installed (vmprof), by bench/run --profile."""
SAMPLE_RATE = 250
"""py-spy's samples per second."""
VMPROF_PERIOD = 0.001
"""vmprof's sampling period on PyPy, in seconds of CPU time (bench/vmprof_twistd.py)."""


def profile(args: argparse.Namespace, children: Children, workdir: str) -> str:
    """
    P and C profiled: by default sampled, on each runtime of --runtimes
    (py-spy on CPython, vmprof on PyPy); with --profiler cprofile, on CPython
    under cProfile.
    """
    if args.profiler == "cprofile":
        return profile_cprofile(args, children, workdir)
    return profile_sampled(args, children, workdir)


def profile_parts(children: Children, workdir: str, names: Sequence[Any]
                  ) -> Tuple[str, str, str, Dict[Any, socket.socket], str, str]:
    """
    What a profile run's proxies need: the upstream (nginx), the bearer key
    file, a client secret, a reserved port for each of C{names}, the OP that
    knows their callbacks, and wrk's report script.
    """
    upstream, _ = start_nginx(children, workdir)
    jwks_file, _ = bearer_material(workdir)
    client_secret = secrets.token_urlsafe(24)
    reserved = {name: reserve_port() for name in names}
    issuer = start_op(children, [f"http://127.0.0.1:{s.getsockname()[1]}/oidc/callback"
                                 for s in reserved.values()], client_secret)
    script = os.path.join(workdir, "report.lua")
    with open(script, "w", encoding="ascii") as f:
        f.write(WRK_SCRIPT)
    return upstream, jwks_file, client_secret, reserved, issuer, script


def profile_sampled(args: argparse.Namespace, children: Children, workdir: str) -> str:
    """
    P and C on each runtime, each in a fresh proxy: warmed up as the normal
    run does (PyPy until its rate settles), then C{args.profile_seconds} of
    wrk load while a sampling profiler watches the serving process. Writes
    C{profile-SCENARIO-RUNTIME.collapsed} (collapsed stacks, for any flame
    graph tool) in the work directory and reports the top 25 functions by
    own (self) samples, each with its package group, and the groups' shares.
    """
    runtimes = preflight(args)
    py_spy = os.path.join(PROFILE_VENV, "bin", "py-spy")
    if "cpython" in runtimes and not os.access(py_spy, os.X_OK):
        raise BenchError(f"{py_spy} is missing: bench/run --profile installs bench/requirements.txt")
    if "pypy" in runtimes and not os.path.isdir(os.path.join(PROFILE_PYPY_PATH, "vmprof")):
        raise BenchError(f"vmprof is missing in {PROFILE_PYPY_PATH}: bench/run --profile installs "
                         "bench/requirements-pypy.txt")
    cases = [(scenario, path, runtime) for runtime in runtimes
             for scenario, path in (("P", "/public/p"), ("C", "/app/c"), ("L", ""))
             if scenario in args.profile_scenarios]
    upstream, jwks_file, client_secret, reserved, issuer, script = profile_parts(
        children, workdir, [(scenario, runtime) for scenario, _, runtime in cases])
    report = []
    for scenario, path, runtime in cases:
        name = f"profiled-{scenario}-{runtime}"
        collapsed = os.path.join(workdir, f"profile-{scenario}-{runtime}.collapsed")
        config = proxy_config(reserved[(scenario, runtime)].getsockname()[1], issuer, client_secret,
                              secrets.token_urlsafe(32), "cookie", upstream, jwks_file)
        command: Optional[List[str]] = None
        env: Optional[Dict[str, str]] = None
        vmprof_file = os.path.join(workdir, f"profile-{scenario}-{runtime}.vmprof")
        if runtime == "pypy":
            command = [RUNTIME_PYTHONS["pypy"], os.path.join(HERE, "vmprof_twistd.py"), vmprof_file]
            env = child_env(source_tree=True)
            env["PYTHONPATH"] = ROOT + os.pathsep + PROFILE_PYPY_PATH
        proxy = start_proxy(children, workdir, name, runtime, reserved.pop((scenario, runtime)),
                            config, command=command, env=env)
        headers = {}
        if scenario == "C":
            headers["Cookie"] = browser.session_cookie(proxy.url + "/bench/login")
        target = Target(scenario, runtime, proxy.url + path, headers, proxy)
        if scenario == "L":
            # Logins are warmed up for as long as PyPy's rates take at most.
            run_logins(proxy, args.pypy_warmup_max if runtime == "pypy" else args.warmup)

            def load(proxy: Proxy = proxy) -> Dict[str, Any]:
                done = run_logins(proxy, args.profile_seconds)
                return {"rps": done["logins_per_s"], "requests": done["logins"]}
        else:
            problem = target.probe()
            if problem:
                raise BenchError(f"{target.key}: {problem}")
            warm_up(target, args, script)

            def load(proxy: Proxy = proxy, target: Target = target) -> Dict[str, Any]:
                return run_wrk(target, args.profile_seconds, script)
        unit = "logins" if scenario == "L" else "requests"
        cpu_before = cpu_seconds(proxy.child.pid)
        if runtime == "cpython":
            sampler = subprocess.Popen(
                [py_spy, "record", "--pid", str(proxy.child.pid), "--duration",
                 str(max(1, round(args.profile_seconds))), "--rate", str(SAMPLE_RATE),
                 "--format", "raw", "--full-filenames", "--nonblocking", "--output", collapsed],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            result = load()
            cpu = cpu_seconds(proxy.child.pid) - cpu_before
            try:
                out = sampler.communicate(timeout=args.profile_seconds + 60)[0]
            except subprocess.TimeoutExpired:
                sampler.kill()
                out = sampler.communicate()[0]
            if sampler.returncode != 0 or not os.path.exists(collapsed):
                raise BenchError(f"py-spy failed on {target.key}: "
                                 f"{out.decode('utf-8', 'replace')[-1500:]}")
            tool = f"py-spy {SAMPLE_RATE}/s, --nonblocking"
        else:
            os.kill(proxy.child.pid, signal.SIGUSR1)
            result = load()
            os.kill(proxy.child.pid, signal.SIGUSR2)
            cpu = cpu_seconds(proxy.child.pid) - cpu_before
            proxy.child.stop()  # vmprof's file is complete once the process has stopped it
            converted = subprocess.run(
                [RUNTIME_PYTHONS["pypy"], os.path.join(HERE, "vmprof_collapse.py"), vmprof_file,
                 collapsed], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env={**child_env(False), "PYTHONPATH": PROFILE_PYPY_PATH},
                timeout=300, check=False)
            if converted.returncode != 0:
                raise BenchError(f"vmprof's profile of {target.key} could not be read: "
                                 f"{converted.stdout.decode('utf-8', 'replace')[-1500:]}")
            tool = f"vmprof every {1000 * VMPROF_PERIOD:g} ms of CPU time, at most the kernel's tick"
        proxy.child.stop()
        warm = f", after {target.warmup_s:g}s of warm-up" if target.warmup_s is not None else ""
        report.append(f"=== {scenario} on {runtime}, sampled ({tool}): {result['rps']:,.1f} "
                      f"{unit}/s under the profiler ({result['requests']} {unit} in "
                      f"{args.profile_seconds:g}s{warm}; {cpu:.1f}s of the proxy's CPU, "
                      f"{cpu * 1000.0 / max(result['requests'], 1):.3f} ms per "
                      f"{unit[:-1]}); "
                      f"{collapsed} ===\n" + self_time_report(collapsed))
    report.append("(own samples: the innermost Python function of each sample; time in C "
                  "functions counts in their Python caller, so untilConcludes is the socket's "
                  "send/recv calls)")
    return "\n\n".join(report)


def package_group(path: str) -> str:
    """ours / twisted / treq / stdlib / other, from a sampled frame's file name."""
    if "/oidcproxy/" in path and "site-packages" not in path or path.startswith(HERE):
        return "ours"
    if "/twisted/" in path:
        return "twisted"
    if "/treq/" in path:
        return "treq"
    if "site-packages/" in path:
        return "other"
    if (path.startswith("<") or "/lib/python3" in path or "/lib/pypy3" in path
            or path.startswith("/usr/lib/pypy")):
        return "stdlib"
    return "other"


def parse_frame(frame: str) -> Tuple[str, str]:
    """(function, file) of C{function (file:line)}."""
    match = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if match is None:
        return frame, ""
    return match.group(1), match.group(2)


def self_time_report(collapsed: str, top: int = 25) -> str:
    """The top functions by own samples (the leaf of each stack), and the groups' shares."""
    functions: Dict[Tuple[str, str], int] = {}
    groups: Dict[str, int] = {}
    total = 0
    with open(collapsed, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            function, path = parse_frame(stack.split(";")[-1])
            key = (function, path)
            functions[key] = functions.get(key, 0) + count
            group = package_group(path)
            groups[group] = groups.get(group, 0) + count
            total += count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; own time by group: " + ", ".join(
        f"{group} {100.0 * n / total:.1f}%" for group, n in sorted(groups.items(), key=lambda i: -i[1]))]
    lines.append(f"top {top} functions by own samples:")
    for (function, path), count in sorted(functions.items(), key=lambda i: -i[1])[:top]:
        lines.append(f"{100.0 * count / total:5.1f}%  {package_group(path):<8} {function}  "
                     f"({shorten_paths(path)})")
    return "\n".join(lines)


def profile_cprofile(args: argparse.Namespace, children: Children, workdir: str) -> str:
    """
    P and C on CPython under cProfile (twistd --profile): a fresh proxy per
    scenario, C{args.profile_seconds} of wrk load, then the top functions by
    cumulative and by own time.
    """
    if not os.access(RUNTIME_PYTHONS["cpython"], os.X_OK):
        raise BenchError(f"{RUNTIME_PYTHONS['cpython']} is missing")
    upstream, jwks_file, client_secret, reserved, issuer, script = profile_parts(
        children, workdir, ["P", "C"])
    report = []
    for scenario, path in (("P", "/public/p"), ("C", "/app/c")):
        stats_path = os.path.join(workdir, f"profile-{scenario}.prof")
        config = proxy_config(reserved[scenario].getsockname()[1], issuer, client_secret,
                              secrets.token_urlsafe(32), "cookie", upstream, jwks_file)
        proxy = start_proxy(children, workdir, f"profiled-{scenario}", "cpython",
                            reserved.pop(scenario), config,
                            extra=[f"--profile={stats_path}", "--profiler=cprofile", "--savestats"])
        headers = {}
        if scenario == "C":
            headers["Cookie"] = browser.session_cookie(proxy.url + "/bench/login")
        target = Target(scenario, "cpython", proxy.url + path, headers, proxy)
        problem = target.probe()
        if problem:
            raise BenchError(f"{target.key}: {problem}")
        result = run_wrk(target, args.profile_seconds, script)
        proxy.child.stop()  # SIGTERM: the reactor stops and twistd writes the stats
        if not os.path.exists(stats_path):
            raise BenchError(f"no profile written for {scenario}: {proxy.child.describe()}")
        for order in ("cumulative", "tottime"):
            out = _StatsText()
            stats = pstats.Stats(stats_path, stream=out)  # type: ignore[arg-type]
            stats.sort_stats(order).print_stats(25)
            report.append(f"=== {scenario} on CPython under cProfile: {result['rps']:,.0f} req/s "
                          f"({result['requests']} requests in {args.profile_seconds:g}s), "
                          f"top 25 by {order} ===\n{out.text()}")
        report.append(f"=== {scenario}: own time by module, ms per request ===\n"
                      + own_time_by_module(stats_path, result["requests"]))
    return "\n".join(report)


class _StatsText:
    def __init__(self) -> None:
        self._parts: List[str] = []

    def write(self, text: str) -> None:
        self._parts.append(text)

    def text(self) -> str:
        text = shorten_paths("".join(self._parts))
        lines = text.splitlines()
        # From the totals line on: the date and the file name are noise.
        for i, line in enumerate(lines):
            if "function calls" in line:
                lines = lines[i:]
                break
        return "\n".join(line for line in lines if line.strip())


def shorten_paths(text: str) -> str:
    text = re.sub(r"/\S*?/site-packages/", "", text)
    text = re.sub(r"/\S*?/lib/python3\.\d+/", "", text)
    return text.replace(ROOT + "/", "")


def module_group(filename: str) -> str:
    """Where a profiled function lives, at the grain that says whose time it is."""
    path = shorten_paths(filename)
    if path.startswith("oidcproxy/"):
        return path
    for prefix in ("twisted/web/", "twisted/internet/", "twisted/logger/", "twisted/python/",
                   "twisted/protocols/"):
        if path.startswith(prefix):
            return prefix + "*"
    if path.startswith("~") or path.startswith("<"):
        return "builtins (C functions)"
    return path.split("/", 1)[0] + ("/*" if "/" in path else "")


def own_time_by_module(stats_path: str, requests: int) -> str:
    """Own (tottime) seconds summed per module group, as ms per request, largest first."""
    stats = pstats.Stats(stats_path)
    totals: Dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        group = module_group(filename)
        totals[group] = totals.get(group, 0.0) + tottime
    whole = sum(totals.values())
    rows = sorted(totals.items(), key=lambda item: -item[1])[:25]
    return "\n".join(f"{seconds * 1000.0 / max(requests, 1):8.3f} ms  {100.0 * seconds / whole:5.1f}%  "
                     f"{group}" for group, seconds in rows)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run", description="oidcproxy benchmark: ratios measured in one run "
                                      "(see bench/README.rst)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of about 3 minutes (1s per scenario, 3 rounds; "
                             "PyPy is still warmed up until its rate settles)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load per scenario and round (default 3; --quick 1)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported (3)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="warm-up seconds per scenario, twice that on PyPy (default 2; --quick 1)")
    parser.add_argument("--pypy-warmup-max", type=float, default=30.0,
                        help="PyPy's warm-up per scenario lasts until three consecutive 1 s "
                             "rates are within --pypy-settle of each other or stop climbing, "
                             "at most this long (30s)")
    parser.add_argument("--pypy-warmup-min", type=float, default=10.0,
                        help="PyPy's warm-up per scenario lasts at least this long (10s)")
    parser.add_argument("--pypy-settle", type=float, default=0.10,
                        help="PyPy's warm-up: how close two 1 s rates must be (0.10: 10%%)")
    parser.add_argument("--compare", metavar="REF", default=None,
                        help="measure git revision REF (side A) against --compare-to (side B), "
                             "interleaved in one run: per scenario both medians, B/A and "
                             "whether the difference is beyond the rounds' spread")
    parser.add_argument("--compare-to", metavar="REF", default=None,
                        help="--compare: side B (default: the working tree)")
    parser.add_argument("--runtimes", default="cpython,pypy", help="cpython,pypy (default both)")
    parser.add_argument("--with-apache", action="store_true",
                        help="also Apache httpd + mod_auth_openidc (scenario X)")
    parser.add_argument("--no-workers", action="store_true", help="skip the workers = 2 scenarios")
    parser.add_argument("--json", default=None,
                        help="write the results here (default bench/results/<time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: profile P and C (sampled on each runtime of --runtimes: "
                             "py-spy on CPython, vmprof on PyPy; or --profiler cprofile)")
    parser.add_argument("--profiler", choices=("sample", "cprofile"), default="sample",
                        help="--profile: sample (default; collapsed stacks kept in the work "
                             "directory) or cprofile (CPython only, twistd --profile)")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-scenarios", default="P,C",
                        help="--profile: which of P, C and L (complete logins; sampled "
                             "profiler only) to profile (default P,C)")
    parser.add_argument("--scale", action="store_true",
                        help="instead: R with 1,000 and with --scale-sessions sessions in Redis")
    parser.add_argument("--scale-sessions", type=int, default=1_000_000,
                        help="the large number of sessions for --scale (1,000,000)")
    parser.add_argument("--populate-processes", type=int, default=2,
                        help="--scale: processes saving sessions at once (2)")
    parser.add_argument("--memory", action="store_true",
                        help="instead: RSS while streaming 100 MB bodies, and over a fixed-rate run")
    parser.add_argument("--memory-minutes", type=float, default=10.0,
                        help="--memory: minutes of the fixed-rate run (10)")
    parser.add_argument("--memory-rate", type=float, default=100.0,
                        help="--memory: requests per second per proxy in the fixed-rate run (100)")
    parser.add_argument("--memory-bytes", type=int, default=100_000_000,
                        help="--memory: bytes each streaming client sends or receives (100 MB)")
    parser.add_argument("--overload", action="store_true",
                        help="instead: 10x the connections a slowed upstream can serve, "
                             "against a normal run")
    parser.add_argument("--h2", action="store_true",
                        help="instead: HTTP/2 against HTTP/1.1 on the same TLS listener, and "
                             "the TLS floor (h2load; about 5 minutes)")
    parser.add_argument("--instructions", action="store_true",
                        help="instead: instructions per request of F, P, C, R and B on CPython, "
                             "counted by valgrind's callgrind (repeatable where rates are noisy; "
                             "with --compare, B/A)")
    parser.add_argument("--instructions-requests", type=int, default=500,
                        help="--instructions: requests counted per scenario and round (500)")
    parser.add_argument("--instructions-warmup", type=int, default=100,
                        help="--instructions: requests before the counters are zeroed (100)")
    parser.add_argument("--overload-seconds", type=float, default=10.0,
                        help="--overload: seconds of each wrk run (10)")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    args.login_duration = max(1.0, min(3.0, args.duration))
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.compare is not None and args.repeats < 3:
        parser.error("--compare needs --repeats 3 or more (the rounds' spread decides what is noise)")
    if args.compare_to is not None and args.compare is None:
        parser.error("--compare-to goes with --compare REF")
    if args.compare is not None and (args.profile or args.scale or args.memory or args.overload
                                     or args.h2):
        parser.error("--compare measures the scenarios of a normal run (or --instructions): "
                     "not with --profile, --scale, --memory, --overload or --h2")
    args.profile_scenarios = [s.strip() for s in args.profile_scenarios.split(",") if s.strip()]
    if not args.profile_scenarios or set(args.profile_scenarios) - {"P", "C", "L"}:
        parser.error("--profile-scenarios takes P, C and L, separated by commas")
    if "L" in args.profile_scenarios and args.profiler == "cprofile":
        parser.error("--profile-scenarios L needs the sampled profiler (--profiler sample)")
    if args.instructions_requests < 1 or args.instructions_warmup < 0:
        parser.error("--instructions-requests must be at least 1, --instructions-warmup at least 0")
    if not 0 <= args.pypy_warmup_min <= args.pypy_warmup_max or not 0 < args.pypy_settle < 1:
        parser.error("--pypy-warmup-min must be between 0 and --pypy-warmup-max, "
                     "--pypy-settle between 0 and 1")
    if sum((args.profile, args.scale, args.memory, args.overload, args.h2,
            args.instructions)) > 1:
        parser.error("--profile, --scale, --memory, --overload, --h2 and --instructions are "
                     "separate runs: one at a time")
    if args.overload_seconds < 1:
        parser.error("--overload-seconds must be at least 1")
    if args.scale_sessions <= 1_000 or args.populate_processes < 1:
        parser.error("--scale-sessions must be above 1,000 and --populate-processes at least 1")
    if args.memory_minutes <= 1 or args.memory_rate <= 0 or args.memory_bytes < 1_000_000:
        parser.error("--memory-minutes must be above 1 (RSS is compared from minute 1 on), "
                     "--memory-rate above 0, --memory-bytes at least 1,000,000")

    workdir = tempfile.mkdtemp(prefix="oidcproxy-bench-")
    children = Children(workdir)
    checkouts = Checkouts(workdir)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    status = 0
    try:
        if args.profile:
            print(profile(args, children, workdir))
            return 0
        if args.overload:
            import overload

            outcome = overload.overload(args, children, workdir)
        elif args.instructions:
            import instructions

            outcome = instructions.instructions(args, children, workdir, checkouts)
        elif args.h2:
            import h2bench

            outcome = h2bench.h2(args, children, workdir)
        elif args.scale or args.memory:
            import extras

            outcome = (extras.scale if args.scale else extras.memory)(args, children, workdir)
        else:
            outcome = run(args, children, workdir, checkouts)
        print(outcome["table"])
        path = args.json or os.path.join(
            HERE, "results", time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + ".json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(outcome, f, indent=2, sort_keys=False)
            f.write("\n")
        say(f"results written to {path} ({outcome['elapsed_s']:.0f}s)")
    except BenchError as e:
        say(f"bench: {e}")
        status = 1
    except KeyboardInterrupt:
        say("bench: interrupted")
        status = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        children.stop_all()
        checkouts.remove()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep or status not in (0, 130) or (
                status == 0 and args.profile and args.profiler == "sample"):
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
