"""
Several processes on one machine: C{workers = N}.

The parent (the C{twistd} process) binds every listener itself, so ports
below 1024, C{systemd:} sockets and C{ssl:} settings behave as with one
process, then starts N worker processes (C{python -m oidcproxy.workers}) that
inherit the listening sockets and serve on them (C{adoptStreamPort}); the
kernel spreads the connections among them. The parent:

  - restarts a worker that dies (at once, then with a growing delay while it
    keeps dying young);
  - forwards C{SIGHUP} (each worker reloads its configuration) and, on
    C{SIGTERM}, stops the workers — each drains its requests — and exits
    once they have;
  - relays the workers' log events into its own log (text, JSON, the
    journal: whatever twistd was told), each with a C{worker} field;
  - serves the metrics of all workers together on the C{[metrics]} listener
    (C{prometheus_client}'s multiprocess mode) and tells systemd it is
    ready once every worker serves.

Sessions work across workers: cookie sessions carry themselves, Redis is
shared.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from .config import Config
from .core.settle import all_settled
from .workerlog import WorkerLogWriter, read_event

log = Logger()

SPEC_VARIABLE = "OIDCPROXY_WORKER"
"""The environment variable that hands a worker its number and sockets (JSON)."""

READY_KEY = "oidcproxy_worker_ready"
"""A log event with this key set tells the parent that the worker serves."""

RESTART_DELAYS = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds before restarting a worker that died, by how many times in a row it died young."""

YOUNG = 10.0
"""A worker that dies sooner than this after its start died young."""

KILL_GRACE = 5.0
"""Seconds after the drain timeout before a worker that has not exited is killed."""

_INHERITED = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
              "PROMETHEUS_MULTIPROC_DIR", SPEC_VARIABLE)
"""Variables meant for the parent only: not passed on to a worker."""


class _RefuseFactory(Factory):
    noisy = False


