#!/usr/bin/env bash
# Real-distribution benchmark (issue 12): pull + first run of Debian bookworm
# with python3, numpy, pandas, scipy and gcc, for stock podman 4.3.1,
# lazypull (first machine, second machine sharing index and start-up
# profile, every span cached, prefetch on/off) and stargz-store v0.15.1 on an
# eStargz copy, at loopback and 200 Mbit/s + 20 ms RTT, in one run.
#
#   sudo tests/bench/real.sh                          # everything
#   sudo tests/bench/real.sh -links 200mbit-20ms -rounds 2
#
# Writes tests/bench/results/{results.md,results.json,results.svg,packages.txt}.
# The image (debootstrap + apt, a few minutes the first time) and the
# stargz-store binary are kept in /var/cache/lazypull-bench.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PATH:/usr/local/go/bin
contrib/dev/install-deps.sh test
TAGS="containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"
cache=/var/cache/lazypull-bench
mkdir -p bin "$cache"
go build -tags "$TAGS" -o bin/lazypull ./cmd/lazypull
go build -tags "$TAGS" -o bin/realbench ./tests/bench/realbench

# The peer, built once from its v0.15.1 sources (only run to compare; its
# code is not part of lazypull). Its cmd/ is a module of its own that the
# module proxy does not serve at v0.15.1, so the tag is taken from git and
# its dependencies from the module proxy.
stargz=$cache/stargz-store-v0.15.1
if [ ! -x "$stargz" ]; then
	src=$(mktemp -d)
	if git clone -q --depth 1 --branch v0.15.1 https://github.com/containerd/stargz-snapshotter "$src/s" 2>/dev/null &&
		(cd "$src/s/cmd" && GOFLAGS=-mod=mod go build -o "$stargz" ./stargz-store); then
		echo "real.sh: built $stargz"
	else
		echo "real.sh: could not build stargz-store v0.15.1; the peer is skipped" >&2
		stargz=""
	fi
	rm -rf "$src"
fi
exec bin/realbench -lazypull bin/lazypull -stargz-store "$stargz" "$@"
