"""
A real C{redis-server} (or Sentinel) as a child process of a test, on a free
loopback port, without persistence; stopped when the test is cleaned up.

Never the system Redis: each server gets a port of its own (never 6379), a
working directory under the test's temporary directory, and its log on
stdout (the child's stdout file), where the parent waits for
C{Ready to accept connections}. Fault tests pause it (SIGSTOP), resume it
(SIGCONT), kill it (SIGKILL) and start it again on the same port.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import List, Optional, Sequence

from twisted.trial.unittest import TestCase

from tests.helpers import missing, require_program
from tests.integration import procs

START_DEADLINE = 10.0
PORT_ATTEMPTS = 5


def require_redis() -> str:
    """The redis-server executable, or the test fails (or skips) saying to install it."""
    return require_program("redis-server", "redis-server")


def require_tls_redis() -> str:
    """
    The redis-server executable, when its build speaks TLS (Debian's does);
    otherwise the test fails (or skips) saying so.
    """
    server = require_redis()
    # A build without TLS refuses the tls-* options: "Bad directive or wrong
    # number of arguments". Asking for them with files that do not exist
    # makes any build exit at once, with one message or the other.
    result = subprocess.run(
        [server, "--port", "0", "--tls-port", "0", "--save", "", "--loglevel", "warning",
         "--tls-cert-file", "/nonexistent", "--tls-key-file", "/nonexistent"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=10, check=False,
    )
    output = result.stdout.decode("utf-8", "replace")
    if "Bad directive" in output or "wrong number of arguments" in output:
        raise missing(f"{server} was built without TLS (no --tls-port): "
                      f"apt-get install redis-server (Debian's build has TLS)")
    return server


class RedisServer:
    """
    One redis-server child process listening on C{127.0.0.1:port} (and on
    C{tls_port} with TLS when started with C{tls_args}).
    """

    host = "127.0.0.1"

    def __init__(self, testcase: TestCase, workdir: str, extra: Sequence[str],
                 tls_args: Sequence[str] = (), sentinel_conf: Optional[str] = None,
                 ready: str = "Ready to accept connections") -> None:
        self._testcase = testcase
        self.workdir = workdir
        self.extra = list(extra)
        self.tls_args = list(tls_args)
        self.sentinel_conf = sentinel_conf
        self.ready = ready
        self.port = 0
        self.tls_port: Optional[int] = None
        self.child: Optional[procs.Child] = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def _args(self) -> List[str]:
        args = [require_redis()]
        if self.sentinel_conf is not None:
            args += [self.sentinel_conf, "--sentinel"]
        args += ["--port", str(self.port), "--bind", self.host, "--dir", self.workdir,
                 "--logfile", "", "--daemonize", "no"]
        if self.sentinel_conf is None:
            args += ["--save", "", "--appendonly", "no"]
        if self.tls_port is not None:
            args += ["--tls-port", str(self.tls_port), *self.tls_args]
        return args + self.extra

    async def start(self, same_port: bool = False) -> None:
        """Start it (on its previous ports when C{same_port}); wait until it accepts connections."""
        for _ in range(1 if same_port else PORT_ATTEMPTS):
            if not same_port:
                self.port = procs.refused_port()
                if self.tls_args:
                    self.tls_port = procs.refused_port()
            self.starts += 1
            child = procs.Child(f"redis-{self.starts}", self._args(), self.workdir)
            self.child = child
            ready = self.ready

            def up(child: procs.Child = child, ready: str = ready) -> Optional[str]:
                log = child.stdout() + child.stderr()
                if ready in log:
                    return "ready"
                if child.process.poll() is not None:
                    return "taken" if "Address already in use" in log else "died"
                return None

            try:
                state = await procs.poll(up, START_DEADLINE, 0.02, what="redis-server to start")
            except AssertionError as e:
                await self.stop()
                raise AssertionError(f"{e}\n{child.describe()}") from None
            if state == "ready":
                return
            if state == "died":
                raise AssertionError(f"redis-server did not start\n{child.describe()}")
        described = self.child.describe() if self.child else ""
        raise AssertionError(f"redis-server found no free port\n{described}")

    def pause(self) -> None:
        """SIGSTOP: the server hangs; connections stay open, nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the server answers again, what it was sent meanwhile included."""
        os.kill(self.pid, signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone: connections are reset, data is lost."""
        if self.child is not None and self.child.process.poll() is None:
            self.child.process.kill()
            await self.child.wait(procs.STOP_GRACE)

    async def restart(self) -> None:
        """Start a fresh (empty) server on the same port(s); the old one must be gone."""
        await self.start(same_port=True)

    async def stop(self) -> None:
        if self.child is None or self.child.process.poll() is not None:
            return
        try:
            self.resume()  # a stopped process would not act on SIGTERM
        except ProcessLookupError:
            pass
        await self.child.stop()


def _workdir(testcase: TestCase) -> str:
    path = os.path.abspath(testcase.mktemp())
    os.makedirs(path, exist_ok=True)
    return path


async def start_redis(testcase: TestCase, *extra: str, tls_args: Sequence[str] = ()) -> RedisServer:
    """
    Start a redis-server for C{testcase} (the test fails, saying to install
    it, when there is none); stopped at cleanup. C{extra}: more command-line options
    (C{"--requirepass", "secret"}). C{tls_args}: the C{--tls-*} file options,
    to listen with TLS on C{server.tls_port} as well.
    """
    require_redis()
    server = RedisServer(testcase, _workdir(testcase), extra, tls_args)
    testcase.addCleanup(server.stop)
    await server.start()
    return server


async def start_sentinel(testcase: TestCase, master: RedisServer, name: str,
                         password: Optional[str] = None, ready: str = "+monitor master") -> RedisServer:
    """
    A Redis Sentinel watching C{master} under C{name}, alone (quorum 1, down
    after 1 s); C{password} is the master's. Ready once its log shows
    C{ready} (C{"+slave "} to wait until it has found a replica).
    """
    workdir = _workdir(testcase)
    conf = os.path.join(workdir, "sentinel.conf")
    with open(conf, "w", encoding="ascii") as f:
        f.write(
            f"sentinel monitor {name} {master.host} {master.port} 1\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 5000\n"
        )
        if password is not None:
            f.write(f"sentinel auth-pass {name} {password}\n")
    server = RedisServer(testcase, workdir, [], sentinel_conf=conf, ready=ready)
    testcase.addCleanup(server.stop)
    await server.start()
    return server
