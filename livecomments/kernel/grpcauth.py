"""Who may speak gRPC to whom: mutual TLS with one certificate per role.

Every component holds a certificate signed by the deployment's internal CA
(``grpc_ca``) whose DNS SAN names its role: ``comment-service.livecomments``,
``dispatcher.livecomments``, ``rtms.livecomments``, ``operator.livecomments``.

- A server asks for a client certificate and refuses a handshake without one
  signed by the CA (``require_client_auth``): an unauthenticated peer never
  reaches a servicer.
- A client checks that the server's certificate names the role it meant to
  reach (``grpc.ssl_target_name_override``), not the address it dialed: so one
  certificate per role serves every host, and a comment service cannot be
  tricked into dispatching to something that only holds, say, an RTMS
  certificate.
- A servicer checks the caller's role once per call or stream (:meth:`allows`):
  only dispatchers deliver to RTMS nodes, only comment services dispatch.

``grpc_insecure`` turns all of it off (plaintext, no checks); a process with
neither certificates nor that setting refuses to start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from livecomments.kernel.settings import BackendSettings

log = logging.getLogger(__name__)

COMMENT_SERVICE = "comment-service"
DISPATCHER = "dispatcher"
RTMS = "rtms"
OPERATOR = "operator"  # tools: the Routes RPC
ROLES = (COMMENT_SERVICE, DISPATCHER, RTMS, OPERATOR)
SAN_KEY = "x509_subject_alternative_name"


def role_name(role: str) -> str:
    """The DNS name a role's certificate carries (and clients verify)."""
    return f"{role}.livecomments"


class GrpcConfigError(ValueError):
    """The gRPC credentials settings are incomplete or unreadable."""


@dataclass(frozen=True)
class GrpcSecurity:
    """This process's gRPC credentials (all None: plaintext, no checks)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @property
    def secure(self) -> bool:
        return self.ca is not None

    @classmethod
    def insecure(cls) -> GrpcSecurity:
        return cls()

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> GrpcSecurity:
        """Read the CA, certificate and key named by ``grpc_ca/grpc_cert/grpc_key``."""
        paths = {"grpc_ca": settings.grpc_ca, "grpc_cert": settings.grpc_cert,
                 "grpc_key": settings.grpc_key}  # fmt: skip
        if not any(paths.values()):
            if settings.grpc_insecure:
                log.warning("gRPC is plaintext and unauthenticated (LIVECOMMENTS_GRPC_INSECURE)")
                return cls()
            raise GrpcConfigError(
                "gRPC needs LIVECOMMENTS_GRPC_CA, LIVECOMMENTS_GRPC_CERT and "
                "LIVECOMMENTS_GRPC_KEY (mutual TLS between the components); set "
                "LIVECOMMENTS_GRPC_INSECURE=1 only if the network authenticates peers itself"
            )
        missing = [name.upper() for name, path in paths.items() if not path]
        if missing:
            raise GrpcConfigError(f"gRPC TLS is half configured: LIVECOMMENTS_{missing[0]} unset")
        try:
            blobs = {name: Path(path).read_bytes() for name, path in paths.items()}
        except OSError as exc:
            raise GrpcConfigError(f"cannot read gRPC credentials: {exc}") from exc
        return cls(blobs["grpc_ca"], blobs["grpc_cert"], blobs["grpc_key"])

    # -- servers ----------------------------------------------------------------

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Listen on ``address``: TLS that demands a client certificate from the CA."""
        if not self.secure:
            return int(server.add_insecure_port(address))
        assert self.cert is not None and self.key is not None
        credentials = grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )
        return int(server.add_secure_port(address, credentials))

    def allows(self, context: Any, roles: Iterable[str]) -> bool:
        """Whether the caller's certificate names one of ``roles`` (always, when insecure)."""
        if not self.secure:
            return True
        names = {bytes(n) for n in context.auth_context().get(SAN_KEY, ())}
        return any(role_name(role).encode() in names for role in roles)

    # -- clients ----------------------------------------------------------------

    def channel(
        self, address: str, peer_role: str, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        """A channel to a server that must hold ``peer_role``'s certificate."""
        if not self.secure:
            return grpc.aio.insecure_channel(address, options=list(options))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        return grpc.aio.secure_channel(
            address,
            credentials,
            options=[*options, ("grpc.ssl_target_name_override", role_name(peer_role))],
        )


async def refuse(context: Any, roles: Iterable[str]) -> None:
    """Abort the call: the caller is authenticated but not in ``roles``."""
    await context.abort(
        grpc.StatusCode.PERMISSION_DENIED, f"this RPC is for {', '.join(sorted(roles))} only"
    )
