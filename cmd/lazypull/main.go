// Command lazypull is the one binary of the project: the layer store daemon
// (serve), the indexer (index), and the tools around them.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "lazypull:", err)
		os.Exit(1)
	}
}
