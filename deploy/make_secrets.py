"""Make what docker-compose.yml reads, once, before the first `docker-compose up`:

    python deploy/make_secrets.py

- `.env`: the Django secret key and a password per Redis user and per database role (docker-compose
  reads `.env` by itself);
- `var/tls/`: a certificate authority of this deployment (`ca.pem`), Redis's certificate
  (`redis.pem`, `redis.key`) and the balancer's (`cert.pem`, `key.pem`, for a trial: browsers do
  not know the CA);
- `var/keys/`: each service's Ed25519 signing key (`orders.pem`, given to orders' processes only)
  and every public key in `var/keys/trusted/`, which every worker trusts.

Nothing that exists is overwritten: run it again after deleting what should be made anew.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
#: Service identities: each has a Redis user and a signing key.
SERVICES = ("web", "inventory", "orders", "payments", "presentation", "operators")
#: Database roles: the shared database's owner, then one per domain.
ROLES = ("site", "inventory", "orders", "payments")


class Authority:
    """A certificate authority: it issues server certificates for names and addresses."""

    def __init__(self, days: int = 825) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "django-distributed CA")])
        self.days = days
        self.certificate = self._builder(self.name, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        self.signed = self.certificate.sign(self.key, hashes.SHA256())

    def _builder(self, subject: x509.Name, key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self.days))
        )

    def write(self, path: Path) -> Path:
        path.write_bytes(self.signed.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, names: list[str], certificate: Path, key_file: Path) -> None:
        """A server certificate for `names` (host names or IP addresses) and its private key."""
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        signed = (
            self._builder(subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        certificate.write_bytes(signed.public_bytes(serialization.Encoding.PEM))
        _private(
            key_file,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )


def _private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def environment() -> dict[str, str]:
    """The variables of `.env`: a new random value each."""
    values = {"DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}
    values |= {f"REDIS_{service.upper()}_PASSWORD": secrets.token_urlsafe(24) for service in SERVICES}
    values |= {f"POSTGRES_{role.upper()}_PASSWORD": secrets.token_urlsafe(24) for role in ROLES}
    values |= {
        name: secrets.token_urlsafe(24) for name in ("POSTGRES_PASSWORD", "POSTGRES_REPLICATION_PASSWORD")
    }
    return values


def main() -> None:
    made: list[str] = []
    env_file = ROOT / ".env"
    if not env_file.exists():
        _private(env_file, "".join(f"{name}={value}\n" for name, value in environment().items()).encode())
        made.append(str(env_file))
    tls = ROOT / "var" / "tls"
    if not (tls / "ca.pem").exists():
        tls.mkdir(parents=True, exist_ok=True)
        authority = Authority()
        authority.write(tls / "ca.pem")
        authority.issue(["redis"], tls / "redis.pem", tls / "redis.key")
        authority.issue(["localhost", "127.0.0.1"], tls / "cert.pem", tls / "key.pem")
        made.append(f"{tls}/ (ca.pem, redis.pem, cert.pem)")
    keys = ROOT / "var" / "keys"
    if not keys.exists():
        sys.path.insert(0, str(ROOT))
        from bus.identity import new_key

        (keys / "trusted").mkdir(parents=True)
        for service in SERVICES:
            _, public, _ = new_key(keys, service)
            shutil.move(public, keys / "trusted" / public.name)
        made.append(f"{keys}/ (a signing key per service, trusted/ their public keys)")
    print("Made: " + ", ".join(made) if made else "Nothing to make: .env, var/tls/ and var/keys/ exist.")


if __name__ == "__main__":
    main()
