#!/usr/bin/env bash
# Installs what lazypull needs on a fresh Debian 12 machine, and nothing twice.
#   install-deps.sh run    packages the store needs at run time (FUSE)
#   install-deps.sh test   + everything the test suite drives (podman, registry, buildah, zlib for the
#                          SOCI compat module, ...) and the fork's build and run-time pieces
#   install-deps.sh fork   what `make fork` needs to build podman 5.6.2 and buildah 1.41.5 with the
#                          plugin (gcc, pkg-config, libseccomp-dev, libsqlite3-dev, patch) and what
#                          they need at run time on Debian 12 (conmon, runc, fuse-overlayfs, uidmap)
# Go itself is expected at /usr/local/go (or on PATH); modules come from the Go module proxy/vendor/.
set -euo pipefail
profile=${1:-test}

run_pkgs=(fuse3 ca-certificates)
test_pkgs=(fuse3 ca-certificates podman runc uidmap docker-registry buildah skopeo busybox-static
	zlib1g-dev gcc make git iproute2 procps util-linux psmisc debootstrap)
fork_pkgs=(gcc make patch pkg-config libseccomp-dev libsqlite3-dev conmon runc netavark aardvark-dns fuse-overlayfs fuse3 uidmap
	ca-certificates)

case "$profile" in
run) want=("${run_pkgs[@]}") ;;
test) want=("${test_pkgs[@]}" "${fork_pkgs[@]}") ;;
fork) want=("${fork_pkgs[@]}") ;;
*) echo "usage: $0 run|test|fork" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: missing packages ${missing[*]}; run as root (or with sudo)" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
	echo "install-deps: Go 1.26 is required (expected at /usr/local/go)" >&2
	exit 1
fi
