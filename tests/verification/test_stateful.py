"""The stateful suites: 1,500 examples in all under the CI profile."""

from __future__ import annotations

from .machines import PressureMachine, ProtocolMachine, ResumeMachine, ReuseMachine
from .profiles import stateful

TestProtocol = ProtocolMachine.TestCase
TestProtocol.settings = stateful(examples=600, steps=100)

TestResume = ResumeMachine.TestCase
TestResume.settings = stateful(examples=600, steps=100)

TestPressure = PressureMachine.TestCase
TestPressure.settings = stateful(examples=300, steps=100)

TestReuse = ReuseMachine.TestCase
TestReuse.settings = stateful(examples=300, steps=100)
