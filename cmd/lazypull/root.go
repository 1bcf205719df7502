package main

import (
	"github.com/spf13/cobra"
)

// version is set at link time (-X main.version=...).
var version = "dev"

// globalFlags are shared by every command.
type globalFlags struct {
	configPath string
	logLevel   string
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "lazypull",
		Short: "Lazy pulling of container images for podman",
		Long: `lazypull serves image layers to podman lazily: a pull returns at once and
file contents are fetched from the registry when a container reads them.

Run the store with "lazypull serve" and point podman at it:
  podman --storage-opt overlay.additionallayerstore=/var/lib/lazypull/store:ref pull IMAGE`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", "", "configuration file (default /etc/lazypull/config.toml when it exists)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "", "override log_level: debug, info, warn or error")
	root.AddCommand(
		newServeCommand(g),
		newIndexCommand(g),
		newStatusCommand(g),
		newPruneCommand(g),
		newAuthHelperCommand(g),
		newPullCommand(g),
		newVerifyCommand(g),
	)
	return root
}
