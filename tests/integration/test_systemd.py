"""
Integration tests: the real C{twistd oidcproxy} process under the systemd
protocols, with the test playing systemd's part.

  - C{Type=notify}: the test binds the notification socket, passes it in
    C{NOTIFY_SOCKET} and waits for C{READY=1} (and C{STOPPING=1} on SIGTERM).
  - Socket activation: the test binds the listening TCP socket and hands it
    to the proxy as file descriptor 3 with C{LISTEN_FDS}, C{LISTEN_FDNAMES}
    and C{LISTEN_PID}; the proxy adopts it (C{--listen systemd:...}).
  - The unit files in C{etc/} pass C{systemd-analyze verify}.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from http.cookiejar import CookieJar
from typing import Dict, Iterator, List, Optional, Tuple

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.helpers import require_program
from tests.integration import procs

ETC = os.path.join(procs.ROOT, "etc")
UNIT_FILES = ["oidcproxy.service", "oidcproxy.socket", "oidcproxy@.service"]

ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
"""
What systemd does between fork and exec for socket activation: the socket
becomes descriptor 3 and C{LISTEN_PID} names the process itself (exec keeps
the pid, so it still matches in twistd). Run as
C{python -c ACTIVATE FD COMMAND...}.
"""


@contextlib.contextmanager
def environ(values: Dict[str, Optional[str]]) -> Iterator[None]:
    """os.environ with C{values} set (None: unset) for the duration (a spawn)."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class NotifySocket:
    """systemd's notification socket: a bound AF_UNIX datagram socket, read without blocking."""

    def __init__(self, testcase: TestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.sock.close)
        if abstract:
            self.name = "@oidcproxy-it-" + uuid.uuid4().hex
            self.sock.bind("\0" + self.name[1:])
        else:
            # A short path of its own: AF_UNIX paths are limited to 107 bytes.
            directory = tempfile.mkdtemp(prefix="oidcproxy-it-")
            testcase.addCleanup(shutil.rmtree, directory, True)
            self.name = os.path.join(directory, "notify")
            self.sock.bind(self.name)
        self.sock.setblocking(False)
        self.messages: List[str] = []

    def read(self) -> List[str]:
        """Collect what has arrived; every message so far."""
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode("utf-8"))
            except BlockingIOError:
                return self.messages


def read_port_file(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="ascii") as f:
        return f.read()


def http_client(testcase: TestCase) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool, connectTimeout=5), cookiejar=CookieJar())


def twistd_args(config_path: str, listen: str, port_file: str) -> List[str]:
    return procs.twistd_command() + [
        "-n", "--pidfile=", "oidcproxy", "--config", config_path,
        "--listen", listen, "--port-file", port_file,
    ]


class SystemdTestCase(TestCase):
    timeout = 60

    def workdir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def spawn(self, args: List[str], env: Dict[str, Optional[str]],
              pass_fds: Tuple[int, ...] = ()) -> Tuple[procs.Child, str]:
        """Start the proxy (C{args}) with C{env} added to its environment."""
        workdir = self.workdir()
        clean: Dict[str, Optional[str]] = {
            "NOTIFY_SOCKET": None, "LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None,
        }
        with environ({**clean, **env}):
            child = procs.Child("proxy", args, workdir, pass_fds=pass_fds)
        self.addCleanup(child.stop)
        return child, workdir

    async def wait_ready(self, child: procs.Child, notify: NotifySocket,
                         port_file: str) -> Tuple[str, str]:
        """
        Wait for the first notification; it must be READY=1, and the port
        file must exist by then. The message and the port file's content.
        """

        def first() -> Optional[Tuple[str, str]]:
            messages = notify.read()
            if messages:
                # The moment READY=1 is seen, the port file is already there.
                ports = read_port_file(port_file)
                if ports is None:
                    raise AssertionError(f"{messages[0]!r} before the port file was written")
                return messages[0], ports
            if child.process.poll() is not None:
                raise AssertionError("the proxy died at start")
            return None

        try:
            return await procs.poll(first, procs.START_DEADLINE, what="a systemd notification")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{child.describe()}") from None

    async def stop_expecting_stopping(self, child: procs.Child, notify: NotifySocket) -> None:
        """
        SIGTERM: STOPPING=1 arrives and the proxy exits cleanly. twistd ends
        by re-raising the signal that stopped it; systemd counts a SIGTERM
        death after a stop request as success.
        """
        code = await child.stop()
        self.assertIn(code, (0, -signal.SIGTERM), child.describe())
        self.assertIn("Server Shut Down.", child.stdout(), child.describe())
        self.assertEqual(notify.read()[1:], ["STOPPING=1"], child.describe())


