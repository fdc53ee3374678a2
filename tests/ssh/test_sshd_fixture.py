"""The sshd fixture itself: a Fabric Connection through a generated ssh_config alias runs a command."""

import pytest

pytestmark = pytest.mark.ssh


def test_connection_through_alias_runs_a_command(sshd):
    with sshd.connection("gpu1") as c:
        result = c.run("echo hello from $USER", hide=True, in_stream=False)
    assert result.stdout.strip() == f"hello from {sshd.user}"


def test_every_alias_reaches_the_same_sshd(sshd):
    for alias in sshd.aliases:
        with sshd.connection(alias) as c:
            assert c.run("true", hide=True, in_stream=False).ok