class _Refuse(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class _WorkerProtocol(ProcessProtocol):
    """One worker process, seen from the parent: its log lines and its end."""

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.ready = False
        self.started = pool.clock.seconds()
        self.ended: Deferred[None] = Deferred()
        self._buffers: Dict[int, bytes] = {1: b"", 2: b""}

    pid: Optional[int] = None

    def makeConnection(self, transport: Any) -> None:
        self.pid = getattr(transport, "pid", None)
        super().makeConnection(transport)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._buffers:
            return
        buffered = self._buffers[fd] + data
        *lines, rest = buffered.split(b"\n")
        # A line longer than this is cut rather than buffered without end.
        if len(rest) > 1_000_000:
            lines.append(rest)
            rest = b""
        self._buffers[fd] = rest
        for line in lines:
            self._line(fd, line)

    def _line(self, fd: int, line: bytes) -> None:
        text = line.lstrip(b"\x1e").decode("utf-8", "replace").rstrip("\r")
        if not text:
            return
        if fd == 1:
            event = read_event(text)
            if event is not None:
                if event.get(READY_KEY):
                    self.ready = True
                    self.pool.worker_ready(self)
                event["worker"] = self.number
                namespace = event.get("log_namespace", "-")
                level = getattr(event.get("log_level"), "name", "info")
                event.setdefault("log_system", f"{namespace}#{level} worker {self.number}")
                globalLogPublisher(event)
                return
        # What a worker prints outside the log (a crash before logging began).
        log.error("worker {worker}: {line}", worker=self.number, line=text[:2000])

    def processEnded(self, reason: Failure) -> None:
        for fd in (1, 2):
            if self._buffers[fd]:
                self._line(fd, self._buffers[fd])
                self._buffers[fd] = b""
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    The parent of C{workers} processes serving C{config}: see the module
    documentation.

    @param listen: the proxy's endpoint strings.
    @param spawn: C{reactor.spawnProcess}-like callable (for tests).
    @param own_process: whether the pool runs the process it is in (under
        twistd): then it makes the start-up checks before listening and
        reloads on SIGHUP (see L{oidcproxy.service.ProxyService}).
    """

    def __init__(self, config: Config, reactor: Any, listen: Sequence[str], *,
                 config_path: str, port_file: Optional[str] = None,
                 spawn: Any = None, executable: Optional[str] = None,
                 own_process: bool = False) -> None:
        self.config = config
        self.own_process = own_process
        self.config_path = config_path
        self.clock = reactor
        self._reactor = reactor
        self._listen = list(listen)
        self._port_file = port_file
        self._spawn = spawn
        self._executable = executable or sys.executable
        self.ports: List[Tuple[Any, str, str]] = []
        """Each bound listener: C{(port, endpoint string, "proxy" or "admin")}."""
        self.workers: Dict[int, _WorkerProtocol] = {}
        self._deaths: Dict[int, int] = {}
        self._restarts: Dict[int, Any] = {}
        self._stopping = False
        self._announced = False
        self._metrics_dir: Optional[str] = None
        self._metrics_port: Any = None
        from .service import SighupHandler

        self._sighup = SighupHandler(reactor, self.reload)
        self.restarts = 0
        self._privileged_started = False

    # -- start --------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        from .service import ListenError, fatal, startup_checks

        self._privileged_started = True
        super().privilegedStartService()
        if self.own_process:
            startup_checks(self.config)
        wanted = [(d, "proxy") for d in self._listen]
        if self.config.admin is not None:
            wanted.append((self.config.admin.listen, "admin"))
        try:
            for description, kind in wanted:
                self.ports.append((self._bind(description), description, kind))
            if self.config.metrics is not None:
                self._serve_metrics(self.config.metrics.listen)
        except ListenError as e:
            self._close_ports()
            fatal(str(e))

    def _listen_now(self, description: str, factory: Any) -> Any:
        """
        Listen on C{description} at once (the parent's endpoints all do).

        @raise ListenError: an invalid endpoint, or one that cannot listen.
        """
        from .service import ListenError

        try:
            endpoint = serverFromString(self._reactor, description)
        except (ValueError, LookupError, TypeError, OSError) as e:
            raise ListenError(f"invalid endpoint string {description!r}: {e}") from None
        results: List[Any] = []
        endpoint.listen(factory).addBoth(results.append)
        if not results or isinstance(results[0], Failure):
            reason = results[0].value if results else "the endpoint did not listen at once"
            raise ListenError(f"cannot listen on {description!r}: {reason}")
        return results[0]

    def _bind(self, description: str) -> Any:
        """Listen on C{description}, but leave the accepting to the workers."""
        port = self._listen_now(description, _RefuseFactory.forProtocol(_Refuse))
        # Accepting is the workers' job: the parent keeps the socket open
        # for them (and for the workers it starts later) but never reads it.
        port.stopReading()
        return port

    def _serve_metrics(self, description: str) -> None:
        """The metrics of every worker, summed, on the C{[metrics]} listener."""
        from prometheus_client import CollectorRegistry, Counter
        from prometheus_client.multiprocess import MultiProcessCollector

        from .core.metrics import MetricsSite

        self._metrics_dir = tempfile.mkdtemp(prefix="oidcproxy-metrics-")
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._metrics_dir)
        self._restart_counter = Counter(
            "oidcproxy_worker_restarts", "Worker processes restarted after they died.",
            registry=registry)
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource

        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry))
        self._metrics_port = self._listen_now(description, MetricsSite(root, reactor=self._reactor))

    def startService(self) -> None:
        if self.own_process and not self._privileged_started:
            # Under twist, which only calls startService: bind the sockets now.
            self.privilegedStartService()
        super().startService()
        for number in range(1, self.config.workers + 1):
            self._start_worker(number)
        if self.own_process:
            self._sighup.install()

    def _start_worker(self, number: int) -> None:
        self._restarts.pop(number, None)
        if self._stopping:
            return
        spec = {
            "worker": number,
            "config": self.config_path,
            "parent": os.getpid(),
            "listeners": [],
        }
        child_fds: Dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for i, (port, description, kind) in enumerate(self.ports):
            fd = 3 + i
            child_fds[fd] = port.fileno()
            spec["listeners"].append(  # type: ignore[attr-defined]
                [fd, description, kind, _family(port)])
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
        env[SPEC_VARIABLE] = json.dumps(spec)
        if self._metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        protocol = _WorkerProtocol(self, number)
        self.workers[number] = protocol
        spawn = self._spawn if self._spawn is not None else self._reactor.spawnProcess
        spawn(protocol, self._executable,
                    [self._executable, "-m", "oidcproxy.workers"],
                    env=env, childFDs=child_fds)
        log.info("started worker {worker} (pid {pid})", worker=number, pid=protocol.pid)

    def worker_ready(self, worker: _WorkerProtocol) -> None:
        if self._announced or not all(w.ready for w in self.workers.values()):
            return
        self._announced = True
        from .service import _address

        addresses = ", ".join(_address(port) for port, _, _ in self.ports)
        if self._port_file:
            self._write_port_file()
        from .systemd import notify

        notify(f"READY=1\nSTATUS=listening on {addresses} with {len(self.workers)} workers")
        log.info("{count} workers serving on {addresses}", count=len(self.workers),
                 addresses=addresses)

    def _write_port_file(self) -> None:
        from .service import write_port_file

        assert self._port_file is not None
        ports = [port for port, _, _ in self.ports]
        if self._metrics_port is not None:
            ports.append(self._metrics_port)
        write_port_file(self._port_file, ports)

    # -- a worker ended ---------------------------------------------------------------

    def worker_ended(self, worker: _WorkerProtocol, reason: Failure) -> None:
        if self.workers.get(worker.number) is not worker:
            return
        if self._metrics_dir is not None and worker.pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(worker.pid, self._metrics_dir)
        how = _how_it_ended(reason)
        if self._stopping:
            log.info("worker {worker} (pid {pid}) stopped: {how}", worker=worker.number,
                     pid=worker.pid, how=how)
            return
        lived = self.clock.seconds() - worker.started
        deaths = self._deaths.get(worker.number, 0) + 1 if lived < YOUNG else 1
        self._deaths[worker.number] = deaths
        delay = RESTART_DELAYS[min(deaths - 1, len(RESTART_DELAYS) - 1)]
        log.error("worker {worker} (pid {pid}) died: {how}; restarting it in {delay:g}s",
                  worker=worker.number, pid=worker.pid, how=how, delay=delay)
        self.restarts += 1
        counter = getattr(self, "_restart_counter", None)
        if counter is not None:
            counter.inc()
        self._restarts[worker.number] = self.clock.callLater(delay, self._start_worker,
                                                             worker.number)

    # -- signals and stop -------------------------------------------------------------

    def reload(self) -> None:
        """Tell every worker to read the configuration again (SIGHUP)."""
        from .systemd import notify, reloading

        notify(reloading())
        log.info("reloading: passing SIGHUP to {count} workers", count=len(self.workers))
        self._signal_all("HUP")
        notify("READY=1")

    def _signal_all(self, name: str) -> None:
        for worker in list(self.workers.values()):
            transport = worker.transport
            if transport is not None and not worker.ended.called:
                try:
                    transport.signalProcess(name)
                except (OSError, LookupError):  # already gone: processEnded follows
                    pass

    def stopService(self) -> Deferred[Any]:
        """
        Stop every worker (SIGTERM: each drains its requests for up to
        C{drain_timeout}); kill those still running after that and a grace
        period; then close the listening sockets.
        """
        from .systemd import notify

        super().stopService()
        notify("STOPPING=1")
        self._stopping = True
        self._sighup.uninstall()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        running = [w for w in self.workers.values() if not w.ended.called]
        self._signal_all("TERM")
        kill = self.clock.callLater(self.config.drain_timeout + KILL_GRACE, self._kill_all)
        d: Deferred[Any] = all_settled(
            [(f"worker {w.number}", w.ended) for w in running], log, "stopping") \
            if running else succeed(None)

        def done(_: object) -> None:
            if kill.active():
                kill.cancel()
            self._close_ports()

        return d.addCallback(done)

    def _kill_all(self) -> None:
        left = [w for w in self.workers.values() if not w.ended.called]
        if left:
            log.warn("{count} worker(s) still running after the drain timeout: killing them",
                     count=len(left))
        self._signal_all("KILL")

    def _close_ports(self) -> None:
        for port, _, _ in self.ports:
            port.stopListening()
        self.ports = []
        if self._metrics_port is not None:
            self._metrics_port.stopListening()
            self._metrics_port = None
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None


def _family(port: Any) -> int:
    """The address family of a listening port, for the worker that adopts its socket."""
    import socket

    from twisted.internet.address import IPv6Address, UNIXAddress

    host = port.getHost()
    if isinstance(host, UNIXAddress):
        return int(socket.AF_UNIX)
    if isinstance(host, IPv6Address):
        return int(socket.AF_INET6)
    return int(socket.AF_INET)


def _how_it_ended(reason: Failure) -> str:
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    code = getattr(value, "exitCode", None)
    return f"exit status {code}" if code is not None else str(value)


# -- the worker process ---------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    """End this worker when the parent dies (Linux's parent-death signal)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        # The parent died before the signal was asked for.
        raise SystemExit(1)


def _stop_once_on_sigterm(reactor: Any) -> None:
    """
    SIGTERM stops the reactor once; a second one (systemd signals the whole
    control group and the parent forwards its own) is ignored, not an error.
    """
    stopping: List[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        if not stopping:
            stopping.append(signum)
            reactor.callFromThread(log.info, "SIGTERM: finishing the requests in flight, then stopping")
            reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_sigterm)


def main(environ: Optional[Dict[str, str]] = None) -> None:
    """
    A worker: serve on the inherited sockets until SIGTERM. Started by
    L{WorkerPool} as C{python -m oidcproxy.workers}; not for running by hand.
    """
    environ = dict(os.environ) if environ is None else environ
    raw = environ.get(SPEC_VARIABLE)
    if not raw:
        print("oidcproxy.workers: this is started by the parent process of `workers = N`, "
              "not by hand", file=sys.stderr)
        raise SystemExit(2)
    spec = json.loads(raw)
    _watch_parent(int(spec["parent"]))

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    relay = WorkerLogWriter(sys.stdout, reactor)
    globalLogBeginner.beginLoggingTo([relay], redirectStandardIO=False)

    from .config import ConfigError, load_config
    from .service import ProxyService

    number = int(spec["worker"])
    try:
        config = load_config(spec["config"])
    except ConfigError as e:
        for line in e.lines():
            log.error("{line}", line=line)
        raise SystemExit(1) from None
    adopted = [(int(fd), str(description), str(kind), int(family))
               for fd, description, kind, family in spec["listeners"]]
    service = ProxyService(config, reactor, [], config_path=spec["config"],
                           adopted=adopted, worker_id=number, own_process=True)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.callWhenRunning(_stop_once_on_sigterm, reactor)
    log.info("worker {worker} serving (pid {pid})", worker=number, pid=os.getpid(),
             **{READY_KEY: True})
    reactor.run()
    relay.flush()


if __name__ == "__main__":
    main()
