package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/tests/netproxy"
	"github.com/lazypull/lazypull/tests/testenv"
)

// The cases, in the order they run within a round.
const (
	caseStock     = "stock"         // eager pull, first run with the page cache warm from the pull
	caseStockCold = "stock-cold"    // another container, page cache dropped
	caseFirst     = "lazy-first"    // first machine: index in the registry, prefetch off
	caseStargz    = "stargz-store"  // the peer on the eStargz copy
	caseSecond    = "lazy-second"   // second machine: index and start-up profile shared
	casePrefetch  = "lazy-prefetch" // first machine with the defaults (prefetch, verification on)
	caseCached    = "lazy-cached"   // every span on disk, page cache dropped, a new container
	// caseCachedAgain is the same again: files opened once since
	// verification are passed through.
	caseCachedAgain = "lazy-cached-2"
)

var caseNames = []string{caseStock, caseStockCold, caseFirst, caseStargz, caseSecond, casePrefetch, caseCached, caseCachedAgain}

// row is one measured case.
type row struct {
	Link      string  `json:"link"`
	Round     int     `json:"round"`
	Case      string  `json:"case"`
	Pull      float64 `json:"pull_s"`
	Run       float64 `json:"first_run_s"`
	PullBytes int64   `json:"pull_bytes"`
	RunBytes  int64   `json:"run_bytes"`
	PeakRSS   int64   `json:"daemon_peak_rss_bytes,omitempty"`
	Note      string  `json:"note,omitempty"`
}

// bench is one round at one link.
type bench struct {
	bin, stargz string
	img         *image
	link        link
	round       int
	dir         string
	cases       map[string]bool // empty: all
	prof        profiler
	extra       map[string]any    // configuration over every lazypull daemon's
	metrics     map[string]string // daemon name -> metrics address (with prof)

	regs                *registries
	sharedRepo          string // this round's repository in the artifact registry
	count, artCount     *testenv.CountingProxy
	regLink, artLink    *netproxy.Proxy
	gzipRef, estargzRef string
	insecure            []string
	shared              string
	rows                []row
	closers             []func() error // what setup started, in order
	firstDaemon         *testenv.Daemon
	firstPodman         *testenv.Podman
}

func (b *bench) want(c string) bool { return len(b.cases) == 0 || b.cases[c] }

func (b *bench) logf(format string, args ...any) {
	logf("[%s #%d] %s", b.link.Name, b.round, fmt.Sprintf(format, args...))
}

