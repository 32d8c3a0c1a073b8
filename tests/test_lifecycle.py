"""
Tests for the proxy's life cycle: the drain of L{oidcproxy.web.server.ProxySite}
at shutdown, L{oidcproxy.service.ProxyService}'s stop sequence, serving on
inherited sockets (L{oidcproxy.service.AdoptedListenerService}) and the
parent of several workers (L{oidcproxy.workers.WorkerPool}), driven with a
fake process spawner and a L{Clock}.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import socket
import sys
from typing import Any, Dict, List

import attr
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogLevel, eventAsJSON, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy import service as service_module
from oidcproxy.config import MAX_WORKERS, AdminConfig, ConfigError, MetricsConfig, Secret, parse_config
from oidcproxy.service import (
    AdoptedListenerService,
    ListenError,
    ProxyService,
    _tls_options,
    descriptors_needed,
    fatal,
    raise_descriptor_limit,
    startup_checks,
)
from oidcproxy.workers import READY_KEY, RESTART_DELAYS, SPEC_VARIABLE, WorkerPool, main
from tests.test_server import Recorder, SiteHarness, large_limit

from .fakes import SECRET
from .pki import make_pki


def request_on(h: SiteHarness, path: bytes = b"/x") -> None:
    h.send(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")


class DrainTests(SynchronousTestCase):
    def test_idle_connection_closed_at_once(self):
        """A keep-alive connection with no request in flight is closed when the drain starts."""
        h = SiteHarness(self)
        d = h.site.drain(30)
        self.assertTrue(h.transport.disconnecting)
        self.assertNoResult(d)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(h.site.open_connections, 0)

    def test_request_in_flight_finishes_then_closes(self):
        """The response in flight is sent in full; then the connection is closed."""
        h = SiteHarness(self, resource=Recorder(hang=True))
        request_on(h)
        d = h.site.drain(30)
        self.assertFalse(h.transport.disconnecting)
        self.assertNoResult(d)
        request = h.resource.requests[0]
        request.write(b"late answer")
        request.finish()
        self.assertIn(b"late answer", h.transport.value())
        self.assertTrue(h.transport.disconnecting)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), 0)

    def test_timeout_aborts_what_is_left(self):
        h = SiteHarness(self, resource=Recorder(hang=True))
        request_on(h)
        d = h.site.drain(5)
        h.clock.advance(4.9)
        self.assertFalse(h.transport.disconnecting)
        self.assertNoResult(d)
        h.clock.advance(0.2)
        self.assertTrue(h.transport.disconnected)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), 1)
        warned = [e for e in h.events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warned), 1)

    def test_no_connections(self):
        h = SiteHarness(self)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(h.site.drain(5)), 0)

    def test_connection_after_drain_started_is_closed(self):
        """A connection accepted just before the listener closed is not served."""
        h = SiteHarness(self)
        h.site.drain(5)
        channel = h.site.buildProtocol(IPv4Address("TCP", "192.0.2.8", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        self.assertTrue(transport.disconnecting)

    def test_partial_request_closed_at_once(self):
        """
        A client still sending its headers has no request in flight: the
        drain answers 503 and closes at once, and does not wait for it.
        """
        h = SiteHarness(self)
        h.send(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Drip: ")
        d = h.site.drain(30)
        out = h.transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), out)
        self.assertIn(b"Retry-After: 5\r\n", out)
        self.assertTrue(h.transport.disconnecting)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual([(e["path"], e["status"]) for e in h.access()], [("/slow", 503)])

    def test_body_upload_closed_at_once(self):
        """A body still coming is not a request in flight either: 503, closed at once."""
        h = SiteHarness(self, body_limit=large_limit)
        h.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nabc")
        d = h.site.drain(30)
        self.assertTrue(h.transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(h.transport.disconnecting)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(h.resource.requests, [])

    def test_silent_connection_closed_without_answer(self):
        """A connection that sent nothing is closed at once, with nothing written."""
        h = SiteHarness(self)
        h.site.drain(30)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.transport.value(), b"")

    def test_drain_ends_at_its_timeout_whatever_is_left(self):
        """
        At the timeout the drain ends, even if the aborted connections never
        report closed (the process must exit).
        """
        h = SiteHarness(self, resource=Recorder(hang=True))
        request_on(h)
        d = h.site.drain(5)
        h.clock.advance(5)
        self.assertTrue(h.transport.disconnected)
        self.assertEqual(self.successResultOf(d), 1)
        # Its close, reported late, changes nothing.
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.site.open_connections, 0)

    def test_abort_drain(self):
        """abort_drain (a second SIGTERM) ends the drain at once, aborting what is left."""
        h = SiteHarness(self, resource=Recorder(hang=True))
        request_on(h)
        d = h.site.drain(30)
        self.assertNoResult(d)
        h.site.abort_drain()
        self.assertTrue(h.transport.disconnected)
        self.assertEqual(self.successResultOf(d), 1)
        # The drain's own timeout is gone.
        self.assertEqual([c for c in h.clock.getDelayedCalls() if c.getTime() == 30], [])

    def test_forgotten_channel_not_waited_for(self):
        """A connection taken over by another protocol (a WebSocket) does not hold up the drain."""
        h = SiteHarness(self, resource=Recorder(hang=True))
        request_on(h)
        d = h.site.drain(30)
        h.site.forget_channel(h.channel)
        self.assertEqual(self.successResultOf(d), 0)


CONFIG = parse_config({
    "listen": ["tcp:8080:interface=127.0.0.1"],
    "drain_timeout": "7s",
    "routes": [{"path": "/", "upstream": "http://127.0.0.1:9000", "auth": "none"}],
}, "test.toml")


class ServiceStopTests(SynchronousTestCase):
    def test_stop_drains_then_closes_the_pools(self):
        reactor = MemoryReactorClock()
        service = ProxyService(CONFIG, reactor, ["tcp:8080:interface=127.0.0.1"])
        service.privilegedStartService()
        service.startService()
        channel = service.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        closed = []
        service.site.proxy.close = lambda: closed.append(True)
        d = service.stopService()
        self.assertNoResult(d)
        self.assertEqual(closed, [])
        reactor.advance(7)
        self.assertTrue(transport.disconnected)
        channel.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual(closed, [True])

    def test_drain_timeout_config(self):
        self.assertEqual(CONFIG.drain_timeout, 7.0)
        self.assertEqual(parse_config({"routes": CONFIG_ROUTES}, "t").drain_timeout, 30.0)
        e = self.assertRaises(ConfigError, parse_config,
                              {"routes": CONFIG_ROUTES, "drain_timeout": "soon"}, "t")
        self.assertIn("drain_timeout", str(e))

    def test_workers_config(self):
        self.assertEqual(parse_config({"routes": CONFIG_ROUTES, "workers": 4}, "t").workers, 4)
        e = self.assertRaises(ConfigError, parse_config,
                              {"routes": CONFIG_ROUTES, "workers": MAX_WORKERS + 1}, "t")
        self.assertIn("workers", str(e))


CONFIG_ROUTES = [{"path": "/", "upstream": "http://127.0.0.1:9000", "auth": "none"}]


class DescriptorLimitTests(SynchronousTestCase):
    """The open files limit, raised at start to fit the connection caps."""

    def limits(self, soft, hard, refuse=False):
        state = {"limits": (soft, hard)}

        def setrlimit(which, value):
            self.assertEqual(which, resource.RLIMIT_NOFILE)
            if refuse:
                raise ValueError("not allowed")
            state["limits"] = value

        self.patch(resource, "getrlimit", lambda which: state["limits"])
        self.patch(resource, "setrlimit", setrlimit)
        return state

    def config(self, **keys):
        return parse_config({"routes": CONFIG_ROUTES, **keys}, "t.toml")

    def test_needed(self):
        """Two descriptors per client connection and per WebSocket, and a reserve."""
        self.assertEqual(descriptors_needed(self.config()), 2 * (10000 + 1000) + 256)
        self.assertEqual(descriptors_needed(
            self.config(max_client_connections=100, max_websockets=10)), 476)

    def test_soft_limit_raised(self):
        """systemd's soft limit of 1,024 is raised to what is needed, under the hard limit."""
        state = self.limits(1024, 524288)
        self.assertIsNone(raise_descriptor_limit(self.config()))
        self.assertEqual(state["limits"], (22256, 524288))

    def test_soft_limit_already_enough(self):
        state = self.limits(65536, 65536)
        self.assertIsNone(raise_descriptor_limit(self.config()))
        self.assertEqual(state["limits"], (65536, 65536))

    def test_hard_limit_too_low(self):
        """Raised as far as the hard limit goes; the warning names the keys and the limit."""
        state = self.limits(1024, 4096)
        warning = raise_descriptor_limit(self.config())
        self.assertEqual(state["limits"], (4096, 4096))
        self.assertIn("may need 22256 open files, but this process may open only 4096", warning)

    def test_raise_refused(self):
        state = self.limits(1024, 524288, refuse=True)
        warning = raise_descriptor_limit(self.config())
        self.assertEqual(state["limits"], (1024, 524288))
        self.assertIn("may open only 1024", warning)


