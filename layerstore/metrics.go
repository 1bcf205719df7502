package layerstore

import (
	"math"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/layerstore/spans"
)

// metrics are the store's Prometheus metrics. Counters kept elsewhere (the
// registry client, the span cache) are exported by a collector that reads
// them when scraped.
type metrics struct {
	reg         *prometheus.Registry
	lookups     *prometheus.CounterVec
	built       prometheus.Counter
	shared      prometheus.Counter
	readErrors  prometheus.Counter
	readBytes   prometheus.Counter
	readLatency prometheus.Histogram
	prefetched  prometheus.Counter
	verified    *prometheus.CounterVec
	proofWait   prometheus.Histogram
}

func newMetrics(s *Store) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_lookups_total", Help: "Layer lookups by the host, by result (served, not_served).",
		}, []string{"result"}),
		built: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lazypull_layers_indexed_total", Help: "Layers indexed by this daemon.",
		}),
		shared: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lazypull_artifacts_shared_total", Help: "Artifact uploads to the shared store that succeeded.",
		}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lazypull_read_errors_total", Help: "Reads of layer files that failed.",
		}),
		readBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lazypull_read_bytes_total", Help: "Bytes of layer files read through the filesystem.",
		}),
		readLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "lazypull_read_latency_seconds",
			Help:    "Latency of reads of layer files (page-cache hits never reach the daemon).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 20),
		}),
		prefetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lazypull_prefetched_bytes_total", Help: "Compressed bytes fetched by the background prefetcher.",
		}),
		verified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_layer_verifications_total", Help: "Whole-layer verifications, by result (ok, bad).",
		}, []string{"result"}),
		proofWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "lazypull_proof_wait_seconds",
			Help:    "Time reads of a layer served from an unverified zTOC waited for the verification to prove the checkpoints of their spans.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	m.reg.MustRegister(m.lookups, m.built, m.shared, m.readErrors, m.readBytes, m.readLatency, m.prefetched, m.verified, m.proofWait,
		&storeCollector{s: s}, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeRead(d time.Duration, n int) {
	m.readLatency.Observe(d.Seconds())
	m.readBytes.Add(float64(n))
}

// Handler serves the metrics in Prometheus' text format.
func (s *Store) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}

// readStats summarizes the read latency histogram for status.
func (m *metrics) readStats() control.ReadStats {
	var out dto.Metric
	if err := m.readLatency.Write(&out); err != nil || out.Histogram == nil {
		return control.ReadStats{}
	}
	h := out.Histogram
	var errs, bytes dto.Metric
	_ = m.readErrors.Write(&errs)
	_ = m.readBytes.Write(&bytes)
	return control.ReadStats{
		Count:      int64(h.GetSampleCount()),
		Bytes:      int64(bytes.GetCounter().GetValue()),
		Errors:     int64(errs.GetCounter().GetValue()),
		LatencyP50: quantile(h, 0.5),
		LatencyP99: quantile(h, 0.99),
	}
}

// quantile estimates a quantile from histogram buckets (upper bound of the
// bucket holding it).
func quantile(h *dto.Histogram, q float64) time.Duration {
	n := h.GetSampleCount()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() >= rank {
			return time.Duration(b.GetUpperBound() * float64(time.Second))
		}
	}
	return time.Duration(math.Inf(1))
}

// storeCollector exports counters of the registry client, the span cache and
// the layers when scraped.
type storeCollector struct{ s *Store }

