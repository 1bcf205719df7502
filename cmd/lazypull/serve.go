package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/lazypull/lazypull/layerstore"
)

func newServeCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the Additional Layer Store (FUSE) until SIGINT/SIGTERM",
		Long: `Mounts the layer store at mount_point (default /var/lib/lazypull/store) and
serves layers to podman until interrupted. Configuration: /etc/lazypull/config.toml
(every key and default: contrib/config.toml); without it the embedded defaults apply.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(g)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return layerstore.Run(ctx, cfg, layerstore.RunOptions{Version: version, Log: newLogger(cfg)})
		},
	}
}
