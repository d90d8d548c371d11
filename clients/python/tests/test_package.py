"""The package itself: PEP 561 typed, and the one under test is the one meant (the install under
`make test-python`, else the tree's source)."""

from __future__ import annotations

import os

from conftest import INSTALLED, SOURCE


def test_the_package_under_test_is_the_intended_one_and_typed() -> None:
    import agentchat
    location = os.path.dirname(os.path.abspath(agentchat.__file__))
    assert (location != os.path.join(SOURCE, "agentchat")) == INSTALLED, location
    assert os.path.isfile(os.path.join(location, "py.typed")), "PEP 561 marker missing"
    assert agentchat.__version__ and "AgentChatClient" in agentchat.__all__
