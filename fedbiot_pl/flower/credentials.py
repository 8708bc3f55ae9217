"""TLS certificates for a SuperLink and ECDSA keys for SuperNode authentication (``openssl``, ``ssh-keygen``)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from fedbiot_pl.flower.processes import _check_call, _tool


@dataclass(frozen=True)
class Certificates:
    """The TLS files of a SuperLink.

    Attributes:
        ca_cert: The CA certificate (PEM): SuperNodes get it as ``--root-certificates``, the CLI as
            ``root-certificates``, the SuperLink as ``--ssl-ca-certfile``.
        server_cert: The server certificate (PEM), ``--ssl-certfile``.
        server_key: The server's private key (PEM), ``--ssl-keyfile``.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _san(host: str) -> str:
    names: list[str] = []
    for name in (host, "127.0.0.1", "localhost"):
        try:
            entry = f"IP:{ipaddress.ip_address(name)}"
        except ValueError:
            entry = f"DNS:{name}"
        if entry not in names:
            names.append(entry)
    return ", ".join(names)


def make_certificates(folder: Path, host: str = "127.0.0.1") -> Certificates:
    """Make a self-signed CA and a server certificate for a SuperLink reached at ``host`` (``openssl`` needed).

    The keys are EC P-256. The server certificate's subjectAltName lists ``host`` (as an IP address or a DNS name)
    plus ``127.0.0.1`` and ``localhost``, so the SuperLink machine's own CLI can use the loopback address. Existing
    files in ``folder`` are replaced.

    Args:
        folder: Where ``ca.key``, ``ca.crt``, ``server.key`` and ``server.pem`` are written (created if missing).
        host: The address or DNS name that SuperNodes and the CLI use for the SuperLink.

    Returns:
        The paths of the CA certificate and of the server certificate and key.

    Raises:
        EngineError: ``openssl`` is missing or failed.
    """
    openssl = _tool("openssl", "it makes the SuperLink's TLS certificates: install it (e.g. apt-get install openssl).")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, pem = folder / "server.key", folder / "server.csr", folder / "server.pem"
    cn = host[:64]
    (folder / "ca.cnf").write_text(
        "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = v3_ca\n"
        "[dn]\nO = fedbiot-pl\nCN = fedbiot-pl Flower CA\n"
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    (folder / "server.cnf").write_text(
        f"[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nO = fedbiot-pl\nCN = {cn}\n"
        "[ext]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\n"
        f"subjectAltName = {_san(host)}\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    what = "making TLS certificates"
    _check_call([openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "3650",
                 "-sha256", "-config", str(folder / "ca.cnf")], what=what)
    _check_call([openssl, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr),
                 "-config", str(folder / "server.cnf")], what=what)
    _check_call([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
                 "-set_serial", str(int.from_bytes(os.urandom(15), "big")), "-out", str(pem), "-days", "3650",
                 "-sha256", "-extfile", str(folder / "server.cnf"), "-extensions", "ext"], what=what)
    return Certificates(ca_cert=ca_crt, server_cert=pem, server_key=key)


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """Make a SuperNode's authentication key pair: ``ssh-keygen -t ecdsa -b 384 -N ""`` (``flwr`` wants an EC key).

    Args:
        folder: Where the key files go (created if missing).
        name: The private key's file name; the public key is ``<name>.pub``. Existing files are replaced.

    Returns:
        ``(private key, public key)``: the first is the node's ``--auth-supernode-private-key``, the second what
        ``flwr supernode register`` takes.

    Raises:
        EngineError: ``ssh-keygen`` is missing or failed.
    """
    keygen = _tool("ssh-keygen", "it makes the SuperNodes' authentication keys: install it (e.g. apt-get install "
                               "openssh-client).")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / name, folder / f"{name}.pub"
    for path in (private, public):  # ssh-keygen would ask before overwriting
        path.unlink(missing_ok=True)
    _check_call([keygen, "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", name, "-f", str(private)],
                what="making a SuperNode key")
    return private, public


# --- config strings for --run-config and --node-config -----------------------------------------------------------
