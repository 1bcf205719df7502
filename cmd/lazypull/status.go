package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/lazypull/lazypull/layerstore/control"
)

func newStatusCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the running daemon serves, caches and fetches",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(g)
			if err != nil {
				return err
			}
			st, err := control.NewClient(cfg.Socket).Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(os.Stdout, st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

func size(n int64) string { return units.BytesSize(float64(n)) }

func printStatus(w io.Writer, st *control.Status) {
	fmt.Fprintf(w, "lazypull %s, up %s, serving %s (state in %s)\n", st.Version, st.Uptime, st.MountPoint, st.RootDir)
	r := st.Registry
	fmt.Fprintf(w, "registry: %d requests, %s received (ranges %s, whole blobs %s, manifests %s), %d retries, %d errors\n",
		r.Requests, size(r.BytesFetched), size(r.RangeBytes), size(r.FullBlobBytes), size(r.ManifestBytes), r.Retries, r.Errors)
	c := st.Cache
	fmt.Fprintf(w, "span cache: %d spans, %s of %s, %d hits, %d misses, %d evicted; in memory: %d hits, %d misses\n",
		c.SpanEntries, size(c.SpanBytes), size(c.SpanMaxBytes), c.SpanHits, c.SpanMisses, c.SpanEvictions, c.MemoryHits, c.MemoryMisses)
	fmt.Fprintf(w, "artifacts: %d blobs, %s\n", c.ArtifactBlobs, size(c.ArtifactBytes))
	a := st.Auth
	fmt.Fprintf(w, "auth: %d token fetches, %d proactive refreshes, %d rejected, %d retries, %d handed-over references\n",
		a.TokenFetches, a.ProactiveRefreshes, a.Unauthorized, a.Retries, a.HandedOver)
	rd := st.Reads
	fmt.Fprintf(w, "reads: %d (%s), %d errors, latency p50 %s, p99 %s\n", rd.Count, size(rd.Bytes), rd.Errors, rd.LatencyP50, rd.LatencyP99)
	if len(st.Layers) == 0 {
		fmt.Fprintln(w, "no layers served yet")
		return
	}
	printFormats(w, st.Layers)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "LAYER\tFORMAT\tSIZE\tCACHED\tFETCHED\tIN USE\tINDEX\tPREFETCH\tVERIFIED\tFROM\tREFS")
	for _, l := range st.Layers {
		verified := fmt.Sprint(l.Verified)
		if l.Bad != "" {
			verified = "BAD: " + l.Bad
		}
		from := l.Endpoint
		if from == "" {
			from = "-"
		}
		prefetch := l.Prefetch
		if l.Proving {
			prefetch += fmt.Sprintf("; %d/%d spans proven", l.SpansProven, l.Spans)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%d\t%s\t%s\t%s\t%s\t%v\n", shortDigest(l.Digest), l.Format, size(l.Size), l.SpansCached, l.Spans,
			size(l.BytesFetched), l.InUse, l.IndexSource, prefetch, verified, from, l.Refs)
	}
	tw.Flush()
}

// printFormats sums the layers up by format: how many, their size, what was
// fetched of them, how many are verified.
func printFormats(w io.Writer, layers []control.LayerStatus) {
	type sum struct {
		n, verified, bad int
		size, fetched    int64
	}
	sums := map[string]*sum{}
	var names []string
	for _, l := range layers {
		f := l.Format
		if f == "" {
			f = "unknown"
		}
		if sums[f] == nil {
			sums[f] = &sum{}
			names = append(names, f)
		}
		s := sums[f]
		s.n++
		s.size += l.Size
		s.fetched += l.BytesFetched
		if l.Verified {
			s.verified++
		}
		if l.Bad != "" {
			s.bad++
		}
	}
	sort.Strings(names)
	for _, f := range names {
		s := sums[f]
		fmt.Fprintf(w, "format %s: %d layers, %s, %s fetched, %d verified, %d bad\n", f, s.n, size(s.size), size(s.fetched), s.verified, s.bad)
	}
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}
