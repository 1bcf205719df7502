package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/lazypull/lazypull/layerstore"
	"github.com/lazypull/lazypull/layerstore/remote"
)

func newIndexCommand(g *globalFlags) *cobra.Command {
	var push bool
	cmd := &cobra.Command{
		Use:   "index IMAGE",
		Short: "Build the SOCI index of an image (and push it with --push)",
		Long: `Streams every layer of IMAGE that is worth serving lazily once through the zTOC
builder, stores the zTOCs and a SOCI v1 index in the local artifact store (under
root_dir, where "lazypull serve" finds them), and with --push pushes them to the
image's repository as a referrer of the image manifest, so that every machine
pulling the image finds the index.

eStargz and zstd:chunked layers carry their own TOC and are served without a
zTOC: the command names their format and indexes nothing for them.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(g)
			if err != nil {
				return err
			}
			cfg.Prefetch.Enabled = false
			log := newLogger(cfg)
			st, err := openStore(cfg, log)
			if err != nil {
				return err
			}
			defer st.Close()
			prog := newIndexProgress(os.Stderr)
			res, err := st.IndexImage(cmd.Context(), args[0], push, prog)
			prog.wait()
			if err != nil {
				return err
			}
			for _, f := range res.Formats {
				if !f.NeedsIndex {
					fmt.Printf("%s: %s layer, %s\n", shortDigest(f.Layer.Digest.String()), f.Format, f.Note)
				}
			}
			if res.IndexDigest == "" {
				fmt.Printf("%s: no layer needs a zTOC; nothing indexed\n", args[0])
				return nil
			}
			fmt.Printf("%s: SOCI index %s with %d zTOCs", args[0], res.IndexDigest, len(res.Layers))
			if res.Pushed {
				fmt.Printf(", pushed as a referrer of %s", res.Image.ManifestDigest)
			}
			fmt.Println()
			return nil
		},
	}
	cmd.Flags().BoolVar(&push, "push", false, "push the zTOCs and the SOCI v1 index to the image's repository")
	return cmd
}

// indexProgress shows a bar per layer on a terminal, a line per layer
// otherwise.
type indexProgress struct {
	out io.Writer
	p   *mpb.Progress // nil when out is not a terminal

	mu   sync.Mutex // guards bars
	bars map[string]*mpb.Bar
}

func newIndexProgress(out *os.File) *indexProgress {
	ip := &indexProgress{out: out, bars: make(map[string]*mpb.Bar)}
	if fi, err := out.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		ip.p = mpb.New(mpb.WithOutput(out), mpb.WithWidth(40))
	}
	return ip
}

func (ip *indexProgress) LayerStarted(l remote.Layer) {
	if ip.p == nil {
		fmt.Fprintf(ip.out, "indexing %s (%s)\n", shortDigest(l.Digest.String()), size(l.Size))
		return
	}
	bar := ip.p.AddBar(l.Size,
		mpb.PrependDecorators(decor.Name(shortDigest(l.Digest.String())+" "), decor.CountersKibiByte("% .1f / % .1f")),
		mpb.AppendDecorators(decor.AverageSpeed(decor.SizeB1024(0), "% .1f"), decor.OnComplete(decor.Name(""), " done")))
	ip.mu.Lock()
	ip.bars[l.Digest.String()] = bar
	ip.mu.Unlock()
}

func (ip *indexProgress) LayerProgress(l remote.Layer, n int64) {
	if ip.p == nil {
		return
	}
	ip.mu.Lock()
	bar := ip.bars[l.Digest.String()]
	ip.mu.Unlock()
	if bar != nil {
		bar.SetCurrent(n)
	}
}

func (ip *indexProgress) LayerDone(l remote.Layer, res *layerstore.BuildResult, reused bool, err error) {
	if ip.p != nil {
		ip.mu.Lock()
		bar := ip.bars[l.Digest.String()]
		ip.mu.Unlock()
		if bar != nil {
			if err != nil {
				bar.Abort(false)
			} else {
				bar.SetTotal(l.Size, true)
			}
		}
		return
	}
	switch {
	case err != nil:
		fmt.Fprintf(ip.out, "%s: %v\n", shortDigest(l.Digest.String()), err)
	case reused:
		fmt.Fprintf(ip.out, "%s: already indexed (zTOC %s)\n", shortDigest(l.Digest.String()), shortDigest(res.ZtocDigest.String()))
	default:
		fmt.Fprintf(ip.out, "%s: zTOC %s, %d spans, %s\n", shortDigest(l.Digest.String()), shortDigest(res.ZtocDigest.String()), res.Spans, res.Took.Round(1e6))
	}
}

func (ip *indexProgress) wait() {
	if ip.p != nil {
		ip.p.Wait()
	}
}
