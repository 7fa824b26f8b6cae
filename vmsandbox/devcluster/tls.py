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
        "ec",  # P-256: a handshake costs a fraction of an RSA one, and every exec makes one
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
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


def _openssl(argv: list[str], what: str) -> None:
    try:
        subprocess.run(["openssl", *argv], capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise DevClusterError(f"openssl could not make {what}: {detail}", step="TLS") from exc


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh CA called ``name`` in ``directory``: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}-ca.crt", directory / f"{name}-ca.key"
    _openssl(
        [
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-sha256", "-days", "30"),
            *("-subj", f"/CN={name}-ca", "-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign", "-keyout", str(key), "-out", str(cert)),
        ],
        f"the {name} CA",
    )
    key.chmod(0o600)
    return cert, key


def sign_certificate(
    ca: tuple[Path, Path], directory: Path, common_name: str, *, client: bool, dns: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """A key and a certificate for ``common_name`` signed by ``ca``: a client certificate
    (clientAuth) or a serving one for ``dns`` and 127.0.0.1. Returns (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = common_name.replace(":", "_")
    cert, key, csr = directory / f"{stem}.crt", directory / f"{stem}.key", directory / f"{stem}.csr"
    ext = directory / f"{stem}.ext"
    if client:
        ext.write_text("extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    else:
        names = ",".join(["IP:127.0.0.1", *(f"DNS:{d}" for d in dns)])
        ext.write_text(f"extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nsubjectAltName={names}\n")
    _openssl(
        [
            *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-subj", f"/CN={common_name}"),
            "-keyout",
            str(key),
            "-out",
            str(csr),
        ],
        f"a key for {common_name}",
    )
    _openssl(
        [
            *("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial"),
            *("-days", "30", "-sha256", "-extfile", str(ext), "-out", str(cert)),
        ],
        f"the certificate of {common_name}",
    )
    key.chmod(0o600)
    csr.unlink(missing_ok=True)
    ext.unlink(missing_ok=True)
    return cert, key
