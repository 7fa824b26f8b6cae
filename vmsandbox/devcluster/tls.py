"""The front's TLS certificate: kubectl and every client-go program send credentials only over TLS.

(clientcmd reads a kubeconfig's user only for an https server, so over plain http every
client-go request would be anonymous.) The certificate is self-signed for 127.0.0.1 and
localhost and is its own CA; kubeconfigs embed it as ``certificate-authority-data``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from vmsandbox.devcluster.errors import DevClusterError


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A fresh key and certificate in ``directory``; returns (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "front.crt", directory / "front.key"
    argv = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-sha256",
        "-days",
        "30",
        "-subj",
        "/CN=vmsandbox-devcluster-front",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    try:
        subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise DevClusterError(
            f"openssl could not make the front's certificate: {detail}", step="TLS"
        ) from exc
    key.chmod(0o600)
    return cert, key