class WeakSecretLogTests(SynchronousTestCase):
    """The start logs the warnings of C{--check} on secrets that look easy to guess."""

    def test_logged_at_start(self):
        self.patch(service_module, "raise_descriptor_limit", lambda config: None)
        events: List[Dict[str, Any]] = []
        self.patch(service_module, "log", Logger(observer=events.append))
        weak = "0123456789abcdef" * 4
        startup_checks(parse_config({"routes": CONFIG_ROUTES,
                                     "session": {"secrets": [SECRET, weak]}}, "t.toml"))
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events], [
            (LogLevel.warn, "config: session.secrets[1]: the secret from the config file has only "
             "8 distinct byte values in its 32 bytes once decoded from hex: it looks easy to "
             "guess; make a random one with: python3 -c 'import secrets; "
             "print(secrets.token_hex(32))'")])
        events.clear()
        startup_checks(parse_config({"routes": CONFIG_ROUTES, "session": {"secrets": [SECRET]}},
                                    "t.toml"))
        self.assertEqual(events, [])


class FatalTests(SynchronousTestCase):
    def test_one_line_and_status_1(self):
        saved, sys.stderr = sys.stderr, io.StringIO()
        try:
            e = self.assertRaises(SystemExit, fatal, "cannot reach Redis at h:1: refused")
            out = sys.stderr.getvalue()
        finally:
            sys.stderr = saved
        self.assertEqual(e.code, 1)
        self.assertEqual(out, "oidcproxy: cannot reach Redis at h:1: refused\n")


