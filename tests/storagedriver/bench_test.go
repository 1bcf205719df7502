package storagedrivertest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

// BenchmarkPull compares the time to pull the E2E image (about 355 MB
// compressed, five layers) from a registry on loopback into an empty podman
// store: `lazypull pull` (lazy, the layer store serving four layers from the
// SOCI index pushed to the registry), `lazypull pull --eager` (an ordinary
// pull through the same code), stock `podman pull` (4.3.1), and stock
// podman through the layer store (its own legacy ALS path). The daemon runs
// with the default index settings and without prefetch, and already knows
// the image's zTOCs from the first iteration on. Run:
//
//	go test -tags "$TAGS" -run '^$' -bench BenchmarkPull -benchtime 3x ./tests/storagedriver
func BenchmarkPull(b *testing.B) {
	img := cachedImage(b, imagegen.E2E())
	reg := testenv.StartRegistry(b, testenv.RegistryOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	if _, err := testenv.Push(ctx, reg.URL, "lazypull/e2e", "v1", img.Dir); err != nil {
		cancel()
		b.Fatal(err)
	}
	cancel()
	ref := reg.Ref("lazypull/e2e", "v1")
	cfg := map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}}, "prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false}}
	runLazypull(b, map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}}}, "index", "--push", ref)
	d := testenv.StartDaemon(b, testenv.DaemonOptions{Config: cfg})
	bin := testenv.LazypullBinary(b)

	lazypull := func(p *testenv.Podman, extra ...string) error {
		args := append([]string{"--config", d.ConfigPath, "pull", "--quiet", "--root", p.Root, "--runroot", p.RunRoot,
			"--storage-driver", "overlay", "--storage-opt", d.ALSOption()}, extra...)
		cmd := exec.Command(bin, append(args, ref)...)
		cmd.Env = append(os.Environ(), "CONTAINERS_REGISTRIES_CONF="+filepath.Join(p.Dir, "registries.conf"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("lazypull pull: %v\n%s", err, out)
		}
		return nil
	}
	podman := func(p *testenv.Podman) error {
		_, err := p.Pull(ref)
		return err
	}
	cases := []struct {
		name string
		als  bool
		pull func(*testenv.Podman) error
	}{
		{"lazypull-pull", true, func(p *testenv.Podman) error { return lazypull(p) }},
		{"lazypull-pull-eager", false, func(p *testenv.Podman) error { return lazypull(p, "--eager") }},
		{"podman-pull", false, podman},
		{"podman-pull-als", true, podman},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				opts := testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}}
				if c.als {
					opts.StorageOpts = []string{d.ALSOption()}
				}
				p, err := testenv.NewPodmanHarness(opts)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				err = c.pull(p)
				b.StopTimer()
				links := 0
				if diffs, _ := filepath.Glob(filepath.Join(p.Root, "overlay", "*", "diff")); len(diffs) > 0 {
					for _, df := range diffs {
						if t, err := os.Readlink(df); err == nil && strings.HasPrefix(t, d.MountPoint) {
							links++
						}
					}
				}
				if cerr := p.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
				if wantLazy := c.als; (links > 0) != wantLazy {
					b.Fatalf("%s: %d layers served lazily", c.name, links)
				}
				b.StartTimer()
			}
		})
	}
}
