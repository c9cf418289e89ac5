"""Per-engine CURVE keys: one keypair per engine, and the allow-list that says which
public keys may speak and for which engine address.

A key directory, as ``generate_keys`` (and ``embxfer keys generate``) writes it::

    DIR/allowed/NAME.key          public certificate of engine NAME (the allow-list)
    DIR/secret/NAME.key_secret    its secret certificate: give each engine only its own

Each public certificate names its engine's control address in its metadata
(``address = "tcp://host:port"``). Every engine loads the whole allow-list: as a server
it admits only clients whose key is in it and attributes each of their messages to the
address their certificate names; as a client it checks that the engine it connects to
holds the key the allow-list has for that address. Certificates are pyzmq's
(``zmq.auth``): ZPL text files, which ``zmq.auth.load_certificates`` reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

ALLOWED_DIR = "allowed"
SECRET_DIR = "secret"
_ADDRESS = "address"  # the metadata field of a public certificate that names the engine


@dataclass(frozen=True)
class EngineKeys:
    """What one engine needs to run CURVE: its own secret certificate and the allow-list
    directory of every engine's public certificate (its own included)."""

    secret_certificate: Path
    allow_list: Path

    @classmethod
    def in_directory(cls, directory: Path, name: str) -> EngineKeys:
        """Engine ``name``'s keys in a key directory that ``generate_keys`` wrote."""
        return cls(directory / SECRET_DIR / f"{name}.key_secret", directory / ALLOWED_DIR)

    def keypair(self) -> tuple[bytes, bytes]:
        """(public, secret) key, Z85 text."""
        public, secret = zmq.auth.load_certificate(self.secret_certificate)
        if secret is None:
            raise ValueError(f"{self.secret_certificate} holds no secret key")
        return public, secret


class AllowList:
    """The engines allowed to speak: each admitted public key and the one address its
    certificate names. Loaded once; reload by loading a new one."""

    def __init__(self, directory: Path) -> None:
        """Read every ``*.key`` in ``directory``; raise ValueError if one names no address,
        or two name the same address (a message must map to exactly one engine)."""
        self.directory = directory
        self._address_of: dict[str, str] = {}
        self._key_of: dict[str, bytes] = {}
        for certificate in sorted(directory.glob("*.key")):
            public, _ = zmq.auth.load_certificate(certificate)
            address = _metadata(certificate).get(_ADDRESS, "")
            if not address.startswith("tcp://"):
                raise ValueError(f"{certificate} names no tcp:// address in its metadata")
            if address in self._key_of:
                raise ValueError(f"{certificate}: a second key for {address}")
            self._address_of[public.decode("ascii")] = address
            self._key_of[address] = public

    def address_of(self, user_id: str | None) -> str | None:
        """The address a ZAP User-Id (a client's Z85 public key) speaks for; None if the
        key is not (or no longer) allowed."""
        return self._address_of.get(user_id) if user_id is not None else None

    def key_of(self, address: str) -> bytes | None:
        """The public key (Z85) of the engine at ``address``, to check it by as a server."""
        return self._key_of.get(address)

    def __len__(self) -> int:
        return len(self._key_of)


def generate_keys(directory: Path, addresses: Mapping[str, str]) -> dict[str, EngineKeys]:
    """A keypair for each engine name, its public certificate naming ``addresses[name]``.

    Refuses to overwrite a certificate that exists. Secret certificates are readable by
    their owner only.
    """
    allowed = directory / ALLOWED_DIR
    secret = directory / SECRET_DIR
    allowed.mkdir(parents=True, exist_ok=True)
    secret.mkdir(parents=True, exist_ok=True)
    secret.chmod(0o700)
    for name, address in addresses.items():
        if not address.startswith("tcp://"):
            raise ValueError(f"engine {name}: {address!r} is no tcp:// address")
        for existing in (allowed / f"{name}.key", secret / f"{name}.key_secret"):
            if existing.exists():
                raise FileExistsError(f"{existing} exists; keys are never overwritten")
    keys: dict[str, EngineKeys] = {}
    for name, address in addresses.items():
        metadata = {"engine": name, _ADDRESS: address}
        public_file, secret_file = zmq.auth.create_certificates(secret, name, metadata)
        os.chmod(secret_file, 0o600)
        # pyzmq writes metadata into the secret certificate only; the allow-list's copy
        # must carry the address too, so the public certificate is written here.
        public_key, _ = zmq.auth.load_certificate(public_file)
        os.remove(public_file)
        _write_public_certificate(allowed / f"{name}.key", public_key, metadata)
        keys[name] = EngineKeys(Path(secret_file), allowed)
    return keys


def _write_public_certificate(path: Path, public_key: bytes, metadata: Mapping[str, str]) -> None:
    """A ZPL public certificate in the layout pyzmq writes, with ``metadata``."""
    lines = [
        "#   ZeroMQ CURVE Public Certificate (embxfer engine)",
        "#   Exchange securely; its address line says which engine the key speaks for.",
        "",
        "metadata",
        *(f'    {key} = "{value}"' for key, value in metadata.items()),
        "curve",
        f'    public-key = "{public_key.decode("ascii")}"',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _metadata(certificate: Path) -> dict[str, str]:
    """The ``metadata`` section of a ZPL certificate (values quoted or not)."""
    fields: dict[str, str] = {}
    section = ""
    for line in certificate.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
        elif section == "metadata" and "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip().strip("\"'")
    return fields
