"""
C{bench/run --h2}: what HTTP/2 costs or saves, against HTTP/1.1 on the same
TLS listener (see bench/README.rst, "HTTP/2").

Per runtime, one cookie-session proxy with two listeners, C{tcp:} and
C{ssl:} (a throwaway certificate made here), C{http2 = true}, logged in once
through its real login; and the floor (bench/floor.py) with TLS, offering
C{h2} and C{http/1.1} as the proxy does. The load is h2load (Debian's
nghttp2-client) for every scenario, HTTP/1.1 ones included, so that the
client is the same on both sides of each ratio:

  - C{F1s}: the floor over TLS, HTTP/1.1, 50 connections;
  - C{F2}: the floor over TLS, HTTP/2, 5 connections x 10 streams;
  - C{C1}: the cookie session over plain TCP, HTTP/1.1, 50 connections;
  - C{C1s}: the same over TLS, HTTP/1.1, 50 connections;
  - C{C2}: the same over TLS, HTTP/2, 5 connections x 10 streams;
  - C{C2c}: the same over TLS, HTTP/2, 50 connections x 1 stream.

Each keeps 50 requests in flight, as C{wrk -c50} does in the main run.
The rounds are interleaved, PyPy is warmed up until its rate settles (as in
the main run); reported: req/s, p50 and p99 (from h2load's per-request log),
the serving process's CPU time per request, failed requests, and the ratios
of both.

It uses bench/run.py's processes and helpers; bench/run.py imports it when
it needs it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import browser
import run as bench

THREADS = 2
SCENARIOS = (
    # (name, server, listener, protocol, connections, streams per connection, what)
    ("F1s", "floor", "tls", "http/1.1", 50, 1, "the floor, TLS, HTTP/1.1, 50 connections"),
    ("F2", "floor", "tls", "h2", 5, 10, "the floor, TLS, HTTP/2, 5 connections x 10 streams"),
    ("C1", "proxy", "tcp", "http/1.1", 50, 1, "cookie session, plain TCP, HTTP/1.1, 50 connections"),
    ("C1s", "proxy", "tls", "http/1.1", 50, 1, "cookie session, TLS, HTTP/1.1, 50 connections"),
    ("C2", "proxy", "tls", "h2", 5, 10, "cookie session, TLS, HTTP/2, 5 connections x 10 streams"),
    ("C2c", "proxy", "tls", "h2", 50, 1, "cookie session, TLS, HTTP/2, 50 connections x 1 stream"),
)
RATIOS = (("C2", "C1s"), ("C2c", "C1s"), ("C2", "F2"), ("C1s", "F1s"), ("F2", "F1s"),
          ("C1s", "C1"))


def certificate(workdir: str) -> Tuple[str, str]:
    """A throwaway server certificate and key (tests/pki.py's CA-signed one)."""
    sys.path.insert(0, bench.ROOT)
    try:
        from tests.pki import make_pki
    finally:
        sys.path.remove(bench.ROOT)
    directory = os.path.join(workdir, "pki")
    os.makedirs(directory, exist_ok=True)
    files = make_pki(directory)
    return files["server"], files["server_key"]


class H2Target:
    def __init__(self, scenario: str, runtime: str, url: str, protocol: str, connections: int,
                 streams: int, headers: Dict[str, str], process: bench.Child) -> None:
        self.scenario = scenario
        self.runtime = runtime
        self.url = url
        self.protocol = protocol
        self.connections = connections
        self.streams = streams
        self.headers = headers
        self.process = process
        self.runs: List[Dict[str, Any]] = []
        self.problems: List[str] = []
        self.warmup_rates: List[float] = []
        self.warmup_s: Optional[float] = None
        self.warmup_settled = True

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.runtime}"

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)


