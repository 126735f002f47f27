#!/usr/bin/env bash
# Make this mount namespace look like a machine that has never run the
# project: /run without the test bed's state, the network namespace mounts
# (/run/netns absent) or any lock file, and no bpffs on /sys/fs/bpf. Only a
# private mount namespace is changed (run it under
# 'unshare --mount --propagation private'); the host keeps its mounts.
set -euo pipefail
if [ "$(readlink /proc/self/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ]; then
	echo "fresh-mounts: refusing to change the host's mount namespace; run it under 'unshare --mount --propagation private'" >&2
	exit 1
fi
keep=$(mktemp -d)
# What a fresh machine has in /run stays (tar skips sockets); what the
# project or an earlier run left goes.
# (tar exits 1 when a file changes or goes while it reads: not a failure here.)
{ tar -C /run --exclude=./netns --exclude='./netns.*' --exclude='./directlb*' \
	--exclude=./containerd --ignore-failed-read --warning=no-file-changed \
	--warning=no-file-removed -cf - . || [ $? -eq 1 ]; } | tar -C "$keep" -xf -
mount -t tmpfs -o mode=0755 tmpfs /run
cp -a "$keep"/. /run/
rm -rf "$keep"
while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done
echo "fresh-mounts: /run is new ($(ls /run | tr '\n' ' ')), /run/netns absent, /sys/fs/bpf not mounted"
