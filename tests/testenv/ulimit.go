package testenv

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// BuildFlags are the flags `podman build` and `buildah bud`/`from` need on
// these machines: no container network (buildah ignores containers.conf's
// netns and would create a bridge), and the open files and processes limits
// set to the host's hard limits (buildah asks for 1048576 open files, which
// an unprivileged container manager cannot grant: "error setting rlimit type
// 7").
func BuildFlags() []string {
	flags := []string{"--network", "none"}
	for _, l := range []struct {
		name string
		res  int
	}{{"nofile", unix.RLIMIT_NOFILE}, {"nproc", unix.RLIMIT_NPROC}} {
		var r unix.Rlimit
		if err := unix.Getrlimit(l.res, &r); err != nil || r.Max == unix.RLIM_INFINITY {
			continue
		}
		flags = append(flags, "--ulimit", fmt.Sprintf("%s=%d:%d", l.name, r.Max, r.Max))
	}
	return flags
}
