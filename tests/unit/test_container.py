"""Containers: what says gpuops runs in one (marker files, cgroups, mounts, variables, laid out under a
tmp_path as the root they are read from), the warning for a server only the container can reach, the
URL people outside use, and the start banner's warning line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from gpuops.server import engines
from gpuops.server.container import binding_note, in_container, is_loopback, outside_url
from gpuops.server.launch import endpoint_of, launch_banner
from gpuops.server.recipes import parse_recipes

DOCKER_V1_CGROUP = "12:memory:/docker/3f2a9c\n11:cpu:/docker/3f2a9c\n"
HOST_V1_CGROUP = "12:memory:/init.scope\n1:name=systemd:/init.scope\n0::/init.scope\n"
CONTAINER_MOUNTINFO = (
    "1043 1010 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC\n"
    "1062 1043 259:1 /var/lib/docker/containers/3f2a/hostname /etc/hostname rw,relatime - ext4 /dev/nvme0n1p1 rw\n"
)
# a machine that runs containers sees their shm mounts, yet is none itself
DOCKER_HOST_MOUNTINFO = (
    "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw\n"
    "530 22 0:49 / /var/lib/docker/containers/3f2a/mounts/shm rw,nosuid - tmpfs shm rw,size=65536k\n"
)


def lay_out(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(("files", "environ", "says"), [
    ({}, {}, None),
    ({".dockerenv": ""}, {}, "/.dockerenv"),
    ({"run/.containerenv": 'engine="podman-4.9"\n'}, {}, "/run/.containerenv"),
    ({}, {"container": "systemd-nspawn"}, "container=systemd-nspawn"),
    ({}, {"container": ""}, None),
    ({}, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "KUBERNETES_SERVICE_HOST"),
    ({"proc/1/cgroup": DOCKER_V1_CGROUP}, {}, "/proc/1/cgroup: docker"),
    ({"proc/1/cgroup": "0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-9a.scope\n"}, {},
     "/proc/1/cgroup: kubepods"),
    ({"proc/1/cgroup": "0::/system.slice/containerd.service/k8s.io/9a\n"}, {}, "/proc/1/cgroup: containerd"),
    ({"proc/1/cgroup": "0::/lxc.payload.web/init.scope\n"}, {}, "/proc/1/cgroup: lxc"),
    ({"proc/1/cgroup": "0::/machine.slice/libpod-5c1e.scope\n"}, {}, "/proc/1/cgroup: libpod"),
    ({"proc/1/cgroup": HOST_V1_CGROUP}, {}, None),
    ({"proc/1/cgroup": "0::/\n"}, {}, None),  # cgroup v2 inside a container and on a host alike
    ({"proc/1/cgroup": "0::/\n", "proc/self/mountinfo": CONTAINER_MOUNTINFO}, {},
     "/etc/hostname is mounted into it (/proc/self/mountinfo)"),
    ({"proc/1/cgroup": "0::/\n", "proc/self/mountinfo": DOCKER_HOST_MOUNTINFO}, {}, None),
], ids=["plain-machine", "docker", "podman", "container-variable", "empty-variable", "kubernetes", "cgroup-docker",
        "cgroup-kubepods", "cgroup-containerd", "cgroup-lxc", "cgroup-libpod", "cgroup-v1-host", "cgroup-v2-root",
        "hostname-mounted", "docker-host-is-no-container"])
def test_in_container_says_what_gave_it_away(tmp_path, files, environ, says):
    assert in_container(lay_out(tmp_path, files), environ) == says


def test_a_marker_file_is_named_before_weaker_hints(tmp_path):
    root = lay_out(tmp_path, {".dockerenv": "", "proc/1/cgroup": DOCKER_V1_CGROUP})
    assert in_container(root, {"container": "docker"}) == "/.dockerenv"


def test_unreadable_proc_files_mean_no_hint_not_an_error(tmp_path):
    (tmp_path / "proc" / "1" / "cgroup").mkdir(parents=True)  # a folder where a file should be
    assert in_container(tmp_path, {}) is None


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.1.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False), ("gpu7.lab", False), (None, False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_loopback_server_in_a_container_gets_told_how_to_be_reached(tmp_path, host):
    root = lay_out(tmp_path, {".dockerenv": ""})
    note = binding_note(host, 8000, root=root, environ={})
    assert note.startswith(f"inside a container (/.dockerenv), {host}:8000 is reachable only from inside the container")
    assert "`--host 0.0.0.0`" in note and "AGENTS.local.md" in note and "`docker run -p 8000:8000`" in note


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_a_server_on_every_interface_in_a_container_needs_no_warning(tmp_path, host):
    assert binding_note(host, 8000, root=lay_out(tmp_path, {".dockerenv": ""}), environ={}) is None


def test_a_loopback_server_outside_containers_needs_no_warning(tmp_path):
    assert binding_note("127.0.0.1", 8000, root=tmp_path, environ={}) is None


def test_the_caller_may_say_it_is_a_container_already(tmp_path):
    note = binding_note("127.0.0.1", None, root=tmp_path, environ={}, why="container=podman")
    assert note.startswith("inside a container (container=podman), 127.0.0.1 is reachable only")
    assert "docker run -p PORT:PORT" in note


@pytest.mark.parametrize(("host", "port", "public", "url"), [
    ("0.0.0.0", 8000, "gpu7.lab", "http://gpu7.lab:8000"),
    ("10.1.2.3", 8001, " 203.0.113.7 ", "http://203.0.113.7:8001"),
    ("::", 8000, "2001:db8::7", "http://[2001:db8::7]:8000"),
    ("0.0.0.0", 8000, "[2001:db8::7]", "http://[2001:db8::7]:8000"),
    ("127.0.0.1", 8000, "gpu7.lab", None),  # nobody outside reaches a loopback server, whatever the name
    ("0.0.0.0", None, "gpu7.lab", None),
    ("0.0.0.0", 8000, "", None),
    ("0.0.0.0", 8000, None, None),  # the container's own address is not guessed
])
def test_outside_url_only_when_gpuops_can_tell(host, port, public, url):
    environ = {} if public is None else {"GPUOPS_PUBLIC_HOST": public}
    assert outside_url(SimpleNamespace(host=host, port=port), environ) == url


def recipe_for(host: str):
    recipe = parse_recipes(f"## Server\n\n```bash\nvllm serve m --host {host} --port 8123\n```\n").server()
    return recipe, endpoint_of(recipe, engines.detect(recipe.argv))


def test_start_banner_warns_when_only_the_container_could_reach_the_server(monkeypatch):
    monkeypatch.setenv("container", "podman")  # what podman sets for a container's processes
    recipe, ep = recipe_for("127.0.0.1")
    lines = launch_banner(recipe, ep)
    assert lines[0].startswith("starting 'server'") and "listening on 127.0.0.1:8123" in lines[0]
    assert lines[-1].startswith("warning: inside a container (")
    assert "127.0.0.1:8123 is reachable only from inside the container" in lines[-1]
    assert "`docker run -p 8123:8123`" in lines[-1]


def test_start_banner_has_no_warning_for_a_server_on_every_interface(monkeypatch):
    monkeypatch.setenv("container", "podman")
    recipe, ep = recipe_for("0.0.0.0")
    assert not any("warning" in line for line in launch_banner(recipe, ep))
