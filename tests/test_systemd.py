"""
Tests for L{oidcproxy.systemd}: C{sd_notify} over a real C{AF_UNIX}
datagram socket, and the notifications L{ProxyService} sends.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from typing import Dict, List, Optional

from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import parse_config
from oidcproxy.service import ProxyService, descriptors_needed
from oidcproxy.systemd import notify

from .helpers import set_env

CONFIG = parse_config(
    {"routes": [{"path": "/", "upstream": "http://127.0.0.1:9", "auth": "none"}]}, "t.toml"
)


class Receiver:
    """A bound C{AF_UNIX} datagram socket standing in for systemd's."""

    def __init__(self, case: SynchronousTestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        case.addCleanup(self.sock.close)
        if abstract:
            self.name = "@oidcproxy-test-" + uuid.uuid4().hex
            self.sock.bind("\0" + self.name[1:])
        else:
            # Not trial's temp directory: AF_UNIX paths are limited to 107 bytes.
            directory = tempfile.mkdtemp(prefix="oidcproxy-sd-")
            case.addCleanup(shutil.rmtree, directory, True)
            self.name = os.path.join(directory, "notify")
            self.sock.bind(self.name)
        self.sock.setblocking(False)

    def received(self) -> List[bytes]:
        """Every datagram that has arrived so far."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536))
            except BlockingIOError:
                return out


def capture_log(case: SynchronousTestCase) -> List[dict]:
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def notify_events(events: List[dict]) -> List[dict]:
    return [e for e in events if e.get("log_namespace") == "oidcproxy.systemd"]


class NotifyTests(SynchronousTestCase):
    def test_path_socket(self):
        """The message is sent as one datagram, exactly, to the socket's path."""
        receiver = Receiver(self)
        message = "READY=1\nSTATUS=listening on 127.0.0.1:8080"
        self.assertTrue(notify(message, {"NOTIFY_SOCKET": receiver.name}))
        self.assertEqual(receiver.received(), [message.encode("utf-8")])

    def test_abstract_socket(self):
        """A name starting with '@' is a socket in the abstract namespace."""
        receiver = Receiver(self, abstract=True)
        self.assertTrue(notify("STOPPING=1", {"NOTIFY_SOCKET": receiver.name}))
        self.assertEqual(receiver.received(), [b"STOPPING=1"])

    def test_utf8(self):
        """The message goes as UTF-8."""
        receiver = Receiver(self)
        self.assertTrue(notify("STATUS=caf\u00e9", {"NOTIFY_SOCKET": receiver.name}))
        self.assertEqual(receiver.received(), ["STATUS=caf\u00e9".encode()])

    def test_os_environ_at_call_time(self):
        """Without an environ argument, os.environ is read when notify is called."""
        receiver = Receiver(self)
        set_env(self, {"NOTIFY_SOCKET": receiver.name})
        self.assertTrue(notify("READY=1"))
        self.assertEqual(receiver.received(), [b"READY=1"])

    def test_without_notify_socket(self):
        """No NOTIFY_SOCKET (or an empty one): nothing is sent, nothing logged, False."""
        events = capture_log(self)
        receiver = Receiver(self)
        set_env(self, {"NOTIFY_SOCKET": None})
        self.assertFalse(notify("READY=1"))
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": ""}))
        self.assertEqual(receiver.received(), [])
        self.assertEqual(notify_events(events), [])

    def assertFailsQuietly(self, name: str, message: str = "READY=1") -> dict:
        """notify returns False, does not raise, and logs exactly one line."""
        events = capture_log(self)
        self.assertFalse(notify(message, {"NOTIFY_SOCKET": name}))
        logged = notify_events(events)
        self.assertEqual(len(logged), 1, logged)
        self.assertIsNone(logged[0].get("log_failure"))
        self.assertEqual(logged[0]["socket"], name)
        return logged[0]

    def test_dead_socket(self):
        """A socket file nobody reads any more: False and one log line, no exception."""
        receiver = Receiver(self)
        receiver.sock.close()
        event = self.assertFailsQuietly(receiver.name)
        self.assertIsInstance(event["error"], ConnectionRefusedError)
        self.assertEqual(event["notification"], "READY=1")

    def test_missing_socket(self):
        """A path that does not exist: False and one log line."""
        directory = tempfile.mkdtemp(prefix="oidcproxy-sd-")
        self.addCleanup(shutil.rmtree, directory, True)
        event = self.assertFailsQuietly(os.path.join(directory, "gone"))
        self.assertIsInstance(event["error"], FileNotFoundError)

    def test_dead_abstract_socket(self):
        """An abstract name nobody listens on: False and one log line."""
        self.assertFailsQuietly("@oidcproxy-test-nobody-" + uuid.uuid4().hex)

    def test_not_a_socket(self):
        """A regular file: False and one log line."""
        directory = tempfile.mkdtemp(prefix="oidcproxy-sd-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "file")
        with open(path, "w"):
            pass
        self.assertFailsQuietly(path)

    def test_unsupported_address(self):
        """A relative path or another address family: False and one log line."""
        self.assertFailsQuietly("relative/notify")
        self.assertFailsQuietly("vsock:2:1234")

    def test_logs_first_line_only(self):
        """The log names the message by its first line (a STATUS line can be long)."""
        event = self.assertFailsQuietly("relative", "READY=1\nSTATUS=listening on x")
        self.assertEqual(event["notification"], "READY=1")

    def test_too_large(self):
        """A message larger than a datagram may be: False, no exception."""
        receiver = Receiver(self)
        self.assertFailsQuietly(receiver.name, "STATUS=" + "x" * 4_000_000)
        self.assertEqual(receiver.received(), [])


class ProxyServiceNotifyTests(SynchronousTestCase):
    def setUp(self):
        self.receiver = Receiver(self)
        set_env(self, {"NOTIFY_SOCKET": self.receiver.name})

    def test_ready_after_every_listener(self):
        """READY=1, with the addresses as STATUS, only once the last listener is up."""
        reactor = MemoryReactor()
        directory = tempfile.mkdtemp(prefix="oidcproxy-sd-")
        self.addCleanup(shutil.rmtree, directory, True)
        port_file = os.path.join(directory, "ports")
        service = ProxyService(CONFIG, reactor, ["tcp:8081:interface=127.0.0.1",
                                                 "tcp:8082:interface=127.0.0.1"], port_file)
        # The second listener comes up late.
        late = service.listeners[1]
        up = late._listened
        pending: List[object] = []
        late._listened = pending.append
        service.privilegedStartService()
        self.assertEqual(len(pending), 1)
        self.assertEqual(self.receiver.received(), [])
        self.assertFalse(os.path.exists(port_file))

        up(pending[0])
        self.assertEqual(self.receiver.received(),
                         [b"READY=1\nSTATUS=listening on 0.0.0.0:8081, 0.0.0.0:8082"])
        # The port file is written first: whoever is told "ready" can read it.
        self.assertTrue(os.path.exists(port_file))

    def test_ready_without_port_file(self):
        """READY=1 does not depend on --port-file."""
        service = ProxyService(CONFIG, MemoryReactor(), ["tcp:8081"])
        service.privilegedStartService()
        self.assertEqual(self.receiver.received(),
                         [b"READY=1\nSTATUS=listening on 0.0.0.0:8081"])

    def test_stopping(self):
        """Stopping the service sends STOPPING=1 first, then stops the listeners."""
        service = ProxyService(CONFIG, MemoryReactor(), ["tcp:8081"])
        service.privilegedStartService()
        service.startService()
        self.receiver.received()
        port = service.listeners[0].port
        seen_at_stop: List[Optional[List[bytes]]] = []
        port.stopListening = lambda: seen_at_stop.append(self.receiver.received())
        self.successResultOf(service.stopService())
        self.assertEqual(seen_at_stop, [[b"STOPPING=1"]])

    def test_unreachable_socket_does_not_stop_the_proxy(self):
        """A NOTIFY_SOCKET that cannot be reached is logged; start and stop go on."""
        events = capture_log(self)
        self.receiver.sock.close()
        service = ProxyService(CONFIG, MemoryReactor(), ["tcp:8081"])
        service.privilegedStartService()
        service.startService()
        self.assertIsNotNone(service.listeners[0].port)
        self.successResultOf(service.stopService())
        self.assertEqual([e["notification"] for e in notify_events(events)],
                         ["READY=1", "STOPPING=1"])

    def test_reload_notifications(self):
        """A reload is framed by RELOADING=1 (with MONOTONIC_USEC) and READY=1, valid or not."""
        import time

        directory = tempfile.mkdtemp(prefix="oidcproxy-sd-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "c.toml")
        with open(path, "w") as f:
            f.write('[[routes]]\npath = "/"\nupstream = "http://127.0.0.1:9"\nauth = "none"\n')
        service = ProxyService(CONFIG, MemoryReactorClock(), ["tcp:8081"], config_path=path)
        for content_ok in (True, False):
            if not content_ok:
                with open(path, "w") as f:
                    f.write("routes = 3\n")
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.assertEqual(service.reload(), content_ok)
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            first, second = self.receiver.received()
            self.assertEqual(second, b"READY=1")
            head, usec = first.split(b"\n")
            self.assertEqual(head, b"RELOADING=1")
            self.assertTrue(usec.startswith(b"MONOTONIC_USEC="))
            self.assertTrue(before <= int(usec.split(b"=")[1]) <= after)

    def test_no_notify_socket(self):
        """Not under systemd: nothing is sent or logged."""
        events = capture_log(self)
        set_env(self, {"NOTIFY_SOCKET": None})
        service = ProxyService(CONFIG, MemoryReactor(), ["tcp:8081"])
        service.privilegedStartService()
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(self.receiver.received(), [])
        self.assertEqual(notify_events(events), [])


ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")


def unit_settings(name: str) -> Dict[str, List[str]]:
    """The C{Key=value} lines of a unit file in C{etc/} (every value of a repeated key)."""
    settings: Dict[str, List[str]] = {}
    with open(os.path.join(ETC, name), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


class UnitFileTests(SynchronousTestCase):
    """The shipped unit files keep what the proxy and the docs rely on."""

    HARDENING = {
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "no",
        "SystemCallArchitectures": "native", "CapabilityBoundingSet": "",
        "Type": "notify", "Restart": "on-failure", "RestartSec": "2",
    }

    def check_service(self, name: str, config: str, credentials: str) -> None:
        settings = unit_settings(name)
        for key, value in self.HARDENING.items():
            self.assertEqual(settings.get(key), [value], key)
        self.assertIn("TimeoutStopSec", settings)
        self.assertEqual(settings["ExecStart"],
                         [f"/usr/bin/twistd -n --pidfile= --logger=oidcproxy.logs.text oidcproxy "
                          f"--config {config}"])
        self.assertEqual(sorted(settings["LoadCredential"]), [
            f"client-secret:{credentials}/client-secret",
            f"session-key:{credentials}/session-key",
        ])
        self.assertNotIn("AmbientCapabilities", settings)
        # Room for the open files the default connection caps may need.
        defaults = parse_config({"routes": [{"path": "/", "upstream": "http://127.0.0.1:9",
                                             "auth": "none"}]}, "t.toml")
        self.assertGreaterEqual(int(settings["LimitNOFILE"][0]), descriptors_needed(defaults))

    def test_service(self):
        """oidcproxy.service: Type=notify, the twistd command, credentials, sandboxing."""
        self.check_service("oidcproxy.service", "/etc/oidcproxy/oidcproxy.toml",
                           "/etc/oidcproxy/credentials")

    def test_template(self):
        """oidcproxy@.service: the same per instance, from /etc/oidcproxy/%i.toml."""
        self.check_service("oidcproxy@.service", "/etc/oidcproxy/%i.toml",
                           "/etc/oidcproxy/credentials/%i")

    def test_socket(self):
        """oidcproxy.socket listens on 127.0.0.1:8080 and names the endpoint to use."""
        self.assertEqual(unit_settings("oidcproxy.socket")["ListenStream"], ["127.0.0.1:8080"])
        with open(os.path.join(ETC, "oidcproxy.socket"), encoding="utf-8") as f:
            self.assertIn('listen = ["systemd:domain=INET:index=0"]', f.read())
