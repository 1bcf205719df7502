#!/usr/bin/env bash
# Makes (once) the Debian 13 "trixie" chroot with stock podman 5 and buildah
# that the tests use as "podman 5 without the fork" (tests/testenv Chroot):
#
#   contrib/dev/trixie-chroot.sh [DIR]     (default /var/cache/lazypull-test/trixie)
#
# debootstrap --variant=minbase, then podman, buildah, runc, crun,
# fuse-overlayfs, skopeo from trixie (podman 5.4.2, buildah 1.39.3 when this
# was written). About 2.5 minutes and 800 MB; an existing complete chroot
# (stamp file) is left alone, so CI runs after the first one cost nothing.
# Nothing of trixie is installed on the host. Needs root and debootstrap
# (contrib/dev/install-deps.sh test installs it).
set -euo pipefail

dir=${1:-${LAZYPULL_TRIXIE:-/var/cache/lazypull-test/trixie}}
packages="podman buildah runc crun fuse-overlayfs skopeo ca-certificates"
stamp="$dir/.lazypull-chroot"
want="trixie: $packages"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "trixie-chroot: needs root" >&2
	exit 1
fi
command -v debootstrap >/dev/null || {
	echo "trixie-chroot: debootstrap is missing (apt-get install debootstrap)" >&2
	exit 1
}
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
# Another run may have made it while this one waited.
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	exit 0
fi

# The host's Debian mirror (deb822 or one-line sources).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*debian\)\/\{0,1\}$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
if [ -z "$mirror" ]; then
	mirror=$(sed -n 's/^deb[[:space:]]\+\(http[^[:space:]]*debian\)\/\{0,1\}[[:space:]].*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

tmp="$dir.tmp"
rm -rf "$tmp"
echo "trixie-chroot: debootstrap trixie from $mirror into $tmp" >&2
debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$dir.log" 2>&1 || {
	tail -20 "$dir.log" >&2
	exit 1
}
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
echo "trixie-chroot: installing $packages" >&2
if ! chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
	sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $packages" >>"$dir.log" 2>&1; then
	tail -20 "$dir.log" >&2
	exit 1
fi
chroot "$tmp" apt-get clean
echo "$want" >"$tmp/.lazypull-chroot"
rm -rf "$dir"
mv "$tmp" "$dir"
echo "trixie-chroot: $(chroot "$dir" podman --version 2>/dev/null), $(chroot "$dir" buildah --version 2>/dev/null | cut -d' ' -f1-3)" >&2
