#!/bin/bash
# boot-systemd.sh RUN_DIR [HOST_DIR...] - PID 1 of fresh namespaces: boot systemd over
# an overlay of the host's / (upper layer: a tmpfs, so nothing reaches the disk).
#
# Run by tests/sysroot.py as `unshare --pid --fork --mount --uts --ipc --net --cgroup
# boot-systemd.sh RUN_DIR ...`, from a process already moved into a cgroup2 subtree of
# its own. Each HOST_DIR is bind-mounted read-only at the same path (the checkout and a
# wheelhouse may live on another filesystem, or under /tmp, which gets a new tmpfs).
#
# Lessons from running systemd 252 this way (also in docs/operations.md, for testers):
# pivot_root, not chroot (in a chroot the kernel refuses new user namespaces, so
# PrivateUsers= fails with 217/USER); `mount --make-rshared /` before exec'ing systemd
# (otherwise LoadCredential= gives an empty directory); a minimal target so that the
# host's enabled services do not start.
set -eu
RUN=$1
shift
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs "$RUN/ovl"
mkdir -p "$RUN/ovl/upper" "$RUN/ovl/work" "$RUN/ovl/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$RUN/ovl/upper,workdir=$RUN/ovl/work" "$RUN/ovl/root"
R=$RUN/ovl/root
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for d in null zero full random urandom tty; do
  touch "$R/dev/$d"
  mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
for dir in "$@"; do
  mkdir -p "$R$dir"
  mount --bind "$dir" "$R$dir"
  mount -o remount,bind,ro "$R$dir"
done
# Only what a server needs to run the gateway: basic.target (journald, sockets, ...).
printf '[Unit]\nDescription=gateway test system\nRequires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n' \
  > "$R/etc/systemd/system/gateway-test.target"
# Leftovers of the host's own installation must not leak in.
rm -rf "$R/etc/gateway" "$R/opt/gateway" "$R/var/lib/gateway" "$R/var/lib/private/gateway" \
  "$R"/etc/systemd/system/gateway*.service "$R"/etc/systemd/system/gateway*.socket
export container=gateway-test
mkdir -p "$R/.oldroot"
cd "$R"
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
mount --make-rshared /
exec /lib/systemd/systemd --system --unit=gateway-test.target
