package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	storagedriver "github.com/lazypull/lazypull/storage_driver"
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
			log := newLogger(cfg)
			// Name every missing piece (FUSE device, fusermount3,
			// user_allow_other, directories) before trying to mount.
			if err := storagedriver.Preflight(cfg); err != nil {
				return err
			}
			if cfg.Cache.MemoryLimit > 0 {
				debug.SetMemoryLimit(int64(cfg.Cache.MemoryLimit))
			}
			st, err := openStore(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return st.Serve(ctx, nil)
		},
	}
}