class NotifyTests(SystemdTestCase):
    async def check_ready(self, abstract: bool) -> None:
        notify = NotifySocket(self, abstract)
        config = procs.write_config(self, procs.config_text(
            procs.route_config(f"http://127.0.0.1:{procs.refused_port()}")))
        port_file = os.path.join(self.workdir(), "proxy.port")
        child, _ = self.spawn(twistd_args(config, "tcp:0:interface=127.0.0.1", port_file),
                              {"NOTIFY_SOCKET": notify.name})
        message, ports = await self.wait_ready(child, notify, port_file)
        address = ports.splitlines()[0]
        self.assertEqual(message, f"READY=1\nSTATUS=listening on {address}")
        host, _, port = address.rpartition(":")
        # Ready means the port takes connections.
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        # One READY=1, nothing else until the stop.
        await procs.sleep(0.3)
        self.assertEqual(notify.read(), [message])
        await self.stop_expecting_stopping(child, notify)

    async def test_ready_path_socket(self) -> None:
        """Under Type=notify the proxy sends READY=1 once it listens, STOPPING=1 on SIGTERM."""
        await self.check_ready(abstract=False)

    async def test_ready_abstract_socket(self) -> None:
        """The same with a NOTIFY_SOCKET in the abstract namespace ('@...')."""
        await self.check_ready(abstract=True)


class SocketActivationTests(SystemdTestCase):
    async def check_activation(self, listen: str) -> None:
        upstream = await procs.start_upstream(self)
        notify = NotifySocket(self)
        config = procs.write_config(self, procs.config_text(procs.route_config(upstream.url)))
        port_file = os.path.join(self.workdir(), "proxy.port")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            port = listener.getsockname()[1]
            fd = listener.fileno()
            args = [sys.executable, "-c", ACTIVATE, str(fd)] + twistd_args(config, listen, port_file)
            child, _ = self.spawn(
                args,
                {"NOTIFY_SOCKET": notify.name, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"},
                pass_fds=(fd,),
            )
        finally:
            # Only the proxy holds the socket now.
            listener.close()
        message, ports = await self.wait_ready(child, notify, port_file)
        self.assertEqual(ports, f"127.0.0.1:{port}\n")
        self.assertEqual(message, f"READY=1\nSTATUS=listening on 127.0.0.1:{port}")
        self.assertIn(f"listening on {listen} (127.0.0.1:{port})", child.stdout())

        client = http_client(self)
        response = await client.get(f"http://127.0.0.1:{port}/echo/activated", timeout=10)
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        echo = json.loads(body)
        self.assertEqual((echo["method"], echo["uri"]), ("GET", "/echo/activated"))
        await self.stop_expecting_stopping(child, notify)

    async def test_socket_by_index(self) -> None:
        """The socket passed as fd 3 is adopted with systemd:domain=INET:index=0 and proxies."""
        await self.check_activation("systemd:domain=INET:index=0")

    async def test_socket_by_name(self) -> None:
        """... and by its FileDescriptorName with systemd:domain=INET:name=http."""
        await self.check_activation("systemd:domain=INET:name=http")


class UnitFileTests(TestCase):
    timeout = 60

    async def test_verify(self) -> None:
        """
        C{systemd-analyze verify} finds no problem in the three unit files (the
        twistd path replaced by an existing one, which verify insists on).
        """
        analyze = require_program("systemd-analyze", "systemd")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        executable = procs.twistd_command()[0]
        for name in UNIT_FILES:
            with open(os.path.join(ETC, name), encoding="utf-8") as f:
                text = f.read()
            if name.endswith(".service"):
                self.assertIn("\nExecStart=/usr/bin/twistd -n --pidfile= --logger=oidcproxy.logs.text "
                              "oidcproxy --config ", text)
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(text.replace("/usr/bin/twistd", executable))
        paths = [os.path.join(directory, name) for name in
                 ["oidcproxy.service", "oidcproxy.socket", "oidcproxy@demo.service"]]
        out, err, code = await getProcessOutputAndValue(
            analyze, ["verify", "--man=no", *paths], env=dict(os.environ), path=directory)
        text = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        # Unknown keys and bad values are only warnings: there must be none
        # about these units (other units of the machine may have their own).
        ours = [line for line in text.splitlines() if "oidcproxy" in line]
        self.assertEqual(ours, [], text)
