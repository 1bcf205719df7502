package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
)

func newPruneCommand(g *globalFlags) *cobra.Command {
	var spans, artifacts string
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Evict cached spans and artifacts of layers not in use",
		Long: `Asks the running daemon to evict, least recently used first, cached spans and
artifacts (zTOCs, SOCI indexes) of layers no container or image uses, down to the
given sizes (default: everything that is not in use).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(g)
			if err != nil {
				return err
			}
			st, err := config.ParseByteSize(spans)
			if err != nil {
				return fmt.Errorf("--spans: %w", err)
			}
			at, err := config.ParseByteSize(artifacts)
			if err != nil {
				return fmt.Errorf("--artifacts: %w", err)
			}
			res, err := control.NewClient(cfg.Socket).Prune(cmd.Context(), control.PruneRequest{SpanTarget: int64(st), ArtifactTarget: int64(at)})
			if err != nil {
				return err
			}
			fmt.Printf("freed %s of spans and %s of artifacts\n", size(res.SpanBytesFreed), size(res.ArtifactBytesFreed))
			return nil
		},
	}
	cmd.Flags().StringVar(&spans, "spans", "0", "keep at most this much of the span cache")
	cmd.Flags().StringVar(&artifacts, "artifacts", "0", "keep at most this much of the artifact store")
	return cmd
}
