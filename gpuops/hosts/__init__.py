"""Remote hosts over SSH: the same tasks on one GPU box or a fleet, the remote side running gpuops itself.

    hosts.py    which hosts `-H` and the config name; per-host settings (remote_dir, remote_venv, ...)
    ssh.py      a Fabric Connection per host; `gpuops TASK ... --json` run there; errors as one line per host
    fleet.py    several hosts in parallel threads, a result per host, one exit code
    install.py  a wheel built here, sent over SFTP, pip-installed into a venv on the host

Fabric and paramiko are imported inside the functions that connect, so the `gpuops` program stays
fast when no `-H` is given. The command line side is gpuops/cli/remote.py; docs/remote.md.
"""
