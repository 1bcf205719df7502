// Command lazypull is the one binary of the project: the layer store daemon
// (serve), the indexer (index), and the tools around them (status, prune,
// auth-helper).
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// authHelperName is the name containers/image runs as its
// additional-layer-store-auth-helper (it passes no arguments): a symlink of
// that name to this binary acts as `lazypull auth-helper`.
const authHelperName = "lazypull-auth-helper"

func main() {
	root := newRootCommand()
	if filepath.Base(os.Args[0]) == authHelperName {
		root.SetArgs(append([]string{"auth-helper"}, os.Args[1:]...))
	}
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "lazypull:", err)
		os.Exit(1)
	}
}
