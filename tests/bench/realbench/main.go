// Command realbench measures the time users wait for a real image — pull
// plus the first run of a start-up workload — with stock podman and with
// lazypull, side by side in one run on one machine, at each emulated link
// (tests/netproxy between the clients and the registries):
//
//   - stock podman 4.3.1, eager pull; its first run (page cache warm from
//     the pull) and a run with the page cache dropped;
//   - lazypull, first machine: index in the image registry (pushed by
//     `lazypull index --push`), no start-up profile yet, prefetch off;
//   - lazypull, second machine: a fresh root_dir sharing the artifact
//     repository with the first, which recorded the image's start-up
//     profile there;
//   - lazypull with the defaults (prefetch and verification on), and then,
//     every span on disk and the page cache dropped, a new container;
//   - the peer, stargz-store v0.15.1, on an eStargz copy of the image.
//
// Each case reports pull, first run (to the workload's output), bytes
// through a counting proxy in front of the registries, and the daemon's
// peak RSS. The image is Debian bookworm with python3, numpy, pandas, scipy
// and gcc, built reproducibly (image.go) and cached. Results go to
// tests/bench/results/ as markdown, JSON and an SVG chart. Run it with
// `make bench-real` (tests/bench/real.sh).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// link is an emulated network between the clients and the registries.
type link struct {
	Name string        `json:"name"`
	Rate int64         `json:"rate_bytes_per_s"` // 0: unlimited
	RTT  time.Duration `json:"rtt_ns"`
}

var links = map[string]link{
	"loopback":     {Name: "loopback"},
	"200mbit-20ms": {Name: "200mbit-20ms", Rate: 200e6 / 8, RTT: 20 * time.Millisecond},
}

func main() {
	if err := mainErr(); err != nil {
		fmt.Fprintln(os.Stderr, "realbench:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	bin := flag.String("lazypull", "bin/lazypull", "lazypull binary to measure")
	stargzStore := flag.String("stargz-store", "/var/cache/lazypull-bench/stargz-store-v0.15.1", "stargz-store binary (the peer); \"\" skips it")
	which := flag.String("links", "loopback,200mbit-20ms", "links, comma separated: loopback, 200mbit-20ms")
	cache := flag.String("cache", "/var/cache/lazypull-bench", "where the image is built and kept")
	out := flag.String("out", "tests/bench/results", "directory for results.md, results.json, results.svg")
	rounds := flag.Int("rounds", 1, "rounds of every case per link")
	only := flag.String("cases", "", "cases to run, comma separated (default all): "+strings.Join(caseNames, ", "))
	pprofDir := flag.String("pprof", "", "save CPU (first 10 s of the run) and heap profiles of the lazypull daemons here")
	extra := flag.String("lazypull-config", "", `configuration over every lazypull daemon's, as JSON tables (experiments), e.g. {"fetch":{"read_ahead":"0"}}`)
	mirror := flag.String("mirror", "", "Debian mirror (default the host's, as apt has it)")
	render := flag.String("render", "", "only render results.md and results.svg into -out from this results.json")
	flag.Parse()
	if *render != "" {
		return rerender(*render, *out)
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root (podman with its own storage, FUSE, debootstrap, drop_caches)")
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	r := defaultRecipe
	r.Mirror = *mirror
	if r.Mirror == "" {
		r.Mirror = hostMirror()
	}
	img, err := buildImage(*cache, r)
	if err != nil {
		return err
	}
	logf("image: %s gzip (%s eStargz), %s tar, %d files, %d layers", size(img.Compressed), size(img.Estargzed), size(img.Tar), img.Files, len(img.Layers))
	cases := map[string]bool{}
	for _, c := range strings.Split(*only, ",") {
		if c != "" {
			cases[c] = true
		}
	}
	var extraCfg map[string]any
	if *extra != "" {
		if err := json.Unmarshal([]byte(*extra), &extraCfg); err != nil {
			return fmt.Errorf("-lazypull-config: %w", err)
		}
	}
	res := &results{Image: img, Recipe: r, Started: time.Now().UTC()}
	work, err := os.MkdirTemp("/var/tmp", "realbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	regs, err := newRegistries(work, absBin, img)
	if err != nil {
		return err
	}
	defer regs.Close()
	for _, name := range strings.Split(*which, ",") {
		l, ok := links[name]
		if !ok {
			return fmt.Errorf("unknown link %q", name)
		}
		for round := 1; round <= *rounds; round++ {
			b := &bench{bin: absBin, stargz: *stargzStore, img: img, regs: regs, link: l, round: round,
				dir: filepath.Join(work, fmt.Sprintf("%s-%d", l.Name, round)), cases: cases,
				prof: profiler{dir: *pprofDir}, metrics: map[string]string{}, extra: extraCfg}
			rows, err := b.run()
			res.Rows = append(res.Rows, rows...)
			if err != nil {
				return fmt.Errorf("link %s round %d: %w", l.Name, round, err)
			}
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	md := res.markdown()
	svg := res.svg()
	data, _ := json.MarshalIndent(res, "", "  ")
	pkgs, _ := os.ReadFile(filepath.Join(img.Dir, "rootfs.packages.txt"))
	for name, body := range map[string][]byte{"results.md": []byte(md), "results.svg": []byte(svg), "results.json": data, "packages.txt": pkgs} {
		if err := os.WriteFile(filepath.Join(*out, name), body, 0o644); err != nil {
			return err
		}
	}
	fmt.Println(md)
	logf("results in %s", *out)
	return nil
}

// rerender writes results.md and results.svg of a results.json.
func rerender(path, out string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	md := res.markdown()
	if err := os.WriteFile(filepath.Join(out, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Println(md)
	return os.WriteFile(filepath.Join(out, "results.svg"), []byte(res.svg()), 0o644)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