class AdoptedListenerTests(SynchronousTestCase):
    def socket_fd(self, family=socket.AF_INET):
        s = socket.socket(family, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        if family == socket.AF_INET:
            s.bind(("127.0.0.1", 0))
        s.listen(1)
        return os.dup(s.fileno())

    def test_adopts_with_the_socket_family(self):
        reactor = MemoryReactorClock()
        fd = self.socket_fd()
        factory = object()
        service = AdoptedListenerService(reactor, fd, "tcp:0", factory)
        service.privilegedStartService()
        [(adopted_fd, family, adopted_factory)] = [
            (p[0], p[1], p[2]) for p in reactor.adoptedPorts]
        self.assertEqual((adopted_fd, family), (fd, socket.AF_INET))
        self.assertIs(adopted_factory, factory)
        # The inherited descriptor is closed once adopted (the reactor has its own).
        self.assertRaises(OSError, os.fstat, fd)
        self.assertIsNotNone(service.port)

    def test_shared_socket_made_non_blocking(self):
        """
        The socket's O_NONBLOCK is shared by every process holding it: a
        blocking one would stall a worker's reactor in accept().
        """
        reactor = MemoryReactorClock()
        fd = self.socket_fd()
        other = os.dup(fd)  # another holder of the same open file description
        self.addCleanup(os.close, other)
        os.set_blocking(fd, True)
        AdoptedListenerService(reactor, fd, "tcp:0", object(), socket.AF_INET) \
            .privilegedStartService()
        self.assertFalse(os.get_blocking(other))

    def test_family_given_by_the_parent(self):
        reactor = MemoryReactorClock()
        AdoptedListenerService(reactor, self.socket_fd(), "tcp:0", object(), socket.AF_INET6) \
            .privilegedStartService()
        self.assertEqual(reactor.adoptedPorts[0][1], socket.AF_INET6)

    def test_ssl_endpoint_wraps_tls(self):
        from twisted.protocols.tls import TLSMemoryBIOFactory

        directory = self.mktemp()
        os.makedirs(directory)
        pki = make_pki(directory)
        description = f"ssl:0:privateKey={pki['server_key']}:certKey={pki['server']}"
        reactor = MemoryReactorClock()
        factory = object()
        AdoptedListenerService(reactor, self.socket_fd(), description, factory) \
            .privilegedStartService()
        wrapped = reactor.adoptedPorts[0][2]
        self.assertIsInstance(wrapped, TLSMemoryBIOFactory)
        self.assertIs(wrapped.wrappedFactory, factory)
        options = _tls_options(description)
        self.assertIsNotNone(options.getContext())

    def test_bad_descriptor_is_one_line(self):
        reactor = MemoryReactorClock()
        fd = self.socket_fd()
        os.close(fd)
        e = self.assertRaises(ListenError, AdoptedListenerService(
            reactor, fd, "tcp:0", object()).privilegedStartService)
        self.assertIn("cannot serve on the socket of 'tcp:0'", str(e))


# -- the parent of the workers ---------------------------------------------------------


@attr.s(auto_attribs=True)
class FakePort:
    fd: int
    reading: bool = True
    listening: bool = True

    def fileno(self):
        return self.fd

    def stopReading(self):
        self.reading = False

    def stopListening(self):
        self.listening = False

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 8000 + self.fd)


