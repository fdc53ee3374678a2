"""Which hosts a command means, and each host's settings: `-H` text, config lists and groups, ssh_config aliases.

    >>> cfg = {"groups": {"fleet": ["gpu1", "gpu2"]}, "host_settings": {"gpu2": {"remote_dir": "/data/llm"}}}
    >>> resolve_hosts("fleet,gpu3,gpu1", cfg)
    ['gpu1', 'gpu2', 'gpu3']
    >>> host_setting(cfg, "gpu2", "remote_dir", "~/llm"), host_setting(cfg, "gpu1", "remote_dir", "~/llm")
    ('/data/llm', '~/llm')

A name is a group of `gpuops.groups` when one is called so, else a host as SSH knows it: an alias of
~/.ssh/config (its HostName, User, Port, IdentityFile and ProxyJump apply, as Fabric reads them),
`user@host:port`, or a plain host name. `all` means the `gpuops.hosts` list.
"""

from __future__ import annotations

from gpuops.errors import UsageError

LOCAL = ("local",)  # `-H local`: run here even when gpuops.hosts names default hosts


def split_names(value) -> list[str]:
    """A comma/space separated string or a list, as a list of non-empty names.

    >>> split_names("a, b,,c"), split_names(["a", "b c"])
    (['a', 'b', 'c'], ['a', 'b', 'c'])
    """
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [name for item in items for name in str(item).replace(",", " ").split() if name]


def resolve_hosts(spec, config: dict) -> list[str]:
    """The hosts, in first-seen order without repeats, named by `spec` (a -H value or a list).

    Groups may name groups; a loop is an error, as is an empty result.
    """
    groups = config.get("groups") or {}
    if not isinstance(groups, dict):
        raise UsageError(f"gpuops.groups must be a mapping of group name -> hosts, not {groups!r}",
                         hint="e.g. in invoke.yaml: gpuops: {groups: {fleet: [gpu1, gpu2]}}")
    seen: dict[str, None] = {}

    def expand(name: str, trail: tuple[str, ...]) -> None:
        if name in trail:
            raise UsageError(f"gpuops.groups: group {name!r} contains itself ({' -> '.join((*trail, name))})")
        if name == "all" and "all" not in groups:
            members = split_names(config.get("hosts"))
            if not members:
                raise UsageError("-H all: gpuops.hosts is empty", hint="list your hosts in gpuops.hosts")
            for member in members:
                expand(member, (*trail, name))
        elif name in groups:
            members = split_names(groups[name])
            if not members:
                raise UsageError(f"gpuops.groups.{name} is empty")
            for member in members:
                expand(member, (*trail, name))
        else:
            seen.setdefault(name, None)

    for name in split_names(spec):
        expand(name, ())
    if not seen:
        raise UsageError("no hosts given", hint="e.g. gpuops -H gpu1 status, or gpuops -H gpu1,gpu2 status")
    return list(seen)


def host_setting(config: dict, host: str, key: str, default=None):
    """`gpuops.host_settings.<host>.<key>` if set, else `gpuops.<key>`, else `default`."""
    per_host = (config.get("host_settings") or {}).get(host) or {}
    if key in per_host and per_host[key] is not None:
        return per_host[key]
    value = config.get(key)
    return default if value is None else value


def is_local(spec) -> bool:
    """`-H local`: the command runs here."""
    names = split_names(spec)
    return bool(names) and all(n in LOCAL for n in names)
