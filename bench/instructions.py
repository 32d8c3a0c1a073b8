"""
C{bench/run --instructions}: what one request costs the serving process, in
CPU instructions counted by valgrind's callgrind (see bench/README.rst,
"Instructions per request").

Request rates on a shared 2-core machine move by 10-30 % from run to run;
an instruction count does not: for the same code, inputs and interpreter it
repeats to a fraction of a percent whatever else the machine is doing. So a
change's effect on our own cost (our code and our calls into Twisted) is
read here, and the rates of C{bench/run} say what it is worth in time.

Per revision (the working tree, or with C{--compare} A and B), on CPython:
the floor (C{bench/floor.py}, F), and oidcproxy's public route (P), cookie
session (C), Redis session (R) and cached bearer token (B), each process run
under C{valgrind --tool=callgrind --instr-atstart=no} with
C{PYTHONHASHSEED=0}. Per scenario and round: instrumentation on, a warm-up
of C{--instructions-warmup} requests on one keep-alive connection, counters
zeroed, C{--instructions-requests} requests, a dump, instrumentation off;
instructions per request = the dump's total / requests. Reported: the
median of the rounds, their spread, B/A with C{--compare}, and F/X, the
floor's count over the scenario's (1.00: as cheap as the floor). The
client is this script (http.client, sequential), outside valgrind.

It uses bench/run.py's processes and helpers; bench/run.py imports it when
it needs it.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import browser
import run as bench

SCENARIOS = ("F", "P", "C", "R", "B")
START_TIMEOUT = 240.0
"""Seconds a process under valgrind may take to listen (its start runs ~10x slower)."""
_TOTAL = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.M)


class Counted:
    """A process under callgrind and where its dumps go."""

    def __init__(self, name: str, child: bench.Child, out: str) -> None:
        self.name = name
        self.child = child
        self.out = out

    def control(self, *args: str) -> None:
        result = subprocess.run(["callgrind_control", *args, str(self.child.pid)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=120, check=False)
        text = result.stdout.decode("utf-8", "replace")
        if result.returncode != 0 or "OK." not in text:
            raise bench.BenchError(f"callgrind_control {' '.join(args)} for {self.name} "
                                   f"failed: {text.strip()[-300:]}")

    def dumped(self, before: Sequence[str]) -> int:
        """The instruction total of the dump written since C{before} (the dumps then)."""
        new = sorted(set(glob.glob(self.out + ".*")) - set(before),
                     key=lambda path: int(path.rsplit(".", 1)[1]))
        if not new:
            raise bench.BenchError(f"{self.name}: callgrind wrote no dump")
        with open(new[-1], "rb") as f:
            found = _TOTAL.search(f.read())
        if found is None:
            raise bench.BenchError(f"{self.name}: no total in {new[-1]}")
        return int(found.group(1))


def valgrind(out: str) -> List[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}", "--dump-instr=no", "--collect-jumps=no"]


def counted_env(tree: str) -> Dict[str, str]:
    env = bench.child_env(source_tree=True, tree=tree)
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
    return env


class Load:
    """Sequential requests on one keep-alive connection, each checked."""

    def __init__(self, url: str, headers: Dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        self.headers = dict(headers)
        self.connection: Optional[http.client.HTTPConnection] = None

    def send(self, count: int) -> None:
        for _ in range(count):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.connection.request("GET", self.path, headers=self.headers)
            answer = self.connection.getresponse()
            body = answer.read()
            if answer.status != 200 or bench.UPSTREAM_MARK not in body:
                raise bench.BenchError(f"GET {self.path} answered {answer.status}, "
                                       "not the upstream's 200")
            if answer.will_close:
                self.connection.close()
                self.connection = None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def count(process: Counted, load: Load, warmup: int, requests: int) -> float:
    """Instructions per request of C{process} serving C{load}."""
    process.control("-i", "on")
    try:
        load.send(warmup)
        process.control("-z")
        before = glob.glob(process.out + ".*")
        load.send(requests)
        process.control("-d")
        total = process.dumped(before)
    finally:
        load.close()
        process.control("-i", "off")
    return total / requests


def instructions(args: argparse.Namespace, children: bench.Children, workdir: str,
                 checkouts: bench.Checkouts) -> Dict[str, Any]:
    started = time.monotonic()
    for program, package in (("valgrind", "valgrind"), ("callgrind_control", "valgrind")):
        if shutil.which(program) is None:
            raise bench.BenchError(f"--instructions needs {program} (apt-get install {package})")
    python = bench.RUNTIME_PYTHONS["cpython"]
    sides = bench.sides_of(args, checkouts)
    bench.say(f"bench --instructions: CPython under callgrind; {args.repeats} rounds of "
              f"{args.instructions_requests} requests after {args.instructions_warmup}; "
              f"work directory {workdir}")
    upstream, _ = bench.start_nginx(children, workdir)
    redis_url = bench.start_redis(children, workdir)
    jwks_file, token = bench.bearer_material(workdir)
    client_secret = secrets.token_urlsafe(24)
    session_secret = secrets.token_urlsafe(32)
    plan = [(side, store) for side in sides for store in ("cookie", "redis")]
    reserved = {(side.label, store): bench.reserve_port() for side, store in plan}
    issuer = bench.start_op(children, [f"http://127.0.0.1:{s.getsockname()[1]}/oidc/callback"
                                       for s in reserved.values()], client_secret)

    out = os.path.join(workdir, "callgrind-floor.out")
    child = children.start("floor-callgrind", [*valgrind(out), python,
                                               os.path.join(bench.HERE, "floor.py"),
                                               "--upstream", upstream],
                           env=counted_env(bench.ROOT))
    port = bench.wait_for(lambda: bench.port_line(child), START_TIMEOUT, "the floor's PORT", child)
    floor = Counted("floor", child, out)
    targets: List[Tuple[str, str, Counted, Load]] = [
        ("F", "", floor, Load(f"http://127.0.0.1:{port}/f", {}))]
    twistd = bench.twistd("cpython")
    for side, store in plan:
        name = side.name(f"callgrind-{store}")
        out = os.path.join(workdir, f"{name}.out")
        socket_ = reserved.pop((side.label, store))
        config = bench.proxy_config(socket_.getsockname()[1], issuer, client_secret,
                                    session_secret, store, upstream, jwks_file,
                                    redis_url if store == "redis" else None)
        bench.say(f"starting {name} (under valgrind: slow)")
        proxy = bench.start_proxy(children, workdir, name, "cpython", socket_, config,
                                  tree=side.tree, command=[*valgrind(out), python, twistd],
                                  env=counted_env(side.tree), start_timeout=START_TIMEOUT)
        cookie, _ = browser.login_cookies(proxy.url + "/bench/login")
        counted = Counted(name, proxy.child, out)
        if store == "cookie":
            targets += [("P", side.label, counted, Load(proxy.url + "/public/p", {})),
                        ("C", side.label, counted, Load(proxy.url + "/app/c", {"Cookie": cookie})),
                        ("B", side.label, counted,
                         Load(proxy.url + "/api/b", {"Authorization": f"Bearer {token}"}))]
        else:
            targets.append(("R", side.label, counted, Load(proxy.url + "/app/r",
                                                           {"Cookie": cookie})))

    runs: Dict[Tuple[str, str], List[float]] = {}
    for round_number in range(args.repeats):
        shift = round_number % len(targets)
        for scenario, label, process, load in targets[shift:] + targets[:shift]:
            per_request = count(process, load, args.instructions_warmup,
                                args.instructions_requests)
            runs.setdefault((scenario, label), []).append(per_request)
            bench.say(f"round {round_number + 1}: {scenario}{'/' + label if label else ''} "
                      f"{per_request:,.0f} instructions per request")
    results = {f"{scenario}/{label}" if label else scenario: summarise(values)
               for (scenario, label), values in runs.items()}
    outcome: Dict[str, Any] = {
        "machine": bench.machine(),
        "settings": {"requests": args.instructions_requests, "warmup": args.instructions_warmup,
                     "repeats": args.repeats, "python": platform.python_version(),
                     "counter": "valgrind --tool=callgrind (Ir), PYTHONHASHSEED=0"},
        "sides": {side.label or "-": side.description for side in sides},
        "results": results,
        "table": table(results, sides),
    }
    outcome["elapsed_s"] = round(time.monotonic() - started, 1)
    return outcome


def summarise(values: Sequence[float]) -> Dict[str, Any]:
    median = statistics.median(values)
    return {"per_request": round(median), "runs": [round(v) for v in values],
            "spread": round((max(values) - min(values)) / median, 4) if median else 0.0}


def table(results: Dict[str, Dict[str, Any]], sides: Sequence[bench.Side]) -> str:
    floor = results["F"]["per_request"]
    labels = [side.label for side in sides]
    lines = [f"instructions per request, the serving process (callgrind, CPython "
             f"{platform.python_version()}); spread = (max - min) / median of the rounds"]
    head = "    " + "".join(f"{(label or 'count'):>14} {'spread':>7} {'F/X':>5}"
                            for label in labels)
    if len(labels) == 2:
        head += f" {'B/A':>6}"
    lines.append(head)
    lines.append(f"F   {floor:>14,} {results['F']['spread']:>7.2%} {1:>5.2f}")
    for scenario in SCENARIOS[1:]:
        cells = ""
        values = []
        for label in labels:
            found = results.get(f"{scenario}/{label}" if label else scenario)
            if found is None:
                cells += f"{'-':>14} {'':>7} {'':>5}"
                continue
            values.append(found["per_request"])
            cells += (f"{found['per_request']:>14,} {found['spread']:>7.2%} "
                      f"{floor / found['per_request']:>5.2f}")
        if len(labels) == 2 and len(values) == 2:
            cells += f" {values[1] / values[0]:>6.3f}"
        lines.append(f"{scenario}   {cells}")
    for side in sides:
        if side.label:
            lines.append(f"{side.label}: {side.description}")
    lines.append("F/X: the floor's instructions over the scenario's (1.00: as cheap as the floor)")
    return "\n".join(lines)