class FakeProcess:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class Spawner:
    def __init__(self):
        self.spawned = []
        self.next_pid = 100

    def __call__(self, protocol, executable, args, env, childFDs):
        self.next_pid += 1
        process = FakeProcess(self.next_pid)
        self.spawned.append((protocol, executable, args, env, childFDs, process))
        protocol.makeConnection(process)
        return process


def pool_for(case, workers=2, **config_changes):
    clock = Clock()
    spawn = Spawner()
    config = attr.evolve(CONFIG, workers=workers, **config_changes)
    pool = WorkerPool(config, clock, ["tcp:8080"], config_path="/etc/oidcproxy.toml",
                      spawn=spawn, executable="/usr/bin/python3")
    pool.ports = [(FakePort(5), "tcp:8080", "proxy")]
    events = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return pool, clock, spawn, events


def log_line(**event) -> bytes:
    event.setdefault("log_namespace", "oidcproxy.access")
    event.setdefault("log_level", LogLevel.info)
    event.setdefault("log_format", "hello {who}" if "who" in event else "ready")
    event.setdefault("log_time", 1.0)
    return b"\x1e" + eventAsJSON(event).encode("utf-8") + b"\n"


class WorkerPoolTests(SynchronousTestCase):
    def test_start_alone_binds_first(self):
        """
        twist calls only startService: a pool running its own process then
        binds its sockets (and makes the start-up checks) before the workers
        start on them; twistd's order binds them once.
        """
        from oidcproxy import service as service_module

        checked = []
        self.patch(service_module, "startup_checks", checked.append)
        for twistd in (False, True):
            spawn = Spawner()
            pool = WorkerPool(attr.evolve(CONFIG, workers=2), Clock(), ["tcp:8080"],
                              config_path="/etc/oidcproxy.toml", spawn=spawn,
                              executable="/usr/bin/python3", own_process=True)
            bound = []
            pool._bind = lambda description, bound=bound: bound.append(description) or FakePort(5)
            if twistd:
                pool.privilegedStartService()
            pool.startService()
            self.assertEqual(bound, ["tcp:8080"])
            self.assertEqual([child_fds[3] for _, _, _, _, child_fds, _ in spawn.spawned], [5, 5])
        self.assertEqual(len(checked), 2)

    def test_starts_n_workers_with_the_sockets(self):
        pool, clock, spawn, _ = pool_for(self, workers=3)
        pool.startService()
        self.assertEqual(len(spawn.spawned), 3)
        protocol, executable, args, env, child_fds, _ = spawn.spawned[0]
        self.assertEqual(args, ["/usr/bin/python3", "-m", "oidcproxy.workers"])
        self.assertEqual(child_fds, {0: "w", 1: "r", 2: "r", 3: 5})
        spec = json.loads(env[SPEC_VARIABLE])
        self.assertEqual(spec["worker"], 1)
        self.assertEqual(spec["config"], "/etc/oidcproxy.toml")
        self.assertEqual(spec["listeners"], [[3, "tcp:8080", "proxy", socket.AF_INET]])
        self.assertEqual(spec["parent"], os.getpid())
        self.assertEqual([json.loads(s[3][SPEC_VARIABLE])["worker"] for s in spawn.spawned],
                         [1, 2, 3])

    def test_parent_only_variables_not_inherited(self):
        os.environ["NOTIFY_SOCKET"] = "/run/notify"
        self.addCleanup(os.environ.pop, "NOTIFY_SOCKET")
        pool, _, spawn, _ = pool_for(self)
        pool.startService()
        env = spawn.spawned[0][3]
        self.assertNotIn("NOTIFY_SOCKET", env)
        self.assertNotIn("PROMETHEUS_MULTIPROC_DIR", env)

    def test_log_events_relayed_with_the_worker(self):
        pool, _, spawn, events = pool_for(self)
        pool.startService()
        protocol = spawn.spawned[1][0]
        line = log_line(who="alice")
        # Split across reads: only whole lines are relayed.
        protocol.childDataReceived(1, line[:10])
        self.assertEqual([e for e in events if e.get("who")], [])
        protocol.childDataReceived(1, line[10:])
        [event] = [e for e in events if e.get("who") == "alice"]
        self.assertEqual(event["worker"], 2)
        self.assertEqual(event["log_namespace"], "oidcproxy.access")
        self.assertEqual(event["log_level"], LogLevel.info)

    def test_compact_log_events_relayed_with_the_worker(self):
        """The compact lines a worker writes (oidcproxy.workerlog) are relayed as events."""
        from oidcproxy.workerlog import WorkerLogWriter

        out = io.StringIO()
        stopped = Clock()
        stopped.running = False  # written at once
        WorkerLogWriter(out, stopped)({
            "who": "bob", "log_namespace": "oidcproxy.access", "log_level": LogLevel.warn,
            "log_format": "hello {who}", "log_time": 2.0})
        self.assertTrue(out.getvalue().startswith("\x1e["))
        pool, _, spawn, events = pool_for(self)
        pool.startService()
        spawn.spawned[0][0].childDataReceived(1, out.getvalue().encode("utf-8"))
        [event] = [e for e in events if e.get("who") == "bob"]
        self.assertEqual(event["worker"], 1)
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(formatEvent(event), "hello bob")

    def test_other_output_is_an_error_line(self):
        pool, _, spawn, events = pool_for(self)
        pool.startService()
        spawn.spawned[0][0].childDataReceived(2, b"Traceback (most recent call last):\n")
        [event] = [e for e in events if e.get("line")]
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertEqual(event["worker"], 1)

    def test_ready_once_every_worker_serves(self):
        pool, _, spawn, events = pool_for(self)
        port_file = os.path.abspath(self.mktemp())
        pool._port_file = port_file
        pool.startService()
        spawn.spawned[0][0].childDataReceived(1, log_line(**{READY_KEY: True}))
        self.assertFalse(os.path.exists(port_file))
        spawn.spawned[1][0].childDataReceived(1, log_line(**{READY_KEY: True}))
        with open(port_file) as f:
            self.assertEqual(f.read(), "127.0.0.1:8005\n")

    def test_dead_worker_restarted_with_growing_delay(self):
        pool, clock, spawn, events = pool_for(self)
        pool.startService()
        first = spawn.spawned[0][0]
        first.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        [error] = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(error["how"], "killed by SIGKILL")
        self.assertEqual(error["delay"], RESTART_DELAYS[0])
        clock.advance(0)
        self.assertEqual(len(spawn.spawned), 3)
        replacement = spawn.spawned[2][0]
        self.assertEqual(replacement.number, 1)
        self.assertIs(pool.workers[1], replacement)
        # Dying young again: a longer wait.
        clock.advance(1)
        replacement.processEnded(Failure(ProcessTerminated(exitCode=1)))
        clock.advance(RESTART_DELAYS[1] - 0.01)
        self.assertEqual(len(spawn.spawned), 3)
        clock.advance(0.01)
        self.assertEqual(len(spawn.spawned), 4)
        # A worker that lived long starts over at no delay.
        clock.advance(3600)
        spawn.spawned[3][0].processEnded(Failure(ProcessTerminated(exitCode=1)))
        clock.advance(0)
        self.assertEqual(len(spawn.spawned), 5)
        self.assertEqual(pool.restarts, 3)

    def test_stop_sends_sigterm_and_waits(self):
        pool, clock, spawn, _ = pool_for(self)
        pool.startService()
        d = pool.stopService()
        self.assertEqual([s[5].signals for s in spawn.spawned], [["TERM"], ["TERM"]])
        self.assertNoResult(d)
        spawn.spawned[0][0].processEnded(Failure(ProcessDone(0)))
        self.assertNoResult(d)
        spawn.spawned[1][0].processEnded(Failure(ProcessDone(0)))
        self.successResultOf(d)
        self.assertEqual(len(spawn.spawned), 2)  # not restarted
        self.assertEqual(pool.ports, [])

    def test_stop_kills_after_drain_timeout(self):
        pool, clock, spawn, _ = pool_for(self)
        pool.startService()
        d = pool.stopService()
        spawn.spawned[0][0].processEnded(Failure(ProcessDone(0)))
        clock.advance(CONFIG.drain_timeout + 4.9)
        self.assertEqual(spawn.spawned[1][5].signals, ["TERM"])
        clock.advance(0.2)
        self.assertEqual(spawn.spawned[1][5].signals, ["TERM", "KILL"])
        spawn.spawned[1][0].processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.successResultOf(d)

    def test_pending_restart_cancelled_by_stop(self):
        pool, clock, spawn, _ = pool_for(self)
        pool.startService()
        spawn.spawned[0][0].processEnded(Failure(ProcessTerminated(exitCode=1)))
        d = pool.stopService()
        spawn.spawned[1][0].processEnded(Failure(ProcessDone(0)))
        self.successResultOf(d)
        clock.advance(60)
        self.assertEqual(len(spawn.spawned), 2)

    def test_reload_signals_every_worker(self):
        pool, _, spawn, _ = pool_for(self)
        pool.startService()
        pool.reload()
        self.assertEqual([s[5].signals for s in spawn.spawned], [["HUP"], ["HUP"]])

    def test_metrics_of_all_workers(self):
        """With [metrics], workers write to a shared directory that the parent reads."""
        pool, _, spawn, _ = pool_for(
            self, metrics=MetricsConfig(listen="tcp:0:interface=127.0.0.1"))
        pool._reactor = MemoryReactorClock()
        pool._serve_metrics("tcp:0:interface=127.0.0.1")
        directory = pool._metrics_dir
        self.addCleanup(pool._close_ports)
        pool.startService()
        self.assertEqual(spawn.spawned[0][3]["PROMETHEUS_MULTIPROC_DIR"], directory)
        self.assertTrue(os.path.isdir(directory))
        pool._close_ports()
        self.assertFalse(os.path.exists(directory))

    def test_admin_socket_passed_on(self):
        pool, _, spawn, _ = pool_for(self, admin=AdminConfig(token=Secret("t" * 32, "test")))
        pool.ports.append((FakePort(6), "tcp:9091", "admin"))
        pool.startService()
        spec = json.loads(spawn.spawned[0][3][SPEC_VARIABLE])
        self.assertEqual(spec["listeners"], [[3, "tcp:8080", "proxy", socket.AF_INET],
                                             [4, "tcp:9091", "admin", socket.AF_INET]])
        self.assertEqual(spawn.spawned[0][4][4], 6)