var (
	descRegistryBytes = prometheus.NewDesc("lazypull_registry_bytes_total", "Bytes received from registries, by kind.", []string{"kind"}, nil)
	descRegistryReqs  = prometheus.NewDesc("lazypull_registry_requests_total", "Requests sent to registries.", nil, nil)
	descRegistryRetry = prometheus.NewDesc("lazypull_registry_retries_total", "Registry requests retried.", nil, nil)
	descRegistryErrs  = prometheus.NewDesc("lazypull_registry_errors_total", "Registry operations that failed for good.", nil, nil)
	descSpanHits      = prometheus.NewDesc("lazypull_span_cache_hits_total", "Span cache reads answered from disk.", nil, nil)
	descSpanMisses    = prometheus.NewDesc("lazypull_span_cache_misses_total", "Span cache lookups not answered from disk.", nil, nil)
	descSpanBytes     = prometheus.NewDesc("lazypull_span_cache_bytes", "Bytes in the span cache.", nil, nil)
	descSpanEvict     = prometheus.NewDesc("lazypull_span_cache_evictions_total", "Spans evicted from the cache.", nil, nil)
	descLayerFetched  = prometheus.NewDesc("lazypull_layer_fetched_bytes", "Compressed bytes fetched from registries per layer.", []string{"layer"}, nil)
	descLayerCached   = prometheus.NewDesc("lazypull_layer_cached_ratio", "Share of a layer's spans here (fetch progress).", []string{"layer"}, nil)
	descFetches       = prometheus.NewDesc("lazypull_fetches_granted_total", "Range requests granted by the fetch scheduler, by priority.", []string{"priority"}, nil)
	descPreempted     = prometheus.NewDesc("lazypull_fetches_preempted_total", "Background range requests stopped to let a container's read through.", nil, nil)
	descLayers        = prometheus.NewDesc("lazypull_layers_loaded", "Layers loaded in the daemon.", nil, nil)
	descLayersFormat  = prometheus.NewDesc("lazypull_layers_loaded_by_format", "Layers loaded in the daemon, by format (gzip, tar, estargz, zstd:chunked).", []string{"format"}, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRegistryBytes, descRegistryReqs, descRegistryRetry, descRegistryErrs,
		descSpanHits, descSpanMisses, descSpanBytes, descSpanEvict, descLayerFetched, descLayerCached,
		descFetches, descPreempted, descLayers, descLayersFormat} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	rs := c.s.client.Stats()
	ch <- prometheus.MustNewConstMetric(descRegistryBytes, prometheus.CounterValue, float64(rs.ManifestBytes), "manifest")
	ch <- prometheus.MustNewConstMetric(descRegistryBytes, prometheus.CounterValue, float64(rs.BlobRangeBytes), "range")
	ch <- prometheus.MustNewConstMetric(descRegistryBytes, prometheus.CounterValue, float64(rs.BlobFullBytes), "full")
	ch <- prometheus.MustNewConstMetric(descRegistryReqs, prometheus.CounterValue, float64(rs.Requests))
	ch <- prometheus.MustNewConstMetric(descRegistryRetry, prometheus.CounterValue, float64(rs.Retries))
	ch <- prometheus.MustNewConstMetric(descRegistryErrs, prometheus.CounterValue, float64(rs.Errors))
	cs := c.s.spans.Stats()
	ch <- prometheus.MustNewConstMetric(descSpanHits, prometheus.CounterValue, float64(cs.Hits))
	ch <- prometheus.MustNewConstMetric(descSpanMisses, prometheus.CounterValue, float64(cs.Misses))
	ch <- prometheus.MustNewConstMetric(descSpanBytes, prometheus.GaugeValue, float64(cs.Bytes))
	ch <- prometheus.MustNewConstMetric(descSpanEvict, prometheus.CounterValue, float64(cs.Evictions))
	ss := c.s.sched.Stats()
	for p := spans.Verify; p <= spans.Demand; p++ {
		ch <- prometheus.MustNewConstMetric(descFetches, prometheus.CounterValue, float64(ss.Granted[p]), p.String())
	}
	ch <- prometheus.MustNewConstMetric(descPreempted, prometheus.CounterValue, float64(ss.Preempted))
	// Per-layer series exist while the layer is loaded: they go with it.
	layers := c.s.loadedLayers()
	ch <- prometheus.MustNewConstMetric(descLayers, prometheus.GaugeValue, float64(len(layers)))
	byFormat := map[string]int{formatGzip: 0, formatTar: 0, formatEstargz: 0, formatZstdChunked: 0}
	for _, l := range layers {
		byFormat[l.idx.Format()]++
	}
	for f, n := range byFormat {
		ch <- prometheus.MustNewConstMetric(descLayersFormat, prometheus.GaugeValue, float64(n), f)
	}
	for _, l := range layers {
		d := l.digest.String()
		ch <- prometheus.MustNewConstMetric(descLayerFetched, prometheus.GaugeValue, float64(l.spans.Stats().FetchedBytes), d)
		present, _ := l.spans.Counts()
		ch <- prometheus.MustNewConstMetric(descLayerCached, prometheus.GaugeValue, float64(present)/float64(max(l.spans.NumSpans(), 1)), d)
	}
}
