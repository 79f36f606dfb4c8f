"""HTTPS for the server: the user's certificate and key, or a self-signed pair made once and kept in the data
folder; and what to tell the user about how their traffic travels.

On a rented GPU (`--listen`) the password, prompts and pictures otherwise cross the network in plain HTTP.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

CERT_NAME, KEY_NAME = "self-signed-cert.pem", "self-signed-key.pem"
VALID_DAYS = 397  # within the 398 days browsers accept for a server certificate
RENEW_DAYS = 30  # a kept certificate closer than this to its end is made again


@dataclass(frozen=True)
class TlsFiles:
    certfile: str
    keyfile: str
    fingerprint: str  # SHA-256 of the certificate, as browsers show it: compare it when the browser warns
    self_signed: bool


def server_tls(certfile: str | None, keyfile: str | None, self_signed: bool, folder: Path,
               names: list[str], share: bool = False) -> TlsFiles | None:
    """The files to serve HTTPS with, checked now (a bad pair is a clear error at start, not a server that
    cannot bind), or None for plain HTTP. `names`: host names and addresses a made certificate must cover."""
    if share and (self_signed or certfile or keyfile):
        # Gradio's tunnel speaks plain HTTP to the local server: behind TLS the share link would be dead.
        raise UserError("--share cannot be combined with --tls-*: the share link is already HTTPS, and Gradio's "
                        "tunnel talks plain HTTP to this server", field="share")
    if self_signed and (certfile or keyfile):
        raise UserError("choose either --tls-self-signed or your own --tls-certfile / --tls-keyfile",
                        field="tls-self-signed")
    if bool(certfile) != bool(keyfile):
        raise UserError("--tls-certfile and --tls-keyfile go together: the certificate and its private key",
                        field="tls-keyfile" if certfile else "tls-certfile")
    if self_signed:
        certfile, keyfile = _self_signed(folder, names)
    elif not certfile:
        return None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except FileNotFoundError as err:
        raise UserError(f"no such file: {err.filename}", field="tls-certfile") from None
    except (ssl.SSLError, OSError, ValueError) as err:
        raise UserError(f"cannot use {certfile} with {keyfile}: {getattr(err, 'reason', None) or err} (a PEM "
                        "certificate and the unencrypted PEM private key that belongs to it)",
                        field="tls-certfile") from None
    return TlsFiles(str(certfile), str(keyfile), fingerprint(Path(certfile)), self_signed)


def fingerprint(certfile: Path) -> str:
    pem = certfile.read_text(encoding="ascii", errors="replace")
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem[start:end])).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def certificate_names(listen: bool, extra: list[str]) -> list[str]:
    """What a made certificate covers: this machine's names, with --listen its host name, and --allowed-hosts."""
    names = ["localhost", "127.0.0.1", "::1"]
    if listen:  # its addresses are not listed: behind NAT the one the browser uses is not this machine's own
        names.append(socket.gethostname())
    names.extend(n for n in extra if not n.startswith(".") and n not in names)
    return list(dict.fromkeys(names))


def _self_signed(folder: Path, names: list[str]) -> tuple[str, str]:
    """Reuse the kept pair while it is valid and covers `names`; otherwise make a new one (P-256, ~1 s)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise UserError("making a certificate needs the 'cryptography' package: pip install cryptography "
                        "(or give your own --tls-certfile and --tls-keyfile)", field="tls-self-signed") from None
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert_path.is_file() and key_path.is_file():
        try:
            kept = x509.load_pem_x509_certificate(cert_path.read_bytes())
            covered = {str(n).lower() for n in kept.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)}
            covered |= {str(a) for a in kept.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)}
            wanted = {str(_ip(n) or n.lower()) for n in names}
            if kept.not_valid_after_utc - now > datetime.timedelta(days=RENEW_DAYS) and wanted <= covered:
                return str(cert_path), str(key_path)
        except (ValueError, x509.ExtensionNotFound, OSError):
            pass  # unreadable or foreign: made again below
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Homegrown (self-signed)")])
    alt = [x509.IPAddress(_ip(n)) if _ip(n) else x509.DNSName(n.lower()) for n in names]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Atomically, and for the key readable by this user only (from the moment the file exists)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a left-over file would keep its own permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def transport_notes(listen: bool, share: bool, tls: TlsFiles | None, port: int) -> list[str]:
    """Lines for the start-up output: whether the password, prompts and pictures travel encrypted."""
    notes = []
    if tls is not None:
        kind = "a self-signed certificate (your browser warns once)" if tls.self_signed else "your certificate"
        notes.append(f"HTTPS with {kind}: {tls.certfile}, SHA-256 fingerprint {tls.fingerprint}")
    elif listen:
        notes.append(
            "Warning: traffic on the network is unencrypted (plain HTTP): the password, prompts and pictures can be "
            "read by anyone on the way. Start with --tls-self-signed (a certificate made and kept in the data "
            "folder), or --tls-certfile/--tls-keyfile, or reach the app through an SSH tunnel: "
            f"ssh -L {port}:localhost:{port} user@this-machine, then open http://localhost:{port}.")
    if share:
        notes.append("The public share link is HTTPS: the browser's traffic to it is encrypted.")
    return notes
