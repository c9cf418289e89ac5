"""The stateful suites: 600 examples in all under the CI profile."""

from __future__ import annotations

from .machines import ProtocolMachine, ResumeMachine
from .profiles import stateful

TestProtocol = ProtocolMachine.TestCase
TestProtocol.settings = stateful(examples=300, steps=60)

TestResume = ResumeMachine.TestCase
TestResume.settings = stateful(examples=300, steps=60)
