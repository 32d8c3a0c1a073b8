"""
twistd under vmprof, for the sampling profile of bench/run --profile on PyPy
(py-spy cannot read PyPy's frames).

    pypy bench/vmprof_twistd.py OUTPUT twistd-arguments...

It runs twistd as bin/twistd would, with two signal handlers: SIGUSR1 starts
sampling into OUTPUT (vmprof's own format), SIGUSR2 stops it. The bench
sends them around the measured load, so start-up and warm-up stay out of the
profile. vmprof comes from bench/requirements-pypy.txt, which bench/run
installs into bench/.venv-profile-pypy (on PYTHONPATH of this process only).
"""

import signal
import sys

import vmprof

PERIOD = 0.001
"""Seconds between samples."""


def main() -> None:
    output = sys.argv[1]
    state = {}

    def start(signum, frame):
        if "file" not in state:
            state["file"] = open(output, "w+b")
            vmprof.enable(state["file"].fileno(), PERIOD)

    def stop(signum, frame):
        f = state.pop("file", None)
        if f is not None:
            vmprof.disable()
            f.close()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["twistd", *sys.argv[2:]]
    # Not bench/ (this file's directory) first on the path: the proxy must
    # not see the bench's modules (run, browser, ...) as top-level names.
    del sys.path[0]
    from twisted.scripts.twistd import run

    try:
        run()
    finally:
        stop(None, None)


if __name__ == "__main__":
    main()
