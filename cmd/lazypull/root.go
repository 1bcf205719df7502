package main

import (
	"github.com/spf13/cobra"
)

// version is set at link time (-X main.version=...).
var version = "dev"

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "lazypull",
		Short:         "Lazy pulling of container images for podman",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	return root
}
