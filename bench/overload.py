"""
C{bench/run --overload}: the proxy at ten times the connections its
upstream can serve (see bench/README.rst, "Overload").

Per runtime, one proxy with a public route to C{bench/slow_upstream.py}
(every answer after a fixed delay) and a small C{max_connections}, so the
upstream, not the proxy's CPU, sets the capacity: C{max_connections / delay}
requests per second. Then, with wrk:

  - C{normal}: C{-c50}, the capacity, with the shipped line
    (C{max_queued} = 16 x max_connections, C{queue_timeout} = 5 s);
  - C{10x}: C{-c500}, ten times the connections, the same proxy;
  - C{10x, timed}: the same against a second proxy whose line is bounded in
    time only (C{max_queued} = 1,000,000, C{queue_timeout} = 5 s);
  - C{10x, unbounded}: the same against a third proxy whose line has no
    practical bound (C{max_queued} = 1,000,000, C{queue_timeout} = the
    route's timeout, 60 s): what the proxy did before the line was bounded;
  - C{40x}, C{40x, timed}, C{40x, unbounded}: the same with C{-c2000}.

Reported per run: requests and 2xx per second, wrk's p50/p99 (of every
answer), the statuses (counted by a wrk Lua script) and socket errors, the
p50/p99 of the answers that were 200 as a separate sequential client saw
them meanwhile (a sample), and the proxy's RSS before, at its peak (sampled
every 0.1 s) and after. A report, not a gate.

It uses bench/run.py's processes and helpers; bench/run.py imports it when
it needs it.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import resource
import statistics
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import extras
import run as bench

from oidcproxy.config import QUEUE_MULTIPLE

DELAY = 0.125
"""Seconds the slow upstream takes for every answer."""
MAX_CONNECTIONS = 50
"""The route's max_connections: with DELAY, a capacity of 400 requests per second."""
NORMAL_CONNECTIONS = 50
UNBOUNDED_QUEUE = 1_000_000
"""max_queued of the lines without a bound in number."""
LINES = {
    "default": "",
    "timed": f"max_queued = {UNBOUNDED_QUEUE}\n",
    "unbounded": f'max_queued = {UNBOUNDED_QUEUE}\nqueue_timeout = "60s"\n',
}
"""The proxies' lines: the route's settings besides max_connections."""
RUNS = (("normal", 1, "default"),
        ("10x", 10, "default"), ("10x, timed", 10, "timed"), ("10x, unbounded", 10, "unbounded"),
        ("40x", 40, "default"), ("40x, timed", 40, "timed"), ("40x, unbounded", 40, "unbounded"))
"""(name, connections as a multiple of NORMAL_CONNECTIONS, the proxy's line)"""

STATUS_SCRIPT = """\
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + count
    end
  end
  for status, count in pairs(total) do
    io.write(string.format("BENCH_STATUS %d %d\\n", status, count))
  end
end
"""
"""bench/run.py's BENCH_RESULT line, plus one BENCH_STATUS line per status code."""


def ram_gb() -> Optional[float]:
    """The machine's memory (MemTotal of /proc/meminfo), in GB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def pypy_version(text: str) -> str:
    """C{3.9.16 (7.3.11)} from what bench/run.py's machine() records for PyPy."""
    numbers = re.findall(r"(?:major|minor|micro)=(\d+)", text)
    return f"{text.split()[0]} ({'.'.join(numbers)})" if len(numbers) == 3 else text


def raise_fd_limit(wanted: int = 65536) -> Tuple[int, int]:
    """Raise this process's soft descriptor limit (inherited by wrk and the proxies); the limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def config(upstream: str, line: str) -> str:
    """The proxy's configuration; L{start_proxy} fills in C{{port}}."""
    text = f"""\
listen = ["tcp:{{port}}:interface=127.0.0.1:backlog=1024"]
public_url = "http://127.0.0.1:{{port}}"

[[routes]]
path = "/"
upstream = "{upstream}"
auth = "none"
max_connections = {MAX_CONNECTIONS}
"""
    return text + LINES[line]