// run measures every case and returns the rows (those done when it fails).
func (b *bench) run() ([]row, error) {
	err := b.setup()
	defer b.teardown()
	if err != nil {
		return nil, err
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{caseStock, b.stock},
		{caseFirst, b.first},
		{caseStargz, b.peer},
		{caseSecond, b.second},
		{casePrefetch, b.prefetch},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return b.rows, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return b.rows, nil
}

// registries are the image registry (the image as gzip with lazypull's
// index, and as eStargz) and the artifact registry, shared by every link and
// round (each round shares its own repository in the artifact registry).
type registries struct {
	reg, artifacts *testenv.Registry
}

func (r *registries) Close() error {
	return errors.Join(r.reg.Close(), r.artifacts.Close())
}

// newRegistries starts the registries and pushes the image and its index
// (built by lazypull with its defaults, from a machine of its own).
func newRegistries(dir, bin string, img *image) (*registries, error) {
	reg, err := testenv.NewRegistry(testenv.RegistryOptions{Dir: filepath.Join(dir, "registry")})
	if err != nil {
		return nil, err
	}
	artifacts, err := testenv.NewRegistry(testenv.RegistryOptions{Dir: filepath.Join(dir, "artifacts")})
	if err != nil {
		reg.Close()
		return nil, err
	}
	r := &registries{reg: reg, artifacts: artifacts}
	ctx := context.Background()
	logf("pushing the image (gzip and eStargz) and indexing it (lazypull index --push)")
	for _, p := range []struct{ tag, layout string }{{"gzip", img.Layout}, {"estargz", img.Estargz}} {
		if _, err := testenv.Push(ctx, reg.URL, "bench/debian", p.tag, p.layout); err != nil {
			r.Close()
			return nil, err
		}
	}
	if err := index(bin, filepath.Join(dir, "indexer"), reg.Host, reg.Host+"/bench/debian:gzip"); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// setup starts this round's counting proxies and links.
func (b *bench) setup() error {
	var err error
	if err = os.MkdirAll(b.dir, 0o755); err != nil {
		return err
	}
	if b.count, err = testenv.NewCountingProxy(b.regs.reg.URL); err != nil {
		return err
	}
	b.closers = append(b.closers, b.count.Close)
	if b.artCount, err = testenv.NewCountingProxy(b.regs.artifacts.URL); err != nil {
		return err
	}
	b.closers = append(b.closers, b.artCount.Close)
	if b.regLink, err = netproxy.New(netproxy.Config{Target: b.count.Host, Rate: b.link.Rate, RTT: b.link.RTT}); err != nil {
		return err
	}
	b.closers = append(b.closers, b.regLink.Close)
	if b.artLink, err = netproxy.New(netproxy.Config{Target: b.artCount.Host, Rate: b.link.Rate, RTT: b.link.RTT}); err != nil {
		return err
	}
	b.closers = append(b.closers, b.artLink.Close)
	b.gzipRef = b.regLink.Addr() + "/bench/debian:gzip"
	b.estargzRef = b.regLink.Addr() + "/bench/debian:estargz"
	b.insecure = []string{b.regLink.Addr(), b.artLink.Addr()}
	b.sharedRepo = fmt.Sprintf("lazypull/bench-%s-%d", b.link.Name, b.round)
	b.shared = b.artLink.Addr() + "/" + b.sharedRepo
	return nil
}

func (b *bench) teardown() {
	if b.firstDaemon != nil {
		b.stop(b.firstDaemon, b.firstPodman)
		b.firstDaemon = nil
	}
	for i := len(b.closers) - 1; i >= 0; i-- {
		if err := b.closers[i](); err != nil {
			b.logf("teardown: %v", err)
		}
	}
	b.closers = nil
}

// index builds the index of ref with lazypull's defaults and pushes it to
// the image registry.
func index(bin, dir, host, ref string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cfg := filepath.Join(dir, "config.toml")
	body := fmt.Sprintf("root_dir = %q\n[registry]\ninsecure = [%q]\n", filepath.Join(dir, "root"), host)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		return err
	}
	out, err := exec.Command(bin, "--config", cfg, "index", "--push", ref).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lazypull index --push: %w: %s", err, out)
	}
	return nil
}

// traffic is the bytes both registries sent since the last reset.
func (b *bench) traffic() int64 {
	return b.count.Stats().Total.Bytes + b.artCount.Stats().Total.Bytes
}

func (b *bench) resetTraffic() {
	b.count.Reset()
	b.artCount.Reset()
}

// dropCaches writes back and drops the page cache, dentries and inodes.
func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// pull times podman's pull of ref and counts its bytes.
func (b *bench) pull(pm *testenv.Podman, ref string) (float64, int64, error) {
	b.resetTraffic()
	start := time.Now()
	_, err := pm.Pull(ref)
	return time.Since(start).Seconds(), b.traffic(), err
}

