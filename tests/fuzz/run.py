#!/usr/bin/env python3
"""
Run the fuzz targets of L{targets} under atheris (coverage-guided, CPython
only), each for a bounded time, starting from the seed corpus kept in
tests/fuzz/corpus/<target>/.

    python tests/fuzz/run.py                 # every target, 5 seconds each
    python tests/fuzz/run.py --seconds 600   # a longer search
    python tests/fuzz/run.py --target claim_rule --seconds 60

Each target runs in its own process. New interesting inputs go to a
temporary directory, not into the seed corpus (copy the ones worth keeping
there by hand). A crash (an exception other than the parser's documented
one, or a broken invariant) prints the input and the traceback, and the run
exits 1.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NAMES = ["request_target", "cookie_header", "redirect_target", "claim_rule"]


def child(name: str, seconds: int, work: str) -> None:
    """Fuzz one target in this process (atheris exits it when done)."""
    sys.path.insert(0, ROOT)
    import atheris

    with atheris.instrument_imports(include=["oidcproxy"]):
        import oidcproxy.config.policy
        import oidcproxy.oidc.login
        import oidcproxy.proxy.routes  # noqa: F401
    from tests.fuzz.targets import TARGETS

    target = TARGETS[name]

    def one(data: bytes) -> None:
        try:
            target(data)
        except BaseException:
            sys.stderr.write(f"\ncrashing input ({len(data)} bytes): {data!r}\n")
            sys.stderr.flush()
            raise

    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", f"-artifact_prefix={work}/",
                   "-max_len=4096", "-timeout=20", "-rss_limit_mb=2048", corpus,
                   os.path.join(HERE, "corpus", name)], one)
    atheris.Fuzz()


def run(names: Sequence[str], seconds: int) -> int:
    failed: List[str] = []
    total = 0
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as work:
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", name, "--seconds", str(seconds),
                 "--work", work],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                check=False)
            output = done.stdout
            runs = re.search(r"Done (\d+) runs in (\d+) second", output)
            if done.returncode != 0 or runs is None:
                failed.append(name)
                print(f"fuzz: {name}: CRASH (exit {done.returncode})")
                print(output[-6000:])
                continue
            total += int(runs.group(1))
            print(f"fuzz: {name}: {runs.group(1)} inputs in {runs.group(2)} s, no crash")
    if failed:
        print(f"fuzz: crashed: {', '.join(failed)}")
        return 1
    print(f"fuzz: {len(names)} targets, {total} inputs, no crash")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="time per target (default 5)")
    parser.add_argument("--target", action="append", choices=NAMES,
                        help="a target to run (repeatable; default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.seconds, args.work)
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz: atheris is not installed (CPython only: pip install -r requirements-dev.txt)")
        return 2
    return run(args.target or NAMES, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
