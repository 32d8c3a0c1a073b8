"""
Start the upstream app and the proxy as real child processes for the
integration tests, and stop them again.

Both listen on a free loopback port (port 0). The upstream's listening socket
is bound here and handed to the child, so its port is known at once and the
proxy can start at the same time; the child prints C{PORT <n>} when it is up.
The proxy writes its bound address to a port file. The parent polls for
either with the reactor (never sleeping in the reactor thread) up to a
deadline, and fails with the child's output if it does not come. Children are
stopped in C{addCleanup}: SIGTERM, then SIGKILL if they linger.

Their stdout and stderr go to files, not pipes: a child that logs a lot can
never block on a full pipe, and a test can read the proxy's log (twistd -n
logs to stdout) at any time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple, TypeVar

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

T = TypeVar("T")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLE_CONFIG = os.path.join(ROOT, "etc", "oidcproxy.toml")
UPSTREAM_APP = os.path.join(HERE, "upstream_app.py")

START_DEADLINE = 20.0
STOP_GRACE = 5.0


def twistd_command() -> List[str]:
    """
    How to run twistd with the Python running the tests.

    C{python -m twisted.scripts.twistd} does nothing (the module has no
    C{__main__} block), so use the C{twistd} script installed beside
    C{sys.executable}, falling back to calling its entry point directly.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The upstream app imports nothing from the project; the proxy must come
    # from the installed package (that is what the plugin scan finds), so the
    # source tree is not put on the path.
    env.pop("PYTHONPATH", None)
    return env


def read_rss(pid: int) -> int:
    """The resident set size of process C{pid}, in bytes (VmRSS in /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                parts = line.split()
                return int(parts[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def refused_port() -> int:
    """A loopback port that nothing listens on: bound, then closed again."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def poll(check: Callable[[], Optional[T]], timeout: float, interval: float = 0.05,
               what: str = "condition") -> T:
    """
    Call C{check} until it returns something other than None (or False),
    waiting C{interval} between calls in the reactor; give up after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await sleep(interval)


async def poll_async(check: Callable[[], Awaitable[Optional[T]]], timeout: float,
                     interval: float = 0.1, what: str = "condition") -> T:
    """L{poll} for a check that is itself asynchronous (an HTTP request, say)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await sleep(interval)


