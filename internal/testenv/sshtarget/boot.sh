#!/bin/sh
# Boots one SSH target: run as `unshare --mount --propagation private /bin/sh boot.sh TARGETDIR`
# in its own session, so that every mount below lives in this process's own mount namespace and
# goes with it. It ends in systemd-nspawn (exec), whose exit code 133 means "reboot me".
set -eu
dir=$1
. "$dir/env"
root=$dir/root

# An own cgroup in each systemd-managed hierarchy: otherwise every nspawn shares /payload at the
# root of the host's hierarchies.
for h in systemd unified; do
	if [ -d "/sys/fs/cgroup/$h" ]; then
		mkdir -p "/sys/fs/cgroup/$h/$CGROUP"
		echo $$ >"/sys/fs/cgroup/$h/$CGROUP/cgroup.procs"
	fi
done

# This machine's /run is no tmpfs, and nspawn refuses to clean up below it otherwise.
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$dir/upper,workdir=$dir/work" "$root"

echo "$NAME" >"$root/etc/hostname"
# Its own name resolves (sudo looks it up) and nothing else does: there is no DNS.
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$NAME" >"$root/etc/hosts"
printf '# no DNS on SSH targets\nnameserver 127.0.0.1\n' >"$root/etc/resolv.conf"
cat "$dir/machine-id" >"$root/etc/machine-id.new"
mv -f "$root/etc/machine-id.new" "$root/etc/machine-id"
chmod 0444 "$root/etc/machine-id"
install -d -m 0700 -o 0 -g 0 "$root/root/.ssh"
install -m 0600 -o 0 -g 0 "$dir/../authorized_keys" "$root/root/.ssh/authorized_keys"
install -d -m 0700 -o "$DEPLOY_UID" -g "$DEPLOY_GID" "$root/home/deploy/.ssh"
install -m 0600 -o "$DEPLOY_UID" -g "$DEPLOY_GID" "$dir/../authorized_keys" "$root/home/deploy/.ssh/authorized_keys"

# No systemd and no D-Bus on the host: --register=no --keep-unit. --resolv-conf=off: nspawn would
# copy in the host's resolver, an address the target must not try.
exec systemd-nspawn -b -D "$root" -M "$NAME" --network-namespace-path="/run/netns/$NETNS" \
	--register=no --keep-unit --console=read-only --resolv-conf=off
