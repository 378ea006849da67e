"""A whole livecomments system on this machine, as child processes.

``livecomments up`` runs one with fixed ports; the integration tests run
several with free ports, each in its own namespace (ZooKeeper root, Redis key
prefix, database name) on shared backends.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from livecomments.cli.launcher import (
    Proc,
    free_port,
    respawn,
    start_component,
    start_redis,
    start_store,
    start_zookeeper,
    stop_all,
    wait_port,
    wait_ready,
    wait_zookeeper,
    zookeeper_mode,
)
from livecomments.kernel import settings as cfg
from livecomments.kernel.grpcauth import COMMENT_SERVICE, DISPATCHER, OPERATOR, RTMS, GrpcSecurity
from livecomments.kernel.tls import make_dev_certificates, make_grpc_certificates

# Where ``livecomments up`` puts the N-th process of each kind (N-1 above these,
# everything shifted by ``--port-offset``).
DISPATCHER_PORT = 9701
RTMS_PORT = 8801
RTMS_GRPC_PORT = 9801
COMMENT_PORT = 8443
DISPATCHER_ADMIN_PORT = 9751  # /metrics, /healthz, /readyz


def embedded_store_uri(port: int) -> str:
    """The URI of the embedded store `up` and the tests start.

    It is one standalone server (``launcher.start_store``), with which a driver does
    not use retryable writes. Before it was started as one, it advertised a
    one-member replica set, so pymongo sent a transaction number with every write,
    and the store's handling of those made each comment insert about 20 times
    slower (18 ms instead of 0.8 ms here) and cost both sides CPU. The parameter
    stays, for a store that still advertises a set. A comment's insert needs no retry from the
    driver: its id is made before the insert, so a repeat is a duplicate key.
    """
    return f"mongodb://127.0.0.1:{port}/?retryWrites=false"


@dataclass
class Backends:
    """Where ZooKeeper, Redis and the store are, and the processes we started for them."""

    zk_hosts: str
    redis_url: str
    mongo_uri: str
    procs: dict[str, Proc] = field(default_factory=dict)
    zk_ports: list[int] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        run_dir: Path,
        *,
        zk_hosts: str | None = None,
        redis_url: str | None = None,
        mongo_uri: str | None = None,
        fixed_ports: bool = False,
        port_offset: int = 0,
        zk_members: int = 1,
        memory_store: bool = False,
    ) -> Backends:
        """Start whichever backend was not given an address.

        All of them at once, then wait for each: the JVMs of the ZooKeeper
        ensemble and the store's interpreter start up side by side.
        """
        procs: dict[str, Proc] = {}
        zk_ports: list[int] = []
        try:
            zks: list[Proc] = []
            if zk_hosts is None:
                if fixed_ports and zk_members == 1:
                    zk_ports = [cfg.DEFAULT_ZK_PORT + port_offset]
                else:
                    zk_ports = [free_port() for _ in range(zk_members)]
                peers = (
                    [(free_port(), free_port()) for _ in range(zk_members)]
                    if zk_members > 1
                    else None
                )
                zks = [
                    start_zookeeper(run_dir, zk_ports, member=i, peer_ports=peers)
                    for i in range(1, zk_members + 1)
                ]
                procs.update((p.name, p) for p in zks)
                zk_hosts = ",".join(f"127.0.0.1:{p}" for p in zk_ports)
            if redis_url is None:
                port = cfg.DEFAULT_REDIS_PORT + port_offset if fixed_ports else free_port()
                procs["redis"] = start_redis(run_dir, port, wait=False)
                redis_url = f"redis://127.0.0.1:{port}/0"
            if mongo_uri is None:
                port = cfg.DEFAULT_MONGO_PORT + port_offset if fixed_ports else free_port()
                procs["store"] = start_store(run_dir, port, memory=memory_store, wait=False)
                mongo_uri = embedded_store_uri(port)
            wait_zookeeper(zks)
            if "redis" in procs:
                wait_port(procs["redis"], 15)
            if "store" in procs:
                wait_port(procs["store"], 30)
        except BaseException:
            stop_all(list(procs.values()))
            raise
        return cls(zk_hosts, redis_url, mongo_uri, procs, zk_ports)

    @staticmethod
    def planned_ports(
        port_offset: int = 0, *, zookeeper: bool = True, redis: bool = True, store: bool = True
    ) -> dict[int, str]:
        """The fixed ports :meth:`start` takes for the backends it starts (``up``)."""
        plan = {
            cfg.DEFAULT_ZK_PORT: "ZooKeeper" if zookeeper else "",
            cfg.DEFAULT_REDIS_PORT: "Redis" if redis else "",
            cfg.DEFAULT_MONGO_PORT: "the store" if store else "",
        }
        return {port + port_offset: what for port, what in plan.items() if what}

    def stop(self) -> None:
        stop_all(list(self.procs.values()))

    def restart(self, name: str) -> Proc:
        """Start a backend process (``redis``, ``zookeeper-2``, ...) again after a kill."""
        self.procs[name] = respawn(self.procs[name])
        return self.procs[name]

    def zookeeper_leader(self) -> str | None:
        """The name of the ensemble member that leads right now."""
        for name, proc in self.procs.items():
            if name.startswith("zookeeper") and zookeeper_mode(proc.port) == "leader":
                return name
        return None


@dataclass
class ServiceProc:
    proc: Proc
    env: dict[str, str]
    kind: str
    url: str = ""
    # Where Prometheus scrapes it: its admin listener (plain HTTP) when it has
    # one (every dispatcher), else its public listener (TLS with the cluster's CA).
    metrics_url: str = ""


class Cluster:
    """Our own processes (dispatchers, RTMS nodes, comment services) on given backends."""

    def __init__(
        self,
        run_dir: Path,
        backends: Backends,
        *,
        namespace: str = "livecomments",
        fixed_ports: bool = False,
        port_offset: int = 0,
        tls: bool = True,
        jwt_secret: str | None = None,
        extra_env: dict[str, str] | None = None,
        grpc_tls: bool = True,
        zk_auth: str = "",
    ) -> None:
        """``tls``: HTTPS for the API and the streams. ``grpc_tls``: mutual TLS on the
        internal gRPC, one certificate per role from a CA of its own (always, unless
        turned off). ``zk_auth``: ZooKeeper digest credentials, "user:password"."""
        self.run_dir = run_dir
        self.backends = backends
        self.namespace = namespace
        self.fixed_ports = fixed_ports
        self.port_offset = port_offset
        self.services: dict[str, ServiceProc] = {}
        self.ca_file = ""
        self._tls: tuple[str, str] | None = None
        if tls:
            ca, cert, key = make_dev_certificates(run_dir / "tls")
            self.ca_file, self._tls = str(ca), (str(cert), str(key))
        # Per role, the LIVECOMMENTS_GRPC_* settings; {} per role when grpc_tls is off.
        self.grpc_roles: dict[str, dict[str, str]] = (
            make_grpc_certificates(run_dir / "tls" / "grpc") if grpc_tls else {}
        )
        self.zk_auth = zk_auth
        secret_file = run_dir / "jwt-secret"
        if jwt_secret is None:
            if not secret_file.exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                secret_file.write_text(secrets.token_urlsafe(48))
                secret_file.chmod(0o600)
            jwt_secret = secret_file.read_text().strip()
        self.jwt_secret = jwt_secret
        self.extra_env = extra_env or {}
        self._counters: dict[str, int] = {}

    # -- environment ----------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        # The default namespace is the settings' defaults (ZooKeeper root, database,
        # Redis prefix), so the CLI reaches the cluster `livecomments up` starts
        # without being told where.
        default = self.namespace == cfg.BackendSettings.mongo_db
        return {
            "LIVECOMMENTS_ZK_HOSTS": self.backends.zk_hosts,
            "LIVECOMMENTS_ZK_ROOT": f"/{self.namespace}",
            "LIVECOMMENTS_REDIS_URL": self.backends.redis_url,
            "LIVECOMMENTS_REDIS_PREFIX": (
                cfg.BackendSettings.redis_prefix if default else f"{self.namespace}:"
            ),
            "LIVECOMMENTS_MONGO_URI": self.backends.mongo_uri,
            "LIVECOMMENTS_MONGO_DB": self.namespace,
            **({"LIVECOMMENTS_ZK_AUTH": self.zk_auth} if self.zk_auth else {}),
            # Nothing balances load in front of a local cluster: stop at once.
            "LIVECOMMENTS_SHUTDOWN_DELAY": "0",
            **self.extra_env,
        }

    def grpc_env(self, role: str) -> dict[str, str]:
        """The settings that give a process ``role``'s gRPC certificate."""
        if not self.grpc_roles:
            return {"LIVECOMMENTS_GRPC_INSECURE": "1"}
        return dict(self.grpc_roles[role])

    def grpc_security(self, role: str = OPERATOR) -> GrpcSecurity:
        """Credentials for a tool or a test speaking gRPC to this cluster as ``role``."""
        return GrpcSecurity.from_settings(
            cfg.load(cfg.BackendSettings, environ=self.grpc_env(role))
        )

    def _port(self, default: int, index: int) -> int:
        return default + self.port_offset + index - 1 if self.fixed_ports else free_port()

    def planned_ports(
        self, *, dispatchers: int, rtms: int, comment_services: int
    ) -> dict[int, str]:
        """The fixed ports :meth:`start` will take (``up``), each with what it is for."""
        plan: dict[int, str] = {}
        for i in range(1, dispatchers + 1):
            plan[self._port(DISPATCHER_PORT, i)] = f"dispatcher-{i} gRPC"
            plan[self._port(DISPATCHER_ADMIN_PORT, i)] = f"dispatcher-{i} admin"
        for i in range(1, rtms + 1):
            plan[self._port(RTMS_PORT, i)] = f"rtms-{i} SSE"
            plan[self._port(RTMS_GRPC_PORT, i)] = f"rtms-{i} gRPC"
        for i in range(1, comment_services + 1):
            plan[self._port(COMMENT_PORT, i)] = f"comment-{i} HTTP"
        return plan

    def _next(self, kind: str) -> int:
        self._counters[kind] = self._counters.get(kind, 0) + 1
        return self._counters[kind]

    def _tls_env(self) -> dict[str, str]:
        if self._tls is None:
            return {}
        return {"LIVECOMMENTS_TLS_CERT": self._tls[0], "LIVECOMMENTS_TLS_KEY": self._tls[1]}

    @property
    def scheme(self) -> str:
        return "https" if self._tls else "http"

    # -- starting ---------------------------------------------------------------

    def _launch(
        self, kind: str, name: str, env: dict[str, str], port: int, url: str, wait: bool = True
    ) -> ServiceProc:
        proc = start_component(kind, name, self.run_dir, env, port, wait=wait)
        admin = env.get("LIVECOMMENTS_ADMIN_PORT", "0")
        host = env.get("LIVECOMMENTS_ADMIN_HOST", "127.0.0.1")
        metrics = f"http://{host}:{admin}/metrics" if admin != "0" else f"{url}/metrics"
        service = self.services[name] = ServiceProc(proc, env, kind, url, metrics)
        return service

    def metrics_urls(self) -> dict[str, str]:
        """Every process's ``/metrics``, by name (``dispatcher-1``, ``rtms-1``, ``comment-1``)."""
        return {name: service.metrics_url for name, service in self.services.items()}

    def start_dispatcher(
        self, index: int | None = None, *, wait: bool = True, env: dict[str, str] | None = None
    ) -> ServiceProc:
        """``env``: settings of this process only, over the cluster's."""
        index = index or self._next("dispatcher")
        port = self._port(DISPATCHER_PORT, index)
        env = {
            **self.grpc_env(DISPATCHER),
            **self.base_env(),
            "LIVECOMMENTS_NODE_ID": f"dispatcher-{index}",
            "LIVECOMMENTS_PORT": str(port),
            # /metrics and /healthz (a dispatcher has no other HTTP listener).
            "LIVECOMMENTS_ADMIN_PORT": str(self._port(DISPATCHER_ADMIN_PORT, index)),
            **(env or {}),
        }
        url = f"127.0.0.1:{port}"
        return self._launch("dispatcher", f"dispatcher-{index}", env, port, url, wait)

    def start_rtms(
        self, index: int | None = None, *, wait: bool = True, env: dict[str, str] | None = None
    ) -> ServiceProc:
        index = index or self._next("rtms")
        port, grpc_port = self._port(RTMS_PORT, index), self._port(RTMS_GRPC_PORT, index)
        env = {
            **self.grpc_env(RTMS),
            "LIVECOMMENTS_GRPC_HOST": "127.0.0.1",  # loopback: only our own processes
            **self.base_env(),
            **self._tls_env(),
            "LIVECOMMENTS_NODE_ID": f"rtms-{index}",
            "LIVECOMMENTS_PORT": str(port),
            "LIVECOMMENTS_GRPC_PORT": str(grpc_port),
            "LIVECOMMENTS_CORS_ORIGINS": ",".join(self.comment_origins()),
            **(env or {}),
        }
        url = f"{self.scheme}://127.0.0.1:{port}"
        return self._launch("rtms", f"rtms-{index}", env, port, url, wait)

    def comment_origins(self) -> list[str]:
        """Origins the viewer page is served from (for the RTMS nodes' CORS answers)."""
        ports = [self._port(COMMENT_PORT, i) if self.fixed_ports else 0 for i in (1, 2)]
        origins = [
            f"{self.scheme}://{h}:{p}" for p in ports if p for h in ("127.0.0.1", "localhost")
        ]
        return origins or ["*"]

    def start_comment_service(
        self, index: int | None = None, *, wait: bool = True, env: dict[str, str] | None = None
    ) -> ServiceProc:
        index = index or self._next("comment")
        port = self._port(COMMENT_PORT, index)
        env = {
            **self.grpc_env(COMMENT_SERVICE),
            **self.base_env(),
            **self._tls_env(),
            "LIVECOMMENTS_PORT": str(port),
            "LIVECOMMENTS_JWT_SECRET": self.jwt_secret,
            **(env or {}),
        }
        url = f"{self.scheme}://127.0.0.1:{port}"
        return self._launch("comment-service", f"comment-{index}", env, port, url, wait)

    def start(self, *, dispatchers: int = 2, rtms: int = 2, comment_services: int = 1) -> None:
        """Start them all at once, then wait until each is ready.

        Nothing depends on start-up order: every process finds the others in
        ZooKeeper (watched), and nothing is posted before all are ready.
        """
        try:
            started = [self.start_dispatcher(wait=False) for _ in range(dispatchers)]
            started += [self.start_rtms(wait=False) for _ in range(rtms)]
            started += [self.start_comment_service(wait=False) for _ in range(comment_services)]
            for service in started:
                wait_ready(service.proc)
        except BaseException:
            self.stop()
            raise

    def restart(self, name: str) -> ServiceProc:
        """Start a stopped or killed service again with the same settings."""
        old = self.services[name]
        old.proc.stop()
        return self._launch(old.kind, name, old.env, old.proc.port, old.url)

    def stop(self) -> None:
        # Comment services first (no new posts), then RTMS (viewers told), then
        # dispatchers; the processes of one kind stop together.
        for kind in ("comment-service", "rtms", "dispatcher"):
            stop_all([s.proc for s in self.services.values() if s.kind == kind])

    def logs(self) -> str:
        parts = []
        for name, service in self.services.items():
            parts.append(f"----- {name} -----\n{service.proc.log_tail(80)}")
        return "\n".join(parts)
