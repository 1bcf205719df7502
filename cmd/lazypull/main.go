// Command lazypull is the one binary of the project: the layer store daemon
// (serve), the indexer (index), and the tools around them (status, prune,
// auth-helper).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containers/storage/pkg/reexec"
)

// authHelperName is the name containers/image runs as its
// additional-layer-store-auth-helper (it passes no arguments): a symlink of
// that name to this binary acts as `lazypull auth-helper`.
const authHelperName = "lazypull-auth-helper"

func main() {
	// containers/storage (linked by `lazypull pull`) re-executes this
	// binary for some of its work, and the storage driver for its daemon.
	if reexec.Init() {
		return
	}
	root := newRootCommand()
	if filepath.Base(os.Args[0]) == authHelperName {
		root.SetArgs(append([]string{"auth-helper"}, os.Args[1:]...))
	}
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "lazypull:", err)
		os.Exit(1)
	}
}
