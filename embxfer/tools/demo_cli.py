"""``embxfer demo``: options, then the cross-process (default) or the in-process demo."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.room import Timeouts
from embxfer.tools.demo import DemoSettings, run_inproc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoSettings()
    parser.add_argument(
        "--transport",
        choices=["mooncake", "inproc"],
        default="mooncake",
        help="mooncake: an encoder process and --receivers language processes, ZeroMQ for "
        "control and Mooncake writes over TCP on --host; inproc: threads in this process",
    )
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument(
        "--tokens",
        default=defaults.tokens,
        help="lengths: 'A,B,...' cycled, 'LO:HI' uniform, or 'lognormal:MEDIAN:SIGMA'",
    )
    parser.add_argument(
        "--default-alloc", type=int, default=defaults.default_alloc, metavar="TOKENS"
    )
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--receivers", type=int, default=defaults.receivers)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument(
        "--receiver-tokens",
        default=str(defaults.receiver_tokens),
        metavar="TOKENS|PERCENT%",
        help="receiver buffer capacity in tokens, or in percent of the demand (concurrency "
        "x the mean request length) (0: concurrency x 2 x default-alloc)",
    )
    parser.add_argument(
        "--sender-tokens",
        default=str(defaults.sender_tokens),
        metavar="TOKENS|PERCENT%",
        help="encoder buffer capacity, the same way (0: concurrency x the longest request)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--announce",
        action="store_true",
        help="the encoder announces each room's length when it creates the room (a vision "
        "encoder knows it from the image grid): receivers allocate for it, no resume",
    )
    parser.add_argument(
        "--reuse-ids",
        action="store_true",
        help="room ids drawn from concurrency + 2, so they are reused all the time, and "
        "schedulers abort a tenth of the requests as soon as they open them",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=defaults.timeout_s,
        help="room deadline: longest a room may bootstrap, or go without progress",
    )
    parser.add_argument(
        "--peer-timeout-s",
        type=float,
        default=defaults.peer_timeout_s,
        help="a peer silent this long is dead and its rooms fail (heartbeats: a quarter of it)",
    )
    parser.add_argument(
        "--write-grace-s",
        type=float,
        help="how long a receiver keeps blocks a lost sender might still write "
        f"(default {defaults.write_grace_s:g} s; with a partition fault twice --partition-s "
        f"plus 5 s, at most the library's default, {Timeouts().write_grace_s:g} s, which "
        "outlasts any stalled Mooncake write)",
    )
    processes = parser.add_argument_group("cross-process runs (--transport mooncake)")
    processes.add_argument(
        "--fault",
        choices=[
            "kill-receiver",
            "kill-sender",
            "stall-receiver",
            "spoof-abort",
            "partition-receiver",
            "partition-sender",
        ],
        help="mid-run: SIGKILL the last language process or the encoder, or SIGSTOP the "
        "last language process, or (--hosts netns) cut the host of the last language "
        "process or of the encoder off for --partition-s; the summary says how every room "
        "ended. spoof-abort: an extra process (with --curve, holding a valid key of its "
        "own) sends Aborts for every live room in other engines' names (with --curve every "
        "room must still succeed)",
    )
    processes.add_argument(
        "--partition-s",
        type=float,
        default=5.0,
        help="how long a partition fault keeps the host cut off",
    )
    processes.add_argument(
        "--fault-after",
        type=int,
        default=0,
        metavar="REQUESTS",
        help="inject the fault once this many requests are done (0: a third of them)",
    )
    processes.add_argument(
        "--hosts",
        choices=["local", "netns"],
        default="local",
        help="local: every process on --host; netns (root): each process on a host of its "
        "own, a network namespace with an address from 198.18.0.0/15, all joined by a "
        "bridge; removed at the end",
    )
    processes.add_argument(
        "--host", default="127.0.0.1", help="address every process binds (and advertises)"
    )
    processes.add_argument(
        "--advertise-host",
        help="address peers are told, if not --host (needed when --host is a wildcard)",
    )
    processes.add_argument(
        "--curve",
        action="store_true",
        help="CURVE on the control plane with per-engine keys, made for the run in a "
        "temporary directory: each engine admits only the run's keys, and each key "
        "speaks only for its own engine's address (a worker reloads its allow-list on "
        "SIGHUP)",
    )
    processes.add_argument(
        "--fuzz-frames",
        type=int,
        default=0,
        metavar="N",
        help="a fuzzer process (on a host of its own with --hosts netns) throws N hostile "
        "control frames at the encoder; rooms run until the encoder has judged them all, "
        "and the summary compares its counters, reason by reason, with the prediction",
    )
    processes.add_argument(
        "--deadline-s",
        type=float,
        default=600.0,
        help="give up on requests still open after this long",
    )
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        requests=args.requests,
        tokens=args.tokens,
        default_alloc=args.default_alloc,
        block_size=args.block_size,
        hidden=args.hidden,
        receivers=args.receivers,
        concurrency=args.concurrency,
        seed=args.seed,
        timeout_s=args.timeout_s,
        peer_timeout_s=args.peer_timeout_s,
        write_grace_s=_write_grace_s(args),
        announce=args.announce,
        reuse_ids=args.reuse_ids,
    )
    settings = dataclasses.replace(
        settings,
        receiver_tokens=pool_tokens(args.receiver_tokens, settings),
        sender_tokens=pool_tokens(args.sender_tokens, settings),
    )
    if args.transport == "inproc":
        if args.fault or args.hosts != "local":
            raise SystemExit("--fault and --hosts need --transport mooncake (they hit processes)")
        summary = run_inproc(settings, progress=not args.no_progress)
    else:
        # Imported here: the in-process demo must not need Mooncake or spawn anything.
        from embxfer.remote import NetworkConfig
        from embxfer.tools.cluster.demo import Fault, ProcessOptions, run_processes
        from embxfer.tools.cluster.launcher import WorkerStartError
        from embxfer.tools.cluster.netns import NetnsError, unavailable

        netns = args.hosts == "netns"
        if netns and (problem := unavailable()):
            print(f"embxfer demo: --hosts netns: {problem}", file=sys.stderr)
            return 2
        try:
            options = ProcessOptions(
                network=NetworkConfig(host=args.host, advertise_host=args.advertise_host),
                curve=args.curve,
                fault=Fault(args.fault) if args.fault else None,
                fault_after=args.fault_after,
                deadline_s=args.deadline_s,
                log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                netns=netns,
                partition_s=args.partition_s,
                fuzz_frames=args.fuzz_frames,
            )
        except ValueError as error:  # options that do not go together
            print(f"embxfer demo: {error}", file=sys.stderr)
            return 2
        try:
            summary = run_processes(settings, options, progress=not args.no_progress)
        except KeyboardInterrupt:  # the workers are stopped and reaped by now
            print("embxfer demo: interrupted", file=sys.stderr)
            return 130
        except (WorkerStartError, NetnsError) as error:
            print(f"embxfer demo: {error}", file=sys.stderr)
            return 2
    summary.print(args.json)
    return 0 if summary.ok() else 1


def pool_tokens(text: str, settings: DemoSettings) -> int:
    """A buffer capacity: ``TOKENS``, or ``PERCENT%`` of what the open requests hold."""
    if text.endswith("%"):
        return blocks_needed(settings.demand_tokens * int(text[:-1]), 100)
    return int(text)


def _write_grace_s(args: argparse.Namespace) -> float:
    """A cut holds the writes in flight until TCP retransmits after the heal, which its
    doubling backoff puts up to twice the cut's length after the write began (measured:
    a write across a 12 s cut landed 12.3 s after it began). Blocks such a write may
    target are held that long, plus a margin, unless the sender's word frees them
    sooner; no Mooncake write outlasts the library's default anyway."""
    if args.write_grace_s is not None:
        return float(args.write_grace_s)
    if args.fault:
        from embxfer.tools.cluster.demo import Fault  # processes only: see run

        if Fault(args.fault).is_partition:
            return min(2.0 * float(args.partition_s) + 5.0, Timeouts().write_grace_s)
    return DemoSettings().write_grace_s
