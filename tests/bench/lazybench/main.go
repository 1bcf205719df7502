// Command lazybench measures lazypull against stock podman on a ~1 GB
// generated image, side by side in one run, for each network profile
// (emulated by tests/netproxy between podman/lazypull and the registry):
//
//   - stock `podman pull` vs lazy pull of the indexed image, time to the
//     first output of a workload reading ~5 % of the image, bytes over the
//     link, the daemon's peak RSS;
//   - cold lazy pull of the same image without any index (indexed on the
//     fly) vs the stock pull;
//   - a second machine (empty local store, shared artifact registry) vs the
//     stock pull;
//   - the background prefetch's throughput against the link's bandwidth.
//
// It is run by tests/bench/run.sh; see there for the command line.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/netproxy"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

type profile struct {
	Name string        `json:"name"`
	Rate int64         `json:"rate_bytes_per_s"` // 0: unlimited
	RTT  time.Duration `json:"rtt_ns"`
}

var profiles = map[string]profile{
	"loopback":     {Name: "loopback"},
	"200mbit-20ms": {Name: "200mbit-20ms", Rate: 200e6 / 8, RTT: 20 * time.Millisecond},
}

// run is one measured operation.
type run struct {
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"` // over the emulated link, both directions
}

type result struct {
	Profile        profile `json:"profile"`
	ImageBytes     int64   `json:"image_compressed_bytes"`
	WorkloadBytes  int64   `json:"workload_file_bytes"`
	StockPull      run     `json:"stock_pull"`
	StockFirstOut  run     `json:"stock_first_output"`
	LazyPull       run     `json:"lazy_pull"`
	LazyFirstOut   run     `json:"lazy_first_output"`
	LazyPeakRSS    int64   `json:"lazy_daemon_peak_rss_bytes"`
	DefaultsPull   run     `json:"lazy_defaults_pull"`
	DefaultsFirst  run     `json:"lazy_defaults_first_output"`
	DefaultsRSS    int64   `json:"lazy_defaults_daemon_peak_rss_bytes"`
	ColdPull       run     `json:"cold_lazy_pull"`
	ColdPeakRSS    int64   `json:"cold_daemon_peak_rss_bytes"`
	SecondPull     run     `json:"second_machine_pull"`
	SecondFirstOut run     `json:"second_machine_first_output"`
	Prefetch       run     `json:"prefetch"`
}

