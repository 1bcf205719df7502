package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/lazypull/lazypull/authbridge"
	"github.com/lazypull/lazypull/layerstore/control"
)

func newAuthHelperCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "auth-helper",
		Short: "Pass podman's registry credentials to the daemon (additional-layer-store-auth-helper)",
		Long: `containers/image (podman >= 5.2) runs this command whenever it reads an image
from a registry, with the credentials it uses on stdin as JSON keyed by image
reference. Configure it in registries.conf:

  additional-layer-store-auth-helper = "lazypull-auth-helper"

(a symlink named lazypull-auth-helper to this binary on PATH; see
contrib/registries.conf.d/lazypull.conf). The credentials are handed to the
running daemon, which uses them for exactly that image reference.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			creds, err := authbridge.ParseAuthHelperInput(os.Stdin)
			if err != nil {
				return err
			}
			cfg, err := loadConfig(g)
			if err != nil {
				return err
			}
			out := make(map[string]control.Credential, len(creds))
			for ref, c := range creds {
				out[ref] = control.Credential{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken}
			}
			if err := control.NewClient(cfg.Socket).Handover(cmd.Context(), out); err != nil {
				return fmt.Errorf("hand over credentials: %w", err)
			}
			return nil
		},
	}
}
