package e2e

import (
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/netproxy"
	"github.com/lazypull/lazypull/tests/testenv"
)

// BenchmarkFormatsPullRun pulls the formats image and runs a first
// workload in it (sha256sum of five small files of every layer and of one
// 4 MiB file), side by side in
// one run, over an emulated link (100 Mbit/s, 20 ms RTT): the image as
// gzip, pulled eagerly and lazily through its zTOC (podman 4.3.1, which
// asks the store for every layer), as eStargz and as zstd:chunked pulled
// lazily by podman 4.3.1 (by compressed digest) and by stock podman 5.4.2
// (by TOC digest), and eagerly by podman 5. Each iteration uses a fresh
// daemon and podman store. Run with -benchtime=1x:
//
//	LAZYPULL_BIN=$PWD/bin/lazypull go test -tags "$TAGS" -run '^$' -bench BenchmarkFormatsPullRun -benchtime=1x ./tests/e2e/
//
// Metrics: pull-s and run-s (seconds), MB fetched from the registry (pull
// and run), and lazy (1 when every layer of 1 MiB or more was served by the
// store).
func BenchmarkFormatsPullRun(b *testing.B) {
	ch := testenv.NewChroot(b)
	f := newTOCFixture(b, ch)
	counting := testenv.StartCountingProxy(b, f.reg.URL)
	link, err := netproxy.New(netproxy.Config{Target: counting.Host, Rate: 100e6 / 8, RTT: 20 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { link.Close() })
	host := link.Addr()
	// The gzip image's SOCI index, built on "another machine" and pushed.
	runLazypull(b, map[string]any{"registry": map[string]any{"insecure": []string{f.reg.Host}}, "index": map[string]any{"min_layer_size": "1MiB"}},
		"index", "--push", f.reg.Ref(formatsRepo, "gzip"))

	// The first run: a container reading a few small files of every layer
	// and one 4 MiB file (busybox itself comes from the base layer).
	var paths []string
	for _, dir := range []string{"usr/lib/base", "opt/data", "var/top"} {
		paths = append(paths, regularFiles(f.want, dir, 5, false)...)
	}
	for _, p := range regularFiles(f.want, "opt/data", 3, true) {
		if f.want[p].Size == 4<<20 {
			paths = append(paths, p)
		}
	}
	cases := []struct {
		name   string
		tag    string
		podman int
		lazy   bool
	}{
		{"gzip/eager/podman4", "gzip", 4, false},
		{"gzip+zTOC/lazy/podman4", "gzip", 4, true},
		{"estargz/lazy/podman4", "estargz", 4, true},
		{"zstd:chunked/lazy/podman4", "zstd", 4, true},
		{"zstd:chunked/eager/podman5", "zstd", 5, false},
		{"estargz/lazy/podman5", "estargz", 5, true},
		{"zstd:chunked/lazy/podman5", "zstd", 5, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var pullS, runS, mb, lazy float64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				var d *testenv.Daemon
				var opts []string
				if c.lazy {
					dir := ""
					if c.podman == 5 {
						dir = ch.SharedDir(b, "daemon")
					}
					d = formatsDaemon(b, dir, host)
					opts = []string{d.ALSOption()}
				}
				var p *testenv.Podman
				if c.podman == 5 {
					p = podman5(b, ch, []string{host}, opts...)
				} else {
					p = testenv.NewPodman(b, testenv.PodmanOptions{InsecureRegistries: []string{host}, StorageOpts: opts})
				}
				ref := host + "/" + formatsRepo + ":" + c.tag
				counting.Reset()
				b.StartTimer()
				start := time.Now()
				if _, err := p.Pull(ref); err != nil {
					b.Fatalf("pull: %v", err)
				}
				pulled := time.Now()
				checkFilesInContainer(b, p, ref, f.want, paths)
				b.StopTimer()
				pullS += pulled.Sub(start).Seconds()
				runS += time.Since(pulled).Seconds()
				mb += float64(counting.Stats().BlobBytes()) / 1e6
				if d != nil {
					served := 0
					for _, l := range layersOf(b, f.reg, formatsRepo, c.tag) {
						if l.Size >= 1<<20 {
							served++
						}
					}
					if n := len(alsDiffLinks(b, p.Root, d.MountPoint)); n == served {
						lazy++
					} else {
						b.Logf("%s: %d of %d layers served by the store", c.name, n, served)
					}
				}
			}
			n := float64(b.N)
			b.ReportMetric(pullS/n, "pull-s")
			b.ReportMetric(runS/n, "run-s")
			b.ReportMetric((pullS+runS)/n, "total-s")
			b.ReportMetric(mb/n, "MB")
			b.ReportMetric(lazy/n, "lazy")
			b.ReportMetric(0, "ns/op")
		})
	}
}