def start_proxy(children: Any, workdir: str, name: str, runtime: str, text: str) -> Any:
    reserved = bench.reserve_port()
    port = int(reserved.getsockname()[1])
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("{port}", str(port)))
    reserved.close()
    child = children.start(name, [bench.twistd(runtime), "-n", "--pidfile=",
                                  "--logger=oidcproxy.logs.text", "oidcproxy", "--config", path],
                           env=bench.child_env(source_tree=True))
    url = f"http://127.0.0.1:{port}"
    bench.wait_for(lambda: bench.reachable(url + "/"), bench.START_TIMEOUT,
                   f"{name} to answer through the slow upstream", child, 0.25)
    return bench.Proxy(name, runtime, child, url, 1)


class Probe:
    """
    A client of its own, one request after another on a keep-alive
    connection while wrk runs: the latency of each answer by status.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: Dict[int, List[float]] = {}
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        parts = urlsplit(self.url)
        connection: Optional[http.client.HTTPConnection] = None
        while not self._stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                                        timeout=30)
            started = time.monotonic()
            try:
                connection.request("GET", parts.path or "/")
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self.failures += 1
                connection.close()
                connection = None
                continue
            self.samples.setdefault(response.status, []).append(time.monotonic() - started)
            if response.will_close:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def stop(self) -> Dict[str, Any]:
        self._stop.set()
        self._thread.join()
        ok = sorted(self.samples.get(200, []))

        def quantile(q: float) -> Optional[float]:
            if not ok:
                return None
            return round(ok[min(len(ok) - 1, int(q * len(ok)))] * 1000.0, 1)

        return {"ok_p50_ms": round(statistics.median(ok) * 1000.0, 1) if ok else None,
                "ok_p99_ms": quantile(0.99), "ok_max_ms": quantile(1.0),
                "statuses": {str(k): len(v) for k, v in sorted(self.samples.items())},
                "failures": self.failures}


def run_wrk(url: str, connections: int, duration: float, script: str) -> Dict[str, Any]:
    args = ["wrk", f"-t{bench.WRK_THREADS}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "30s", "-s", script, url]
    result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=duration + 60, check=False)
    output = result.stdout.decode("utf-8", "replace")
    match = re.search(r"^BENCH_RESULT ([\d ]+)$", output, re.M)
    if result.returncode != 0 or match is None:
        raise bench.BenchError(f"wrk -c{connections} failed: {output[-1000:]}")
    requests, duration_us, p50, p99, *errors = (int(n) for n in match.group(1).split())
    statuses = {int(s): int(n) for s, n in re.findall(r"^BENCH_STATUS (\d+) (\d+)$", output, re.M)}
    seconds = duration_us / 1e6
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "connections": connections,
        "rps": requests / seconds,
        "ok_rps": ok / seconds,
        "p50_ms": p50 / 1000.0,
        "p99_ms": p99 / 1000.0,
        "requests": requests,
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "errors": {k: v for k, v in zip(("connect", "read", "write", "status", "timeout"), errors)
                   if v},
    }


def measured(proxy: Any, connections: int, duration: float, script: str) -> Dict[str, Any]:
    """One wrk run against C{proxy}, with the probe and the RSS sampler beside it."""
    pid = proxy.child.pid
    before = bench.rss_mb(pid)
    sampler = extras.RSSSampler(pid)
    probe = Probe(proxy.url + "/probe")
    result = run_wrk(proxy.url + "/load", connections, duration, script)
    result["probe"] = probe.stop()
    peak = sampler.stop()
    time.sleep(1.0)
    result["rss_mb"] = {"before": round(before, 1), "peak": round(peak, 1),
                        "after": round(bench.rss_mb(pid), 1)}
    return result


def row(runtime: str, name: str, r: Dict[str, Any]) -> str:
    statuses = " ".join(f"{s}:{n}" for s, n in r["statuses"].items()) or "-"
    errors = " ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "-"
    probe = r["probe"]
    rss = r["rss_mb"]
    return (f"  {runtime:<8} {name:<16} {r['connections']:>5} {r['rps']:>7,.0f} {r['ok_rps']:>7,.0f} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>8.1f} {bench.fmt(probe['ok_p50_ms'], 1):>7} "
            f"{bench.fmt(probe['ok_p99_ms'], 1):>8}  {rss['before']:>5} {rss['peak']:>5} "
            f"{rss['after']:>5}  {statuses}; socket errors {errors}")


def overload(args: argparse.Namespace, children: Any, workdir: str) -> Dict[str, Any]:
    runtimes = bench.preflight(args)
    started = time.monotonic()
    limits = raise_fd_limit()
    info = bench.machine()
    info["nofile"] = list(limits)
    info["ram_gb"] = ram_gb()
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    slow = children.start("slow-upstream", [bench.RUNTIME_PYTHONS["cpython"],
                                            os.path.join(bench.HERE, "slow_upstream.py"),
                                            "--delay", str(DELAY)],
                          env=bench.child_env(source_tree=False))
    port = bench.wait_for(lambda: bench.port_line(slow), bench.START_TIMEOUT,
                          "the slow upstream's PORT line", slow)
    upstream = f"http://127.0.0.1:{port}"
    script = os.path.join(workdir, "statuses.lua")
    with open(script, "w", encoding="ascii") as f:
        f.write(STATUS_SCRIPT)
    duration = args.overload_seconds
    results: Dict[str, Dict[str, Any]] = {}
    for runtime in runtimes:
        bench.say(f"overload/{runtime}: starting the proxies")
        proxies = {line: start_proxy(children, workdir, f"overload-{line}-{runtime}", runtime,
                                     config(upstream, line)) for line in LINES}
        # PyPy's JIT needs longer; the refusals' code path is warmed up too.
        warmup = max(args.warmup, 5.0) * (2 if runtime == "pypy" else 1)
        for proxy in proxies.values():
            run_wrk(proxy.url + "/warmup", NORMAL_CONNECTIONS, warmup, script)
            run_wrk(proxy.url + "/warmup", NORMAL_CONNECTIONS * 10, warmup / 2, script)
        runs: Dict[str, Any] = {}
        for name, factor, line in RUNS:
            r = runs[name] = measured(proxies[line], NORMAL_CONNECTIONS * factor, duration, script)
            bench.say(f"overload/{runtime} {name}: {r['rps']:,.0f} req/s ({r['ok_rps']:,.0f} 2xx), "
                      f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, statuses {r['statuses']}, "
                      f"RSS peak {r['rss_mb']['peak']} MB")
        for proxy in proxies.values():
            proxy.child.stop()
        results[runtime] = runs
    capacity = MAX_CONNECTIONS / DELAY
    lines = [
        f"overload: upstream answers after {DELAY * 1000:g} ms, route max_connections = "
        f"{MAX_CONNECTIONS} (capacity {capacity:,.0f} req/s); max_queued = "
        f"{QUEUE_MULTIPLE * MAX_CONNECTIONS} (the default, {QUEUE_MULTIPLE} x), queue_timeout = 5s "
        "(the default); timed: "
        f"max_queued = {UNBOUNDED_QUEUE:,}; unbounded: also queue_timeout = 60s; "
        f"wrk -t{bench.WRK_THREADS}, {duration:g}s per run",
        f"  {'runtime':<8} {'run':<16} {'conns':>5} {'req/s':>7} {'2xx/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>8} {'200 p50':>7} {'200 p99':>8}  {'RSS MB: before, peak, after':<17}  "
        "statuses; socket errors",
    ]
    for runtime in runtimes:
        for name, r in results[runtime].items():
            lines.append(row(runtime, name, r))
    lines.append("  (p50/p99: wrk, every answer; 200 p50/p99: a sequential client's answers "
                 "that were 200, during the same run)")
    lines.append(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB RAM, load "
                 f"average {info['load_before']:.1f} at the start; CPython "
                 f"{info.get('cpython', '-')}, PyPy {pypy_version(info.get('pypy', '-'))}; descriptors "
                 f"{limits[0]}; {info['date']}")
    return {
        "machine": info,
        "settings": {"mode": "overload", "delay_s": DELAY, "max_connections": MAX_CONNECTIONS,
                     "capacity_rps": capacity, "normal_connections": NORMAL_CONNECTIONS,
                     "runs": [[name, NORMAL_CONNECTIONS * f, u] for name, f, u in RUNS],
                     "duration_s": duration,
                     "unbounded_max_queued": UNBOUNDED_QUEUE,
                     "pypy_gc_max": bench.child_env(False).get("PYPY_GC_MAX")},
        "results": results,
        "elapsed_s": round(time.monotonic() - started, 1),
        "table": "\n".join(lines),
    }
