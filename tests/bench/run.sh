#!/usr/bin/env bash
# lazypull benchmark: stock podman vs lazypull on a ~1 GB generated image, over
# an emulated link (tests/netproxy), side by side in one run per profile.
#
#   sudo tests/bench/run.sh                      # both profiles
#   sudo tests/bench/run.sh -profiles loopback   # one
#
# Prints markdown tables and writes tests/bench/out/results.json. The image is
# generated once and cached in /var/tmp/lazypull-testimages.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PATH:/usr/local/go/bin
contrib/dev/install-deps.sh test
TAGS="containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"
mkdir -p bin
go build -tags "$TAGS" -o bin/lazypull ./cmd/lazypull
go build -o bin/lazybench ./tests/bench/lazybench
exec bin/lazybench -lazypull bin/lazypull "$@"