def run_h2load(target: H2Target, duration: float, log_file: Optional[str] = None) -> Dict[str, Any]:
    """One h2load run of C{duration} seconds; req/s, p50/p99 (with C{log_file}), failures."""
    args = ["h2load", f"-t{min(THREADS, target.connections)}", f"-c{target.connections}",
            f"-m{target.streams}", f"-D{max(1, round(duration))}"]
    if target.protocol == "http/1.1":
        args.append("--h1")
    for name, value in target.headers.items():
        args += ["-H", f"{name}: {value}"]
    if log_file is not None:
        args.append(f"--log-file={log_file}")
    args.append(target.url)
    result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=duration + 60, check=False)
    output = result.stdout.decode("utf-8", "replace")
    finished = re.search(r"^finished in ([\d.]+)s, ([\d.]+) req/s", output, re.M)
    counts = re.search(r"^requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", output, re.M)
    statuses = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.M)
    if result.returncode != 0 or finished is None or counts is None or statuses is None:
        raise bench.BenchError(f"h2load failed on {target.key}: {output[-1000:]}")
    chosen = re.search(r"^Application protocol: (\S+)", output, re.M)
    if chosen is None or chosen.group(1) != target.protocol:
        target.problem(f"asked for {target.protocol}, the handshake chose "
                       f"{chosen.group(1) if chosen else 'nothing'}")
    done, succeeded = int(counts.group(2)), int(counts.group(3))
    not_2xx = sum(int(statuses.group(i)) for i in (2, 3, 4))
    run: Dict[str, Any] = {"rps": float(finished.group(2)), "requests": done,
                           "failed": done - succeeded, "not_2xx": not_2xx}
    if log_file is not None:
        with open(log_file, encoding="ascii") as f:
            times = sorted(int(line.split("\t")[2]) for line in f if line.count("\t") == 2)
        os.unlink(log_file)
        if times:
            run["p50_ms"] = times[len(times) // 2] / 1000.0
            run["p99_ms"] = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000.0
    return run


def warm_up(target: H2Target, args: argparse.Namespace) -> None:
    """As bench/run.py's warm_up: C{--warmup} s on CPython, on PyPy until the 1 s rates settle."""
    if target.runtime != "pypy":
        run_h2load(target, args.warmup)
        return
    started = time.monotonic()
    minimum = max(args.pypy_warmup_min, args.warmup * 2)
    rates = target.warmup_rates
    while True:
        rates.append(run_h2load(target, 1.0)["rps"])
        elapsed = time.monotonic() - started
        settled = bench.rates_settled(rates, args.pypy_settle)
        if (settled and elapsed >= minimum) or elapsed >= args.pypy_warmup_max:
            break
    target.warmup_settled = settled
    level = statistics.median(rates[-bench.WARMUP_WINDOW:])
    target.warmup_s = next(i + 1 for i, rate in enumerate(rates) if rate >= 0.9 * level)
    bench.say(f"warm-up {target.key}: {len(rates)} s, 1 s rates "
              + " ".join(f"{rate:,.0f}" for rate in rates)
              + ("" if settled else " (not settled)"))


def probe(url: str, headers: Dict[str, str]) -> Optional[str]:
    """None when one HTTP/1.1 request (over TLS for https) gets the upstream's answer."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(parts.hostname or "127.0.0.1", parts.port,
                                                 timeout=5.0, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                                timeout=5.0)
    try:
        connection.request("GET", parts.path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except OSError as e:
        return f"probe failed: {e}"
    finally:
        connection.close()
    if response.status != 200 or bench.UPSTREAM_MARK not in body:
        return f"probe got {response.status} instead of the upstream's 200"
    return None


def summarise(target: H2Target) -> Dict[str, Any]:
    summary: Dict[str, Any] = {
        "rps": bench.median_of(target.runs, "rps"), "p50_ms": bench.median_of(target.runs, "p50_ms"),
        "p99_ms": bench.median_of(target.runs, "p99_ms"),
        "cpu_ms_per_req": bench.median_of(target.runs, "cpu_ms_per_req"),
        "rounds_rps": [round(r["rps"], 1) for r in target.runs],
        "failed": sum(r["failed"] for r in target.runs),
        "not_2xx": sum(r["not_2xx"] for r in target.runs),
        "load": (f"h2load {'--h1 ' if target.protocol == 'http/1.1' else ''}-t{THREADS} "
                 f"-c{target.connections} -m{target.streams}"),
        "problems": target.problems,
    }
    if summary["failed"] or summary["not_2xx"]:
        target.problem(f"over the rounds {summary['failed']} requests failed, "
                       f"{summary['not_2xx']} answers were not 2xx")
    if target.warmup_s is not None:
        summary.update({"warmup_s": target.warmup_s, "warmup_settled": target.warmup_settled,
                        "warmup_rates": [round(r, 1) for r in target.warmup_rates]})
    return summary


def h2(args: argparse.Namespace, children: bench.Children, workdir: str) -> Dict[str, Any]:
    started = time.monotonic()
    if not shutil.which("h2load"):
        raise bench.BenchError("missing: h2load (Debian's nghttp2-client; bench/run installs it)")
    runtimes = bench.preflight(args)
    info = bench.machine()
    info["h2load"] = subprocess.run(["h2load", "--version"], stdout=subprocess.PIPE,
                                    check=False).stdout.decode().strip()
    say = bench.say
    say(f"bench --h2: {', '.join(runtimes)}; {args.repeats} rounds of {args.duration:g}s per "
        f"scenario; work directory {workdir}")
    cert, key = certificate(workdir)
    upstream, _ = bench.start_nginx(children, workdir)
    jwks_file, _ = bench.bearer_material(workdir)
    client_secret = bench.secrets.token_urlsafe(24)
    session_secret = bench.secrets.token_urlsafe(32)
    reserved = {runtime: (bench.reserve_port(), bench.reserve_port()) for runtime in runtimes}
    issuer = bench.start_op(children, [f"http://127.0.0.1:{tcp.getsockname()[1]}/oidc/callback"
                                       for tcp, _ in reserved.values()], client_secret)
    targets: List[H2Target] = []
    for runtime in runtimes:
        child = children.start(f"floor-tls-{runtime}", [
            bench.RUNTIME_PYTHONS[runtime], os.path.join(bench.HERE, "floor.py"),
            "--upstream", upstream, "--tls-cert", cert, "--tls-key", key],
            env=bench.child_env(source_tree=False))
        floor_port = bench.wait_for(partial(bench.port_line, child), bench.START_TIMEOUT,
                                    f"the {runtime} TLS floor's PORT", child)
        tcp, tls = reserved[runtime]
        tcp_port, tls_port = tcp.getsockname()[1], tls.getsockname()[1]
        config = bench.proxy_config(tcp_port, issuer, client_secret, session_secret, "cookie",
                                    upstream, jwks_file)
        listen = f'listen = ["tcp:{tcp_port}:interface=127.0.0.1"]\n'
        assert config.startswith(listen)
        config = (f'listen = ["tcp:{tcp_port}:interface=127.0.0.1", "ssl:{tls_port}:'
                  f'interface=127.0.0.1:privateKey={key}:certKey={cert}"]\nhttp2 = true\n'
                  + config[len(listen):])
        say(f"starting h2-cookie-{runtime}")
        tls.close()
        proxy = bench.start_proxy(children, workdir, f"h2-cookie-{runtime}", runtime, tcp, config)
        cookie, _ = browser.login_cookies(proxy.url + "/bench/login")
        for scenario, server, listener, protocol, connections, streams, _ in SCENARIOS:
            if server == "floor":
                url, headers, process = f"https://127.0.0.1:{floor_port}/f", {}, child
            else:
                base = proxy.url if listener == "tcp" else f"https://127.0.0.1:{tls_port}"
                url, headers, process = base + "/app/h2", {"Cookie": cookie}, proxy.child
            targets.append(H2Target(scenario, runtime, url, protocol, connections, streams,
                                    headers, process))
    for target in targets:
        problem = probe(target.url, target.headers)
        if problem:
            raise bench.BenchError(f"{target.key}: {problem}")
    say(f"ready after {time.monotonic() - started:.0f}s; warming up")
    for target in targets:
        warm_up(target, args)
    log_file = os.path.join(workdir, "h2load-requests.tsv")
    for round_number in range(args.repeats):
        shift = round_number % len(targets)
        for target in targets[shift:] + targets[:shift]:
            cpu_before = bench.cpu_seconds(target.process.pid)
            result = run_h2load(target, args.duration, log_file)
            cpu = bench.cpu_seconds(target.process.pid) - cpu_before
            result["cpu_ms_per_req"] = cpu * 1000.0 / result["requests"] if result["requests"] else None
            target.runs.append(result)
            say(f"round {round_number + 1}/{args.repeats} {target.key}: {result['rps']:,.0f} req/s, "
                f"p50 {bench.fmt(result.get('p50_ms'), 2)} ms, "
                f"p99 {bench.fmt(result.get('p99_ms'), 2)} ms, "
                f"{bench.fmt(result['cpu_ms_per_req'], 3)} ms CPU/request")

    results: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for target in targets:
        results.setdefault(target.scenario, {})[target.runtime] = summarise(target)
    ratios: Dict[str, Dict[str, Optional[float]]] = {}
    for a, b in RATIOS:
        ratios[f"{a}/{b}"] = {runtime: _div(results[a][runtime]["rps"], results[b][runtime]["rps"])
                              for runtime in runtimes}
    cpu_ratios = {f"{a}/{b}": {runtime: _div(results[a][runtime]["cpu_ms_per_req"],
                                             results[b][runtime]["cpu_ms_per_req"])
                               for runtime in runtimes}
                  for a, b in RATIOS}
    if len(runtimes) == 2:
        for scenario, *_ in SCENARIOS:
            ratios[f"{scenario} PyPy/CPython"] = {"pypy": _div(results[scenario]["pypy"]["rps"],
                                                               results[scenario]["cpython"]["rps"])}
    lines = [f"{'':4} {'runtime':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms':>7}  load"]
    for scenario, *_, what in SCENARIOS:
        for runtime in runtimes:
            s = results[scenario][runtime]
            mark = " !" if s["problems"] else "  "
            lines.append(f"{scenario:4} {runtime:8} {s['rps']:>9,.0f} {bench.fmt(s['p50_ms'], 2):>8} "
                         f"{bench.fmt(s['p99_ms'], 2):>8} {bench.fmt(s['cpu_ms_per_req'], 3):>7}"
                         f"{mark}{s['load']}: {what}")
    lines.append("(CPU ms: the serving process's CPU time per request, utime + stime)")
    lines.append("")
    lines.append("ratios (req/s): " + "; ".join(
        f"{name} " + " ".join(f"{runtime} {bench.fmt(value, 2)}" for runtime, value in by.items())
        for name, by in ratios.items()))
    lines.append("ratios (CPU per request): " + "; ".join(
        f"{name} " + " ".join(f"{runtime} {bench.fmt(value, 2)}" for runtime, value in by.items())
        for name, by in cpu_ratios.items()))
    warm = [f"{t.key} {t.warmup_s:g}s" + ("" if t.warmup_settled else " (not settled)")
            for t in targets if t.warmup_s is not None]
    if warm:
        lines.append("PyPy warm-up, seconds of load until the rate reached its settled level: "
                     + ", ".join(warm))
    problems = [f"{t.key}: {p}" for t in targets for p in t.problems]
    if problems:
        lines.append("problems: " + "; ".join(problems))
    lines.append(f"machine: {info['cpu']}, {info['cores']} cores, load average "
                 f"{info['load_before']:.1f} at the start; CPython {info.get('cpython', '-')}, "
                 f"PyPy {info.get('pypy', '-')[:6]}; {info['h2load']}")
    return {"mode": "h2", "machine": info,
            "settings": {"duration_s": args.duration, "repeats": args.repeats,
                         "warmup_s": args.warmup, "h2load_threads": THREADS,
                         "upstream_body_bytes": len(bench.UPSTREAM_BODY)},
            "scenarios": {name: what for name, *_, what in SCENARIOS},
            "results": results, "ratios": ratios, "cpu_ratios": cpu_ratios, "table": "\n".join(lines),
            "elapsed_s": round(time.monotonic() - started, 1)}


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a is not None and b else None