class CheckTests(SynchronousTestCase):
    def test_check_with_workers(self):
        """--check validates a workers = N config without starting anything."""
        from oidcproxy.tap import Options, check

        path = self.mktemp()
        with open(path, "w") as f:
            f.write('workers = 2\n[[routes]]\npath = "/"\nupstream = "http://127.0.0.1:9"\n'
                    'auth = "none"\n')
        options = Options()
        options.parseOptions(["--config", path, "--check"])
        out = io.StringIO()
        self.assertEqual(check(options, out, reactor=MemoryReactorClock()), 0)
        self.assertEqual(out.getvalue(), "config OK\n")


class WorkerMainTests(SynchronousTestCase):
    def test_refuses_to_run_by_hand(self):
        saved, sys.stderr = sys.stderr, io.StringIO()
        try:
            e = self.assertRaises(SystemExit, main, {})
            out = sys.stderr.getvalue()
        finally:
            sys.stderr = saved
        self.assertEqual(e.code, 2)
        self.assertIn("not by hand", out)




class OneRouteMatchTests(SynchronousTestCase):
    """A request's route is matched once: the early body check's match is reused."""

    def test_matched_once(self):
        from twisted.internet.defer import Deferred

        from oidcproxy.proxy.upstream import UpstreamClient
        from oidcproxy.service import build_site

        class Agent:
            def __init__(self):
                self.uris = []

            def request(self, method, uri, headers=None, bodyProducer=None):
                self.uris.append(uri)
                return Deferred()

        agent = Agent()
        reactor = MemoryReactorClock()
        site = build_site(CONFIG, reactor, client_factory=lambda route: UpstreamClient(agent, 10))
        table = site.guard.routes
        calls = []
        original = table.match

        def counting(host, target):
            calls.append(target)
            return original(host, target)

        table.match = counting
        channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(calls, [b"/x?y=1"])
        self.assertEqual(agent.uris, [b"http://127.0.0.1:9000/x?y=1"])
