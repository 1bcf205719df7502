package layerstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/tests/netproxy"
)

// BenchmarkDemandLatencyUnderPrefetch measures what a container waits for
// a read that misses (one span, at a random place of a 64 MiB layer) over
// an emulated link of 8 MB/s and 20 ms RTT: on an idle link, and while the
// background prefetch of the same layer keeps the link busy (4 requests of
// 4 MiB in flight). The demand fetch preempts the prefetch, so the ratio of
// the two medians (reported as "ratio") stays small.
//
//	go test -run '^$' -bench DemandLatencyUnderPrefetch -benchtime 12x ./layerstore/
func BenchmarkDemandLatencyUnderPrefetch(b *testing.B) {
	reg := newTestRegistry(b)
	l := stdLayer(b, 77, 64<<10, 64)
	u, _ := url.Parse(reg.url)
	proxy, err := netproxy.New(netproxy.Config{Target: u.Host, Rate: 8 << 20, RTT: 20 * time.Millisecond, Burst: 64 << 10})
	if err != nil {
		b.Fatal(err)
	}
	defer proxy.Close()
	img := pushImageTo(b, reg.host, "app/busy", "v1", []*testLayer{l}, imageOptions{})
	ref := proxy.Addr() + "/app/busy:v1"
	z := buildZtoc(b, l, nil)
	medians := map[string]time.Duration{}
	for _, mode := range []string{"idle", "prefetching"} {
		b.Run(mode, func(b *testing.B) {
			cfg := testConfig(b.TempDir(), proxy.Addr())
			cfg.Prefetch.Enabled = mode == "prefetching"
			cfg.Prefetch.Concurrency = 4
			cfg.Prefetch.BatchSize = config.ByteSize(4 << 20)
			cfg.Fetch.ReadAhead = 0
			putLocalZtoc(b, cfg.RootDir, z)
			s := openStore(b, cfg, Options{})
			defer s.closeStore()
			lv := s.mustLookup(b, ref, img.layers[0].digest)
			c, _ := lv.Content()
			i := entryIndex(b, c, "data/random.bin")
			size := c.Entries()[i].UncompressedSize
			rng := rand.New(rand.NewPCG(1, 2))
			if mode == "prefetching" {
				time.Sleep(1500 * time.Millisecond) // the prefetch is under way
			}
			var lat []time.Duration
			buf := make([]byte, 4096)
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				off := rng.Int64N(size - int64(len(buf)))
				start := time.Now()
				if _, err := c.ReadFile(context.Background(), i, buf, off); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				time.Sleep(50 * time.Millisecond) // a container doing other things
			}
			b.StopTimer()
			slices.Sort(lat)
			med := lat[len(lat)/2]
			medians[mode] = med
			b.Logf("%s: latencies %v, proxy %+v", mode, lat, proxy.Stats())
			b.ReportMetric(float64(med.Microseconds())/1000, "median-ms")
		})
	}
	if medians["idle"] > 0 && medians["prefetching"] > 0 {
		fmt.Printf("demand read median: idle %v, while prefetching %v (ratio %.2f)\n",
			medians["idle"], medians["prefetching"], float64(medians["prefetching"])/float64(medians["idle"]))
	}
}
