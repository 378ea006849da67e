"""TLS for local runs: a throwaway CA and a certificate for localhost/127.0.0.1, and
another CA with one certificate per role for the internal gRPC."""

from __future__ import annotations

import ssl
from pathlib import Path

from livecomments.kernel.grpcauth import ROLES, role_name


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def make_dev_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Write ``ca.pem``, ``server.pem`` and ``server.key``; returns their paths.

    The CA is made anew for each directory; trust ``ca.pem`` (or pass
    ``--cacert``) to talk to a local cluster with verification on.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
    )
    if ca_path.exists() and cert_path.exists() and key_path.exists():
        return ca_path, cert_path, key_path
    import trustme  # only the launcher makes certificates; servers only load them

    ca = trustme.CA(organization_name="livecomments local CA")
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def make_grpc_certificates(directory: Path) -> dict[str, dict[str, str]]:
    """A CA of its own for the internal gRPC, and one certificate per role.

    Returns, per role (see :mod:`livecomments.kernel.grpcauth`), the ``LIVECOMMENTS_GRPC_*``
    settings that give a process that role. Separate from the HTTPS CA: viewers'
    browsers may be told to trust that one, and nothing they trust should open
    the internal hops.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    paths = {role: (directory / f"{role}.pem", directory / f"{role}.key") for role in ROLES}
    if not ca_path.exists() or not all(c.exists() and k.exists() for c, k in paths.values()):
        import trustme

        ca = trustme.CA(organization_name="livecomments internal gRPC CA")
        for role, (cert_path, key_path) in paths.items():
            cert = ca.issue_cert(role_name(role), common_name=role_name(role))
            cert.private_key_pem.write_to_path(str(key_path))
            key_path.chmod(0o600)
            cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        ca.cert_pem.write_to_path(str(ca_path))  # last: its presence means the set is whole
    return {
        role: {
            "LIVECOMMENTS_GRPC_CA": str(ca_path),
            "LIVECOMMENTS_GRPC_CERT": str(cert_path),
            "LIVECOMMENTS_GRPC_KEY": str(key_path),
        }
        for role, (cert_path, key_path) in paths.items()
    }