class Child:
    """A child process whose stdout and stderr go to files."""

    def __init__(self, name: str, args: List[str], workdir: str,
                 pass_fds: Tuple[int, ...] = ()) -> None:
        self.name = name
        self.args = args
        os.makedirs(workdir, exist_ok=True)
        self.stdout_path = os.path.join(workdir, f"{name}.stdout")
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=workdir, env=child_env(), pass_fds=pass_fds,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        with open(self.stdout_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def rss(self) -> int:
        return read_rss(self.pid)

    def describe(self) -> str:
        """The child's command, exit status and output, for a failure message."""
        code = self.process.poll()
        state = "still running" if code is None else f"exited with {code}"
        return (
            f"{self.name} ({' '.join(self.args)}) {state}\n"
            f"--- stdout (last 3000 chars) ---\n{self.stdout()[-3000:]}\n"
            f"--- stderr (last 3000 chars) ---\n{self.stderr()[-3000:]}"
        )

    async def wait(self, timeout: float) -> Optional[int]:
        """Wait up to C{timeout} seconds for the child to exit; its status or None."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                return code
            if time.monotonic() >= deadline:
                return None
            await sleep(0.05)

    async def stop(self, grace: float = STOP_GRACE) -> Optional[int]:
        """SIGTERM, and SIGKILL after C{grace} seconds. The exit status."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            code = await self.wait(grace)
            if code is None:
                self.process.kill()
                code = await self.wait(grace)
        return self.process.poll()


def _workdir(testcase: TestCase) -> str:
    path = os.path.abspath(testcase.mktemp())
    os.makedirs(path, exist_ok=True)
    return path


class Proxy:
    """The running proxy: twistd oidcproxy."""

    def __init__(self, child: Child, port: int, config_path: str) -> None:
        self.child = child
        self.port = port
        self.config_path = config_path
        self.url = f"http://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.child.pid

    def rss(self) -> int:
        return self.child.rss()

    def log(self) -> str:
        """What the proxy logged so far (twistd -n logs to stdout)."""
        return self.child.stdout() + self.child.stderr()


class Upstream:
    """
    The upstream app. Its listening socket is bound by the parent, so its
    port is known (and connections queue) before the child is up: the proxy
    can be started meanwhile. L{wait_ready} waits for the child's C{PORT}
    line.
    """

    def __init__(self, child: Child, port: int) -> None:
        self.child = child
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def wait_ready(self) -> None:
        child = self.child

        def ready() -> Optional[bool]:
            for line in child.stdout().splitlines():
                if line.startswith("PORT "):
                    if int(line.split()[1]) != self.port:
                        raise AssertionError(f"the upstream app listens on {line}")
                    return True
            if child.process.poll() is not None:
                raise AssertionError("the upstream app died at start")
            return None

        try:
            await poll(ready, START_DEADLINE, what="the upstream app's PORT line")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{child.describe()}") from None


def spawn_upstream(testcase: TestCase) -> Upstream:
    """
    Start the upstream app on a listening socket bound here; it is stopped
    when the test is cleaned up. Call L{Upstream.wait_ready} before relying
    on it having started.
    """
    workdir = _workdir(testcase)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        child = Child("upstream", [sys.executable, UPSTREAM_APP, "--fd", str(fd)], workdir,
                      pass_fds=(fd,))
    finally:
        listener.close()
    testcase.addCleanup(child.stop)
    return Upstream(child, port)


async def start_upstream(testcase: TestCase) -> Upstream:
    """Start the upstream app and wait until it is up."""
    upstream = spawn_upstream(testcase)
    await upstream.wait_ready()
    return upstream


def write_config(testcase: TestCase, text: str) -> str:
    path = os.path.abspath(testcase.mktemp()) + ".toml"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def route_config(upstream_url: str, path: str = "/", **settings: Any) -> str:
    """One C{[[routes]]} table in TOML; keyword values are written as TOML values."""
    lines = ["[[routes]]", f'path = "{path}"', f'upstream = "{upstream_url}"', 'auth = "none"']
    for key, value in settings.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """C{value} (a bool, number, string or list of them) as a TOML value."""
    return _toml(value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(routes: str, **top: Any) -> str:
    """A whole configuration: top-level keys, then the routes."""
    lines = ['listen = ["tcp:0:interface=127.0.0.1"]']
    for key, value in top.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n\n" + routes


async def start_proxy(testcase: TestCase, config: str,
                      listen: str = "tcp:0:interface=127.0.0.1") -> Proxy:
    """
    Start C{twistd -n oidcproxy} with the configuration text C{config},
    listening on C{listen} (a free loopback port; a test may add options such
    as C{backlog}); it is stopped when the test is cleaned up.
    """
    workdir = _workdir(testcase)
    config_path = os.path.join(workdir, "oidcproxy.toml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(config)
    port_file = os.path.join(workdir, "proxy.port")
    args = twistd_command() + [
        "-n", "--pidfile=", "oidcproxy",
        "--config", config_path,
        "--listen", listen,
        "--port-file", port_file,
    ]
    child = Child("proxy", args, workdir)
    testcase.addCleanup(child.stop)
    return Proxy(child, await listening_port(child, port_file), config_path)


async def listening_port(child: Child, port_file: str) -> int:
    """
    The loopback port the proxy C{child} wrote to C{port_file}
    (C{--port-file}), once it has; fails with the child's output if it ends
    first or takes longer than L{START_DEADLINE}.
    """

    def port() -> Optional[int]:
        if os.path.exists(port_file):
            with open(port_file, encoding="ascii") as f:
                text = f.read()
            # Written atomically: either absent or whole.
            first = text.splitlines()[0] if text.strip() else ""
            host, _, number = first.rpartition(":")
            if host != "127.0.0.1" or not number.isdigit():
                raise AssertionError(f"unexpected port file content {text!r}")
            return int(number)
        if child.process.poll() is not None:
            raise AssertionError(f"the {child.name} died at start")
        return None

    try:
        return await poll(port, START_DEADLINE, what=f"the {child.name}'s port file")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{child.describe()}") from None
