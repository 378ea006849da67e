"""TLS for local runs: a throwaway CA and a certificate for localhost/127.0.0.1."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


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
    ca = trustme.CA(organization_name="livecomments local CA")
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path
