"""Per-engine key directories: what generate_keys writes and what an AllowList accepts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq.auth

from embxfer.transport.curve_keys import AllowList, EngineKeys, generate_keys

ADDRESSES = {"encoder": "tcp://10.0.0.5:5555", "language-0": "tcp://10.0.0.6:5555"}


def test_each_engine_gets_its_own_keypair_and_the_allow_list_names_its_address(
    tmp_path: Path,
) -> None:
    keys = generate_keys(tmp_path, ADDRESSES)

    assert keys == {name: EngineKeys.in_directory(tmp_path, name) for name in ADDRESSES}
    allowed = AllowList(tmp_path / "allowed")
    publics = {name: engine.keypair()[0] for name, engine in keys.items()}
    assert len(set(publics.values())) == len(allowed) == 2
    for name, address in ADDRESSES.items():
        assert allowed.key_of(address) == publics[name]
        assert allowed.address_of(publics[name].decode()) == address
    # pyzmq's authenticator reads the same allow-list: exactly these keys.
    assert set(zmq.auth.load_certificates(tmp_path / "allowed")) == set(publics.values())
    assert allowed.address_of(None) is None
    assert allowed.key_of("tcp://10.0.0.7:5555") is None


def test_secrets_are_for_their_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path, ADDRESSES)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o700
    for engine in keys.values():
        assert stat.S_IMODE(engine.secret_certificate.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        generate_keys(tmp_path, {"encoder": "tcp://10.0.0.9:5555"})
    assert AllowList(tmp_path / "allowed").key_of("tcp://10.0.0.9:5555") is None


def test_an_allow_list_refuses_certificates_it_cannot_map_to_one_engine(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tcp:// address"):
        generate_keys(tmp_path, {"x": "10.0.0.5:5555"})
    generate_keys(tmp_path / "a", {"x": "tcp://10.0.0.5:5555"})
    generate_keys(tmp_path / "b", {"y": "tcp://10.0.0.5:5555"})
    (tmp_path / "a" / "allowed" / "y.key").write_bytes(
        (tmp_path / "b" / "allowed" / "y.key").read_bytes()
    )
    with pytest.raises(ValueError, match="a second key for tcp://"):
        AllowList(tmp_path / "a" / "allowed")
    zmq.auth.create_certificates(tmp_path / "a" / "allowed", "bare")
    (tmp_path / "a" / "allowed" / "y.key").unlink()
    with pytest.raises(ValueError, match=r"bare\.key names no tcp:// address"):
        AllowList(tmp_path / "a" / "allowed")
