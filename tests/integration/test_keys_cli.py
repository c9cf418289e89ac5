"""``embxfer keys generate``: the files an operator hands out, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from embxfer.tools.cli import main
from embxfer.transport.curve_keys import AllowList, EngineKeys


def test_generate_writes_a_keypair_per_engine_on_consecutive_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", str(tmp_path), "--engines", "3", "--port", "6000"]) == 0

    allowed = AllowList(tmp_path / "allowed")
    for i in range(3):
        keys = EngineKeys.in_directory(tmp_path, f"engine-{i}")
        assert allowed.key_of(f"tcp://127.0.0.1:{6000 + i}") == keys.keypair()[0]
    assert f"allow-list: {tmp_path / 'allowed'}" in capsys.readouterr().out


def test_generate_takes_an_address_per_engine_and_refuses_to_overwrite(tmp_path: Path) -> None:
    addresses = "tcp://10.0.0.5:5555, tcp://10.0.0.6:5555"
    args = ["keys", "generate", str(tmp_path), "--engines", "2", "--addresses", addresses]
    assert main(args) == 0
    assert AllowList(tmp_path / "allowed").key_of("tcp://10.0.0.6:5555") is not None
    assert main(args) == 2  # existing keys stay
    with pytest.raises(SystemExit, match="names 2 engines, --engines 3"):
        main([*args[:4], "3", *args[5:]])