func main() {
	if err := mainErr(); err != nil {
		fmt.Fprintln(os.Stderr, "lazybench:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	bin := flag.String("lazypull", "bin/lazypull", "lazypull binary to measure")
	which := flag.String("profiles", "loopback,200mbit-20ms", "network profiles, comma separated: "+strings.Join(keys(profiles), ", "))
	preset := flag.String("preset", "bench1g", "image preset (tests/imagegen)")
	out := flag.String("out", "tests/bench/out/results.json", "where to write the results as JSON")
	workDir := flag.String("dir", "", "work directory (default: a new temporary directory, removed afterwards)")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("run as root (podman with its own storage, FUSE)")
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	o, err := imagegen.Preset(*preset)
	if err != nil {
		return err
	}
	log("image: preparing %s (generated once, then cached in %s)", *preset, imagegen.CacheDir())
	img, err := imagegen.Cached(imagegen.CacheDir(), o)
	if err != nil {
		return err
	}
	tree, err := img.ExpectedTree()
	if err != nil {
		return err
	}
	files, fileBytes := workload(tree, img.CompressedSize()/20)
	log("image: %s compressed in %d layers; workload reads %d files, %s", size(img.CompressedSize()), len(img.Layers), len(files), size(fileBytes))

	dir := *workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("/var/tmp", "lazybench-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	var results []result
	for _, name := range strings.Split(*which, ",") {
		p, ok := profiles[name]
		if !ok {
			return fmt.Errorf("unknown profile %q", name)
		}
		res, err := measure(absBin, filepath.Join(dir, p.Name), p, img, files, fileBytes)
		if err != nil {
			return fmt.Errorf("profile %s: %w", p.Name, err)
		}
		results = append(results, *res)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(results, "", "  ")
	if err := os.WriteFile(*out, data, 0o644); err != nil {
		return err
	}
	report(results)
	fmt.Printf("\nresults: %s\n", *out)
	return nil
}

// workload picks files across the whole image, in one pass in path (and so
// tar) order — every n-th file, n chosen so that they add up to about target
// bytes — like a program that touches a few percent of the files of every
// layer.
func workload(tree fstree.Tree, target int64) ([]string, int64) {
	var paths []string
	var total int64
	for _, p := range tree.Paths() {
		if n := tree[p]; n.Type == fstree.TypeFile && n.Size > 0 && n.Size < 16<<20 && plainName(p) {
			paths = append(paths, p)
			total += n.Size
		}
	}
	sort.Strings(paths)
	stride := max(int(total/target), 1)
	var picked []string
	var sum int64
	for i := 0; i < len(paths); i += stride {
		picked = append(picked, "/"+paths[i])
		sum += tree[paths[i]].Size
	}
	return picked, sum
}

// plainName reports whether p needs no quoting (the workload passes the
// paths to xargs).
func plainName(p string) bool {
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._-/+", c)) {
			return false
		}
	}
	return true
}

// env is one profile's registries and links.
type env struct {
	bin       string
	dir       string
	reg       *testenv.Registry
	link      *netproxy.Proxy // podman and lazypull -> image registry
	artifacts *testenv.Registry
	artLink   *netproxy.Proxy // lazypull -> artifact registry
}

func (e *env) close() {
	e.link.Close()
	e.artLink.Close()
	e.reg.Close()
	e.artifacts.Close()
}

func measure(bin, dir string, p profile, img *imagegen.Image, files []string, fileBytes int64) (*result, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	log("[%s] starting registries", p.Name)
	reg, err := testenv.NewRegistry(testenv.RegistryOptions{Dir: filepath.Join(dir, "registry")})
	if err != nil {
		return nil, err
	}
	artifacts, err := testenv.NewRegistry(testenv.RegistryOptions{Dir: filepath.Join(dir, "artifacts")})
	if err != nil {
		return nil, err
	}
	link, err := netproxy.New(netproxy.Config{Target: reg.Host, Rate: p.Rate, RTT: p.RTT})
	if err != nil {
		return nil, err
	}
	artLink, err := netproxy.New(netproxy.Config{Target: artifacts.Host, Rate: p.Rate, RTT: p.RTT})
	if err != nil {
		return nil, err
	}
	e := &env{bin: bin, dir: dir, reg: reg, link: link, artifacts: artifacts, artLink: artLink}
	defer e.close()
	ctx := context.Background()
	log("[%s] pushing the image (twice: one copy gets a SOCI index, one does not)", p.Name)
	for _, repo := range []string{"bench/indexed", "bench/plain"} {
		if _, err := testenv.Push(ctx, reg.URL, repo, "v1", img.Dir); err != nil {
			return nil, err
		}
	}
	indexed := link.Addr() + "/bench/indexed:v1"
	plain := link.Addr() + "/bench/plain:v1"
	if err := lazypullIndex(bin, filepath.Join(dir, "indexer"), reg.Host, reg.Host+"/bench/indexed:v1"); err != nil {
		return nil, err
	}
	res := &result{Profile: p, ImageBytes: img.CompressedSize(), WorkloadBytes: fileBytes}
	insecure := []string{link.Addr(), artLink.Addr()}
	shared := artLink.Addr() + "/lazypull/artifacts"

	// Stock podman.
	{
		pm, err := testenv.NewPodmanHarness(testenv.PodmanOptions{Dir: filepath.Join(dir, "stock"), InsecureRegistries: insecure, Timeout: 30 * time.Minute})
		if err != nil {
			return nil, err
		}
		res.StockPull, res.StockFirstOut, err = pullAndRun(e, pm, indexed, files)
		pm.Close()
		if err != nil {
			return nil, fmt.Errorf("stock: %w", err)
		}
		log("[%s] stock pull %.2fs, first output %.2fs", p.Name, res.StockPull.Seconds, res.StockFirstOut.Seconds)
	}
	// Lazy pull of the indexed image.
	{
		d, pm, err := lazyEnv(e, "lazy", insecure, map[string]any{"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false}})
		if err != nil {
			return nil, err
		}
		res.LazyPull, res.LazyFirstOut, err = pullAndRun(e, pm, indexed, files)
		res.LazyPeakRSS, _ = d.PeakRSS()
		stop(d, pm)
		if err != nil {
			return nil, fmt.Errorf("lazy: %w", err)
		}
		log("[%s] lazy pull %.2fs, first output %.2fs, peak RSS %s", p.Name, res.LazyPull.Seconds, res.LazyFirstOut.Seconds, size(res.LazyPeakRSS))
	}
	// Lazy pull with the default configuration: the background prefetch
	// fetches next to what the workload reads while it works.
	{
		d, pm, err := lazyEnv(e, "defaults", insecure, nil)
		if err != nil {
			return nil, err
		}
		res.DefaultsPull, res.DefaultsFirst, err = pullAndRun(e, pm, indexed, files)
		res.DefaultsRSS, _ = d.PeakRSS()
		stop(d, pm)
		if err != nil {
			return nil, fmt.Errorf("lazy (defaults): %w", err)
		}
		log("[%s] lazy pull with prefetch %.2fs, first output %.2fs, peak RSS %s", p.Name, res.DefaultsPull.Seconds, res.DefaultsFirst.Seconds, size(res.DefaultsRSS))
	}
	// Cold lazy pull: no index anywhere; indexed on the way, shared.
	{
		d, pm, err := lazyEnv(e, "cold", insecure, map[string]any{
			"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
			"index":     map[string]any{"on_demand": "sync"},
			"artifacts": map[string]any{"shared_repository": shared},
		})
		if err != nil {
			return nil, err
		}
		res.ColdPull, err = timed(e, func() error { _, err := pm.Pull(plain); return err })
		res.ColdPeakRSS, _ = d.PeakRSS()
		if err == nil {
			err = waitShared(artifacts.URL, servedLayers(img), 5*time.Minute)
		}
		stop(d, pm)
		if err != nil {
			return nil, fmt.Errorf("cold: %w", err)
		}
		log("[%s] cold lazy pull %.2fs (peak RSS %s)", p.Name, res.ColdPull.Seconds, size(res.ColdPeakRSS))
	}
	// Second machine: empty local store, the shared artifact registry.
	{
		d, pm, err := lazyEnv(e, "second", insecure, map[string]any{
			"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
			"index":     map[string]any{"on_demand": "off"},
			"artifacts": map[string]any{"shared_repository": shared},
		})
		if err != nil {
			return nil, err
		}
		res.SecondPull, res.SecondFirstOut, err = pullAndRun(e, pm, plain, files)
		stop(d, pm)
		if err != nil {
			return nil, fmt.Errorf("second machine: %w", err)
		}
		log("[%s] second machine pull %.2fs, first output %.2fs", p.Name, res.SecondPull.Seconds, res.SecondFirstOut.Seconds)
	}
	// Prefetch throughput.
	{
		d, pm, err := lazyEnv(e, "prefetch", insecure, map[string]any{"prefetch": map[string]any{"concurrency": 4, "batch_size": "16MiB"}})
		if err != nil {
			return nil, err
		}
		if _, err := pm.Pull(indexed); err != nil {
			stop(d, pm)
			return nil, err
		}
		link.ResetStats()
		start := time.Now()
		err = waitPrefetched(d, 20*time.Minute)
		res.Prefetch = run{Seconds: time.Since(start).Seconds(), Bytes: link.Stats().Bytes()}
		stop(d, pm)
		if err != nil {
			return nil, fmt.Errorf("prefetch: %w", err)
		}
		log("[%s] prefetch %s in %.2fs = %s/s", p.Name, size(res.Prefetch.Bytes), res.Prefetch.Seconds, size(int64(float64(res.Prefetch.Bytes)/res.Prefetch.Seconds)))
	}
	return res, nil
}

// lazyEnv starts a lazypull daemon (fresh root) and a podman using it.
func lazyEnv(e *env, name string, insecure []string, extra map[string]any) (*testenv.Daemon, *testenv.Podman, error) {
	cfg := map[string]any{"registry": map[string]any{"insecure": insecure}}
	for k, v := range extra {
		cfg[k] = v
	}
	d, err := testenv.NewDaemon(e.bin, testenv.DaemonOptions{Dir: filepath.Join(e.dir, name), Config: cfg})
	if err != nil {
		return nil, nil, err
	}
	pm, err := testenv.NewPodmanHarness(testenv.PodmanOptions{Dir: filepath.Join(e.dir, name, "podman"), InsecureRegistries: insecure,
		StorageOpts: []string{d.ALSOption()}, Timeout: 30 * time.Minute})
	if err != nil {
		d.Stop()
		return nil, nil, err
	}
	return d, pm, nil
}

// stop removes podman's images first, then stops the daemon.
func stop(d *testenv.Daemon, pm *testenv.Podman) {
	pm.Close()
	if err := d.Stop(); err != nil {
		log("stopping daemon: %v", err)
	}
}

// timed runs fn and returns its duration and the bytes it moved over the
// image registry's link.
func timed(e *env, fn func() error) (run, error) {
	e.link.ResetStats()
	start := time.Now()
	err := fn()
	return run{Seconds: time.Since(start).Seconds(), Bytes: e.link.Stats().Bytes()}, err
}

// pullAndRun pulls ref, then runs the workload and times its first output
// (from the start of `podman run`).
func pullAndRun(e *env, pm *testenv.Podman, ref string, files []string) (pull, first run, err error) {
	pull, err = timed(e, func() error { _, err := pm.Pull(ref); return err })
	if err != nil {
		return pull, first, err
	}
	first, err = timed(e, func() error {
		// The list goes through stdin: too long for a command line.
		script := "/bin/busybox xargs /bin/cat >/dev/null && echo done"
		cmd := pm.Command(context.Background(), "run", "-i", "--rm", ref, "/bin/sh", "-c", script)
		cmd.Stdin = strings.NewReader(strings.Join(files, "\n") + "\n")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("workload: %w: %s", err, stderr.String())
		}
		if strings.TrimSpace(line) != "done" {
			return fmt.Errorf("workload printed %q: %s", line, stderr.String())
		}
		return nil
	})
	return pull, first, err
}

// lazypullIndex indexes ref and pushes the SOCI index, from a machine of its
// own (its own root dir).
func lazypullIndex(bin, dir, host, ref string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cfg := filepath.Join(dir, "config.toml")
	body := fmt.Sprintf("root_dir = %q\n[registry]\ninsecure = [%q]\n", filepath.Join(dir, "root"), host)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		return err
	}
	out, err := runCmd(bin, "--config", cfg, "index", "--push", ref)
	if err != nil {
		return fmt.Errorf("lazypull index: %w: %s", err, out)
	}
	return nil
}

// servedLayers counts the layers lazypull serves (default min_layer_size).
func servedLayers(img *imagegen.Image) int {
	n := 0
	for _, l := range img.Layers {
		if l.Size >= 10<<20 {
			n++
		}
	}
	return n
}

// waitShared waits until the artifact registry holds n layer mappings.
func waitShared(url string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if tags, err := listTags(url, "lazypull/artifacts"); err == nil {
			c := 0
			for _, t := range tags {
				if strings.HasPrefix(t, "lazypull-layer-") {
					c++
				}
			}
			if c >= n {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the shared artifact registry did not get %d layer mappings in %s", n, timeout)
}

// waitPrefetched waits until every served layer is fully prefetched.
func waitPrefetched(d *testenv.Daemon, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st, err := d.StatusErr()
		if err != nil {
			return err
		}
		done := len(st.Layers) > 0
		for _, l := range st.Layers {
			if !strings.HasPrefix(l.Prefetch, "done") {
				done = false
			}
		}
		if done {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("prefetch not done after %s", timeout)
}
