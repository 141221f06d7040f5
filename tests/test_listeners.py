"""Which listening sockets the master opens, and which of them each pool child serves.

Real sockets on the loopback: ``SO_REUSEPORT`` groups, a socket passed by
socket activation, sockets the config does not name.
"""

from __future__ import annotations

import socket

import pytest

from labsquid import listeners
from labsquid.config import parse_text
from labsquid.pool import listener_groups
from labsquid.settings import port_specs
from support.service import free_port


def config(dispatch: str, size: int, *ports: int):
    lines = [f"http_port 127.0.0.1:{p}" for p in ports]
    return parse_text("\n".join([*lines, f"pool_dispatch {dispatch}", f"pool_size {size}", ""]))


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


@pytest.fixture
def opened():
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def test_reuseport_binds_a_socket_per_child_and_port_and_each_child_takes_one(opened):
    a, b = free_port(), free_port()
    cfg = config("reuseport", 3, a, b)
    opened += listeners.open_all(port_specs(cfg))
    assert [port_of(s) for s in opened] == [a, a, a, b, b, b]
    groups = listener_groups(cfg, opened)
    assert [[port_of(s) for s in g] for g in groups] == [[a, b]] * 3
    # Every socket is served, each by exactly one child.
    served = [s.fileno() for g in groups for s in g]
    assert sorted(served) == sorted(s.fileno() for s in opened)


def test_an_activation_socket_the_config_does_not_name_goes_to_every_child(opened):
    a, extra = free_port(), free_port()
    cfg = config("reuseport", 2, a)
    passed = socket.create_server(("127.0.0.1", extra))
    opened += listeners.open_all(port_specs(cfg), [passed])
    assert [port_of(s) for s in opened] == [a, a, extra]
    groups = listener_groups(cfg, opened)
    assert [[port_of(s) for s in g] for g in groups] == [[a, extra], [a, extra]]
    assert groups[0][0] is not groups[1][0]  # the group's two sockets, one each


def test_an_activation_socket_that_cannot_join_a_group_is_shared(opened):
    a = free_port()
    cfg = config("reuseport", 2, a)
    passed = socket.create_server(("127.0.0.1", a))  # no SO_REUSEPORT: no group
    opened += listeners.open_all(port_specs(cfg), [passed])
    assert opened[0] is passed and len(opened) == 2
    groups = listener_groups(cfg, opened)
    assert [len(g) for g in groups] == [1, 1]
    assert {port_of(g[0]) for g in groups} == {a}


def test_a_group_of_another_size_is_served_by_every_child(opened):
    """A group the wrong size (the master bound for 3, the kid runs 2) is
    not cut: each child watches all of it, so no socket of it is unread."""
    a = free_port()
    opened += listeners.open_all(port_specs(config("reuseport", 3, a)))
    groups = listener_groups(config("reuseport", 2, a), opened)
    assert groups == [opened, opened]


@pytest.mark.parametrize("dispatch", ["notify", "passfd", "shared"])
def test_other_modes_give_every_child_every_socket(opened, dispatch):
    a, b = free_port(), free_port()
    cfg = config(dispatch, 2, a, b)
    opened += listeners.open_all(port_specs(cfg))
    assert [port_of(s) for s in opened] == [a, b]
    assert listener_groups(cfg, opened) == [opened, opened]
