"""The suite's own guards: offline, and every test starts from the same random state."""

from __future__ import annotations

import _socket
import random
import socket

import numpy as np
import pytest
import torch
from conftest import _is_loopback


@pytest.mark.parametrize("address, allowed", [
    (("127.0.0.1", 6379), True), (("127.8.9.1", 1), True), (("::1", 80, 0, 0), True), (("localhost", 80), True),
    ("/tmp/some.sock", True), (("8.8.8.8", 53), False), (("10.0.0.1", 80), False), (("example.com", 443), False),
])
def test_only_loopback_connections_pass_the_network_guard(address, allowed):
    assert _is_loopback(address) is allowed


def test_the_network_guard_is_installed_for_every_test():
    # (no real connection is attempted here: were the guard broken, it would leave the machine)
    assert socket.socket.connect is not _socket.socket.connect
    assert socket.socket.connect_ex is not _socket.socket.connect_ex


@pytest.mark.parametrize("draw", range(2))
def test_every_test_starts_from_the_same_random_state(draw):
    # the first case draws; the second would see a moved state if it leaked
    values = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    assert values == (random.random(), float(np.random.rand()), float(torch.rand(1)))
