#!/usr/bin/env bash
# Builds the lazypull fork of podman and buildah into bin/ (bin/podman, bin/buildah).
#
#   contrib/fork/build.sh            (or: make fork)
#
# Upstream source is never committed: the modules come from the Go module proxy
# (podman v5.6.2, buildah v1.41.5, containers/common v0.64.2: the versions podman 5.6.2
# pins, with containers/storage v1.59.1 and containers/image v5.36.2 like lazypull), are
# copied to a build directory and patched with contrib/fork/patches/*.patch (ours, small:
# the graph driver registered in both main packages, pulls through storagedriver.Pull in
# containers/common's libimage, buildah reusing lazily served base layers by TOC digest, and
# version variables). `replace` points podman and buildah at the patched copies and
# github.com/lazypull/lazypull at this checkout.
#
# Cache: everything lives under $LAZYPULL_FORK_CACHE (default /var/cache/lazypull/fork):
# the module cache, the Go build cache, the patched source and the finished binaries,
# keyed by a hash of lazypull's non-test Go source, go.mod/go.sum, the patches and this
# script. A build whose key exists is a copy (seconds); a changed lazypull file rebuilds
# (minutes, with the warm build cache); a cold build takes 10-15 minutes on 2 cores.
#
# Needs Go (1.26, /usr/local/go), gcc, pkg-config, libseccomp-dev, libsqlite3-dev
# (contrib/dev/install-deps.sh fork). FORK_VERBOSE=1 shows the go commands' output.
set -euo pipefail

PODMAN_MODULE=github.com/containers/podman/v5
PODMAN_VERSION=v5.6.2
BUILDAH_MODULE=github.com/containers/buildah
BUILDAH_VERSION=v1.41.5
COMMON_MODULE=github.com/containers/common
COMMON_VERSION=v0.64.2
MPB_VERSION=v8.10.2

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${LAZYPULL_FORK_CACHE:-/var/cache/lazypull/fork}
out_dir=${FORK_BIN_DIR:-$repo/bin}
export PATH=$PATH:/usr/local/go/bin
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gocache GOFLAGS=-mod=mod GOTOOLCHAIN=local
export CGO_ENABLED=1

log() { echo "fork: $*" >&2; }
quiet() {
	if [ -n "${FORK_VERBOSE:-}" ]; then "$@"; else "$@" >"$cache/last.log" 2>&1 || {
		tail -n 40 "$cache/last.log" >&2
		return 1
	}; fi
}

mkdir -p "$cache" "$out_dir"
exec 9>"$cache/.lock"
flock 9

# The key: what the binaries are made of besides the pinned upstream modules.
key=$(
	cd "$repo"
	{
		echo "$PODMAN_VERSION $BUILDAH_VERSION $COMMON_VERSION $(go env GOVERSION)"
		find . -path ./vendor -prune -o -path ./tests -prune -o -path ./.git -prune -o \
			-name '*.go' ! -name '*_test.go' -print | LC_ALL=C sort | xargs sha256sum
		sha256sum go.mod go.sum contrib/fork/build.sh contrib/fork/patches/*.patch
	} | sha256sum | cut -c1-16
)
lazypull_version=$(cd "$repo" && git describe --always --dirty 2>/dev/null || echo dev)
done_dir=$cache/out/$key

if [ ! -x "$done_dir/podman" ] || [ ! -x "$done_dir/buildah" ]; then
	log "building podman ${PODMAN_VERSION#v} and buildah ${BUILDAH_VERSION#v} with lazypull $lazypull_version (key $key)"
	started=$SECONDS
	src=$cache/src
	rm -rf "$src"
	mkdir -p "$src"
	for m in "$PODMAN_MODULE@$PODMAN_VERSION:podman" "$BUILDAH_MODULE@$BUILDAH_VERSION:buildah" \
		"$COMMON_MODULE@$COMMON_VERSION:common"; do
		dir=$(cd "$src" && GOFLAGS= go mod download -json "${m%:*}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
		[ -d "$dir" ] || { log "go mod download ${m%:*} gave no directory"; exit 1; }
		cp -r "$dir" "$src/${m##*:}"
	done
	chmod -R u+w "$src"
	for p in common podman buildah; do
		patch -s -d "$src" -p1 <"$repo/contrib/fork/patches/$p.patch"
	done

	# Tags: lazypull's, plus what podman's and buildah's Makefiles add on this machine
	# (seccomp needs libseccomp-dev; libsqlite3 links Debian's sqlite instead of the bundled one).
	tags="containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper grpcnotrace"
	if pkg-config --exists libseccomp 2>/dev/null; then tags+=" seccomp"; else log "no libseccomp-dev: building without seccomp"; fi
	if pkg-config --exists sqlite3 2>/dev/null; then tags+=" libsqlite3"; fi

	for m in podman buildah; do
		(
			cd "$src/$m"
			# lazypull's newer mpb (for its own CLI, not in the plugin) would be picked by MVS and
			# breaks containers/image v5.36's copy: keep the version podman and buildah pin.
			go mod edit -replace "$COMMON_MODULE=../common" -replace "github.com/lazypull/lazypull=$repo" \
				-require "github.com/lazypull/lazypull@v0.0.0-00010101000000-000000000000" \
				-replace "github.com/vbauerster/mpb/v8=github.com/vbauerster/mpb/v8@$MPB_VERSION"
			if [ "$m" = podman ]; then go mod edit -replace "$BUILDAH_MODULE=../buildah"; fi
		)
	done

	version_suffix="+lazypull.$lazypull_version"
	(
		cd "$src/podman"
		log "go build podman"
		quiet nice go build -trimpath -tags "$tags" -o "$src/out/podman" -ldflags "\
			-X $PODMAN_MODULE/version/rawversion.RawVersion=${PODMAN_VERSION#v}$version_suffix \
			-X $PODMAN_MODULE/libpod/define.buildOrigin=lazypull-fork \
			-X $PODMAN_MODULE/libpod/config._installPrefix=/usr \
			-X $PODMAN_MODULE/libpod/config._etcDir=/etc" ./cmd/podman
	)
	(
		cd "$src/buildah"
		log "go build buildah"
		quiet nice go build -trimpath -tags "$tags" -o "$src/out/buildah" -ldflags "\
			-X $BUILDAH_MODULE/define.Version=${BUILDAH_VERSION#v}$version_suffix" ./cmd/buildah
	)
	rm -rf "$done_dir"
	mkdir -p "$done_dir"
	mv "$src/out/podman" "$src/out/buildah" "$done_dir/"
	log "built in $((SECONDS - started)) s"
	# Keep the newest few builds only.
	(cd "$cache/out" && ls -1t | tail -n +4 | xargs -r rm -rf)
fi

install -m 755 "$done_dir/podman" "$out_dir/podman"
install -m 755 "$done_dir/buildah" "$out_dir/buildah"
log "$out_dir/podman: $("$out_dir/podman" --version)"
log "$out_dir/buildah: $("$out_dir/buildah" --version)"
