"""``--hosts netns``: each process of a cluster on a host of its own.

Every engine (and the fuzzer, when there is one) gets a network namespace of a
``netns.Testbed``; its worker enters it before it opens a socket, and binds and
advertises that namespace's address, so ZeroMQ and Mooncake cross the test bed's
bridge as they would cross a network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from embxfer.tools.demo import ENCODER, DemoSettings

from .messages import WorkerSpec
from .netns import Testbed
from .spoofer import SPOOFER

FUZZER = "fuzzer"  # the side name of the hostile-frame thrower
CONTROL_PORT = 5555  # with CURVE, each engine's certificate names it: every host is empty
_SHORT = {ENCODER: "enc", FUZZER: "fz", SPOOFER: "sp"}


def host_name(side: str) -> str:
    """The test bed host of a side: ``enc``, ``lm0``, ``lm1``, ..., ``fz`` and ``sp``."""
    return _SHORT.get(side) or "lm" + side.rsplit("-", 1)[1]


def testbed(settings: DemoSettings, extra_sides: Sequence[str] = ()) -> Testbed:
    """A test bed (not yet built) with a host for every side of the run."""
    return Testbed([host_name(side) for side in [*settings.side_names(), *extra_sides]])


def control_addresses(bed: Testbed, sides: Sequence[str]) -> dict[str, str]:
    """Each side's control address on its own host (for the certificates of CURVE keys)."""
    return {side: f"tcp://{bed.hosts[host_name(side)].address}:{CONTROL_PORT}" for side in sides}


def place(spec: WorkerSpec, bed: Testbed) -> WorkerSpec:
    """``spec`` moved onto its host: it enters the namespace and binds its address."""
    host = bed.hosts[host_name(spec.side)]
    network = dataclasses.replace(spec.network, host=host.address, advertise_host=None)
    return dataclasses.replace(spec, network=network, netns=host.path)
