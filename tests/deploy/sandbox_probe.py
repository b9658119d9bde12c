#!/usr/bin/env python3
"""Run inside gateway.service's sandbox (a Type=oneshot copy of the unit): checks that the
hardening is really in force, prints one JSON line, exits 1 if any check fails."""

import ctypes
import json
import mmap
import os
import resource
import socket


def fails(fn) -> bool:  # type: ignore[no-untyped-def]
    try:
        fn()
        return False
    except OSError:
        return True


def write(path: str) -> None:
    with open(path, "w") as f:
        f.write("x")


libc = ctypes.CDLL(None, use_errno=True)
state = os.environ.get("STATE_DIRECTORY", "/nonexistent")
credentials = os.environ.get("CREDENTIALS_DIRECTORY", "/nonexistent")
checks = {
    "not_root": os.getuid() != 0 and os.geteuid() != 0,
    "etc_readonly": fails(lambda: write("/etc/gateway/probe")),
    "opt_readonly": fails(lambda: write("/opt/gateway/probe")),
    "usr_readonly": fails(lambda: write("/usr/probe")),
    "state_dir_writable": not fails(lambda: write(os.path.join(state, "probe"))),
    "tmp_private_writable": not fails(lambda: write("/tmp/probe")),
    "home_hidden": fails(lambda: os.listdir("/root")) and fails(lambda: os.listdir("/home")),
    "api_key_file_unreadable": fails(lambda: open("/etc/gateway/api_key").read()),
    "credential_readable": not fails(lambda: open(os.path.join(credentials, "api_key")).read()),
    "config_readable": not fails(lambda: open("/etc/gateway/gateway.toml").read()),
    "netlink_blocked": fails(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
    "packet_blocked": fails(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
    "inet_allowed": not fails(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
    "inet6_allowed": not fails(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()),
    "unix_allowed": not fails(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close()),
    "proc_only_own_pids": [p for p in os.listdir("/proc") if p.isdigit()] == [str(os.getpid())],
    "wx_mmap_blocked": fails(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)),
    "chroot_blocked": fails(lambda: os.chroot("/")),
    "userns_blocked": libc.unshare(0x10000000) != 0,  # CLONE_NEWUSER
    "sethostname_blocked": fails(lambda: socket.sethostname("probe")),
    "no_block_devices": not any(n.startswith(("vd", "sd", "nvme", "mem")) for n in os.listdir("/dev")),
}
bad = [k for k, v in checks.items() if not v]
nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
print(json.dumps({"sandbox_checks": len(checks), "failed": bad, "nofile": nofile}), flush=True)
raise SystemExit(1 if bad else 0)
