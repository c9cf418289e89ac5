"""``embxfer keys generate DIR --engines N``: one CURVE keypair per engine and the
allow-list every engine loads (``transport/curve_keys.py`` describes the directory)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embxfer.transport.curve_keys import ALLOWED_DIR, generate_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="keys_action", required=True)
    generate = actions.add_parser(
        "generate",
        help="a keypair per engine, each certificate naming the engine's control address",
        description="Write DIR/secret/engine-I.key_secret (give each engine only its own) "
        f"and DIR/{ALLOWED_DIR}/engine-I.key (the allow-list: copy it to every engine). "
        "Each public certificate's 'address' names the only control address its key may "
        "speak for. Existing certificates are never overwritten.",
    )
    generate.add_argument("directory", type=Path, metavar="DIR")
    generate.add_argument("--engines", type=int, required=True, metavar="N")
    generate.add_argument(
        "--addresses",
        help="tcp://HOST:PORT of each engine, comma-separated, N of them "
        "(default: --host with consecutive ports from --port)",
    )
    generate.add_argument("--host", default="127.0.0.1", help="engines' host, without --addresses")
    generate.add_argument(
        "--port", type=int, default=5555, help="engine-0's port; engine-I's is +I"
    )


def run(args: argparse.Namespace) -> int:
    if args.engines < 1:
        raise SystemExit("--engines must be at least 1")
    if args.addresses:
        addresses = [address.strip() for address in args.addresses.split(",")]
    else:
        addresses = [f"tcp://{args.host}:{args.port + i}" for i in range(args.engines)]
    if len(addresses) != args.engines:
        raise SystemExit(f"--addresses names {len(addresses)} engines, --engines {args.engines}")
    try:
        keys = generate_keys(
            args.directory, {f"engine-{i}": address for i, address in enumerate(addresses)}
        )
    except (OSError, ValueError) as error:
        print(f"embxfer keys: {error}", file=sys.stderr)
        return 2
    for (name, engine), address in zip(keys.items(), addresses, strict=True):
        print(f"{name}  {address}  {engine.secret_certificate}")
    print(f"allow-list: {args.directory / ALLOWED_DIR}")
    return 0