// firstRun times a new container of ref until the workload's output, and
// counts the bytes fetched meanwhile.
func (b *bench) firstRun(pm *testenv.Podman, ref string) (float64, int64, error) {
	b.resetTraffic()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := pm.Command(ctx, append([]string{"run", "--rm", ref}, workload...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	took := time.Since(start).Seconds()
	bytes := b.traffic()
	if err := cmd.Wait(); err != nil {
		return took, bytes, fmt.Errorf("workload: %w: %s", err, stderr.String())
	}
	if strings.TrimSpace(line) != workloadOutput {
		return took, bytes, fmt.Errorf("workload printed %q: %s", line, stderr.String())
	}
	return took, bytes, nil
}

func (b *bench) podman(name string, storageOpts ...string) (*testenv.Podman, error) {
	return testenv.NewPodmanHarness(testenv.PodmanOptions{Dir: filepath.Join(b.dir, name, "podman"), InsecureRegistries: b.insecure,
		StorageOpts: storageOpts, Timeout: 30 * time.Minute})
}

func (b *bench) add(r row) {
	r.Link, r.Round = b.link.Name, b.round
	b.rows = append(b.rows, r)
	b.logf("%-14s pull %6.2fs (%s)  first run %6.2fs (%s)  peak RSS %s %s", r.Case, r.Pull, size(r.PullBytes), r.Run, size(r.RunBytes), size(r.PeakRSS), r.Note)
}

// stock: eager pull, first run, then a run with the page cache dropped.
func (b *bench) stock() error {
	if !b.want(caseStock) && !b.want(caseStockCold) {
		return nil
	}
	pm, err := b.podman("stock")
	if err != nil {
		return err
	}
	defer pm.Close()
	r, err := b.pullAndRun(caseStock, pm, b.gzipRef, "")
	if err != nil {
		return err
	}
	b.add(r)
	if err := dropCaches(); err != nil {
		return err
	}
	c := row{Case: caseStockCold, Note: "page cache dropped"}
	if c.Run, c.RunBytes, err = b.firstRun(pm, b.gzipRef); err != nil {
		return err
	}
	b.add(c)
	return nil
}

// lazy starts a lazypull daemon with a fresh root and a podman using it.
func (b *bench) lazy(name string, cfg map[string]any) (*testenv.Daemon, *testenv.Podman, error) {
	full := map[string]any{"registry": map[string]any{"insecure": b.insecure}}
	for k, v := range cfg {
		full[k] = v
	}
	// Overrides (experiments): tables merge key by key.
	for k, v := range b.extra {
		sub, ok1 := v.(map[string]any)
		cur, ok2 := full[k].(map[string]any)
		if !ok1 || !ok2 {
			full[k] = v
			continue
		}
		merged := map[string]any{}
		for kk, vv := range cur {
			merged[kk] = vv
		}
		for kk, vv := range sub {
			merged[kk] = vv
		}
		full[k] = merged
	}
	if b.prof.dir != "" {
		addr, err := freeAddr()
		if err != nil {
			return nil, nil, err
		}
		full["metrics_address"] = addr
		full["pprof"] = true // off by default since the profiler is a diagnosis tool
		b.metrics[name] = addr
	}
	d, err := testenv.NewDaemon(b.bin, testenv.DaemonOptions{Dir: filepath.Join(b.dir, name), Config: full, LogLevel: "info"})
	if err != nil {
		return nil, nil, err
	}
	pm, err := b.podman(name, d.ALSOption())
	if err != nil {
		d.Stop()
		return nil, nil, err
	}
	return d, pm, nil
}

func (b *bench) stop(d *testenv.Daemon, pm *testenv.Podman) {
	if err := pm.Close(); err != nil {
		b.logf("podman cleanup: %v", err)
	}
	if err := d.Stop(); err != nil {
		b.logf("stopping lazypull: %v", err)
	}
}

// pullAndRun measures case c: with the page cache dropped, a pull of ref
// and its first run. profAddr, when set, is the lazypull daemon's metrics
// address: its CPU profile of the run's first 10 s, its heap and metrics
// after the run are saved (-pprof).
func (b *bench) pullAndRun(c string, pm *testenv.Podman, ref, profAddr string) (row, error) {
	if err := dropCaches(); err != nil {
		return row{}, err
	}
	r := row{Case: c}
	var err error
	if r.Pull, r.PullBytes, err = b.pull(pm, ref); err != nil {
		return r, err
	}
	name := fmt.Sprintf("%s-%s-%d", c, b.link.Name, b.round)
	wait := b.prof.cpu(profAddr, name, 10*time.Second)
	if r.Run, r.RunBytes, err = b.firstRun(pm, ref); err != nil {
		return r, err
	}
	wait()
	b.prof.heap(profAddr, name)
	return r, nil
}

// lazyRow pulls and runs through a lazypull daemon.
func (b *bench) lazyRow(c string, d *testenv.Daemon, pm *testenv.Podman) (row, error) {
	r, err := b.pullAndRun(c, pm, b.gzipRef, b.metrics[strings.TrimPrefix(c, "lazy-")])
	if err != nil {
		return r, err
	}
	r.PeakRSS, _ = d.PeakRSS()
	if n := lazyLayers(d); n != len(b.img.Layers) {
		r.Note = fmt.Sprintf("only %d of %d layers lazy", n, len(b.img.Layers))
	}
	return r, nil
}

// lazyLayers counts the layers the daemon serves.
func lazyLayers(d *testenv.Daemon) int {
	st, err := d.StatusErr()
	if err != nil {
		return 0
	}
	return len(st.Layers)
}

// noPrefetch is the configuration of the cases without background traffic.
func (b *bench) noPrefetch() map[string]any {
	return map[string]any{
		"prefetch":     map[string]any{"enabled": false},
		"verification": map[string]any{"enabled": false},
		"artifacts":    map[string]any{"shared_repository": b.shared},
	}
}

// first: the first machine; it records the start-up profile into the
// shared repository (the daemon keeps running until second needs it).
func (b *bench) first() error {
	if !b.want(caseFirst) && !b.want(caseSecond) {
		return nil
	}
	d, pm, err := b.lazy("first", b.noPrefetch())
	if err != nil {
		return err
	}
	b.firstDaemon, b.firstPodman = d, pm
	r, err := b.lazyRow(caseFirst, d, pm)
	if err != nil {
		return err
	}
	b.add(r)
	return nil
}

// second: a fresh machine sharing the artifact repository, once the first
// machine has shared the start-up profile.
func (b *bench) second() error {
	if b.firstDaemon != nil {
		b.logf("waiting for the first machine's start-up profile in the shared repository")
		err := b.waitProfile(2 * time.Minute)
		b.stop(b.firstDaemon, b.firstPodman)
		b.firstDaemon = nil
		if err != nil {
			return err
		}
	}
	if !b.want(caseSecond) {
		return nil
	}
	d, pm, err := b.lazy("second", b.noPrefetch())
	if err != nil {
		return err
	}
	defer b.stop(d, pm)
	r, err := b.lazyRow(caseSecond, d, pm)
	if err != nil {
		return err
	}
	b.add(r)
	return nil
}

// waitProfile waits until the shared repository holds a start-up profile.
func (b *bench) waitProfile(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get(b.regs.artifacts.URL + "/v2/" + b.sharedRepo + "/tags/list")
		if err == nil {
			var tags struct {
				Tags []string `json:"tags"`
			}
			err = json.NewDecoder(resp.Body).Decode(&tags)
			resp.Body.Close()
			for _, t := range tags.Tags {
				if strings.HasPrefix(t, "lazypull-profile-") {
					return nil
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return errors.New("no start-up profile in the shared repository")
}

// prefetch: the defaults (prefetch and verification on, no shared
// repository: no profile); then, every span on disk and every layer
// verified, the page cache dropped, a new container.
func (b *bench) prefetch() error {
	if !b.want(casePrefetch) && !b.want(caseCached) {
		return nil
	}
	d, pm, err := b.lazy("prefetch", nil)
	if err != nil {
		return err
	}
	defer b.stop(d, pm)
	r, err := b.lazyRow(casePrefetch, d, pm)
	if err != nil {
		return err
	}
	b.add(r)
	b.logf("waiting for every span on disk and every layer verified")
	start := time.Now()
	if err := waitComplete(d, 20*time.Minute); err != nil {
		return err
	}
	b.logf("complete %.1fs after the first run", time.Since(start).Seconds())
	if err := dropCaches(); err != nil {
		return err
	}
	c := row{Case: caseCached, Note: "every span on disk, page cache dropped"}
	name := fmt.Sprintf("%s-%s-%d", caseCached, b.link.Name, b.round)
	wait := b.prof.cpu(b.metrics["prefetch"], name, 5*time.Second)
	if c.Run, c.RunBytes, err = b.firstRun(pm, b.gzipRef); err != nil {
		return err
	}
	wait()
	c.PeakRSS, _ = d.PeakRSS()
	b.add(c)
	// FUSE passthrough hands a file to the kernel from its second open
	// after verification on (the first one has it written out).
	time.Sleep(2 * time.Second)
	if err := dropCaches(); err != nil {
		return err
	}
	a := row{Case: caseCachedAgain, Note: "again, page cache dropped (passthrough)"}
	name = fmt.Sprintf("%s-%s-%d", caseCachedAgain, b.link.Name, b.round)
	wait = b.prof.cpu(b.metrics["prefetch"], name, 5*time.Second)
	if a.Run, a.RunBytes, err = b.firstRun(pm, b.gzipRef); err != nil {
		return err
	}
	wait()
	a.PeakRSS, _ = d.PeakRSS()
	b.add(a)
	return nil
}

// waitComplete waits until every layer is prefetched and verified.
func waitComplete(d *testenv.Daemon, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st, err := d.StatusErr()
		if err != nil {
			return err
		}
		done := len(st.Layers) > 0
		for _, l := range st.Layers {
			if !strings.HasPrefix(l.Prefetch, "done") || !l.Verified || l.SpansCached < l.Spans {
				done = false
			}
		}
		if done {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("prefetch and verification not done after %s", timeout)
}
