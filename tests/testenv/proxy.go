package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequestKind classifies registry requests for counting.
type RequestKind string

// The kinds of requests a CountingProxy tells apart.
const (
	KindManifest RequestKind = "manifest" // /v2/<repo>/manifests/<ref>
	KindBlob     RequestKind = "blob"     // /v2/<repo>/blobs/<digest> without Range (GET or HEAD)
	KindRange    RequestKind = "range"    // /v2/<repo>/blobs/<digest> with a Range header
	KindUpload   RequestKind = "upload"   // /v2/<repo>/blobs/uploads/...
	KindOther    RequestKind = "other"    // /v2/, tags, referrers, anything else
)

// Counts is a number of requests and the response body bytes they got.
type Counts struct {
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
}

func (c *Counts) add(o Counts) {
	c.Requests += o.Requests
	c.Bytes += o.Bytes
}

// ProxyStats are the counts of a CountingProxy since it started or was
// last Reset. A request counts when it arrives, response bytes as they are
// sent.
type ProxyStats struct {
	Total  Counts                 `json:"total"`
	ByKind map[RequestKind]Counts `json:"by_kind"`
	// ByDigest counts blob requests (KindBlob and KindRange) per digest
	// ("sha256:...").
	ByDigest map[string]Counts `json:"by_digest"`
}

// BlobBytes returns the response bytes of all blob requests, ranged or not.
func (s ProxyStats) BlobBytes() int64 {
	return s.ByKind[KindBlob].Bytes + s.ByKind[KindRange].Bytes
}

// CountingProxy is an HTTP reverse proxy on 127.0.0.1 in front of a registry
// that counts requests and response body bytes per kind of request and per
// blob. It passes the client's Host header on, so the registry's upload
// Locations point back at the proxy.
type CountingProxy struct {
	// Host is "127.0.0.1:<port>"; URL is "http://" + Host.
	Host string
	URL  string

	server *http.Server
	done   chan struct{}

	mu    sync.Mutex // guards stats
	stats ProxyStats
}

// StartCountingProxy starts a CountingProxy for target ("http://host:port")
// and closes it in t.Cleanup.
func StartCountingProxy(t testing.TB, target string) *CountingProxy {
	t.Helper()
	p, err := NewCountingProxy(target)
	if err != nil {
		t.Fatalf("StartCountingProxy: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close counting proxy: %v", err)
		}
	})
	return p
}

// NewCountingProxy starts a CountingProxy for target; the caller must Close
// it.
func NewCountingProxy(target string) (*CountingProxy, error) {
	if !strings.Contains(target, "://") {
		target = "http://" + target
	}
	tu, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("testenv: proxy target %q: %w", target, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("testenv: proxy listen: %w", err)
	}
	p := &CountingProxy{Host: l.Addr().String(), done: make(chan struct{})}
	p.URL = "http://" + p.Host
	p.Reset()
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(tu)
			r.Out.Host = r.In.Host
		},
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0), // clients going away are not news
	}
	p.server = &http.Server{Handler: p.count(rp), ReadHeaderTimeout: 30 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() {
		defer close(p.done)
		_ = p.server.Serve(l) // http.ErrServerClosed after Close
	}()
	return p, nil
}

// count wraps next and records each request when it arrives and its body
// bytes as they are written, so that the counts are complete by the time a
// client has received a response.
func (p *CountingProxy) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind, dgst := classify(r)
		p.record(kind, dgst, Counts{Requests: 1})
		next.ServeHTTP(&countingWriter{ResponseWriter: w, record: func(n int64) {
			p.record(kind, dgst, Counts{Bytes: n})
		}}, r)
	})
}

// record adds c to the total, to kind and, if dgst is set, to the blob.
func (p *CountingProxy) record(kind RequestKind, dgst string, c Counts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.Total.add(c)
	k := p.stats.ByKind[kind]
	k.add(c)
	p.stats.ByKind[kind] = k
	if dgst != "" {
		d := p.stats.ByDigest[dgst]
		d.add(c)
		p.stats.ByDigest[dgst] = d
	}
}

// classify returns the kind of r and, for blob reads, the blob digest.
func classify(r *http.Request) (RequestKind, string) {
	path := r.URL.Path
	switch {
	case strings.Contains(path, "/blobs/uploads"):
		return KindUpload, ""
	case strings.Contains(path, "/manifests/"):
		return KindManifest, ""
	case strings.Contains(path, "/blobs/"):
		dgst := path[strings.LastIndex(path, "/")+1:]
		if r.Header.Get("Range") != "" {
			return KindRange, dgst
		}
		return KindBlob, dgst
	}
	return KindOther, ""
}

// countingWriter reports the body bytes written through it: before they are
// written (so a client never sees bytes that are not counted yet), with a
// correction when a write falls short.
type countingWriter struct {
	http.ResponseWriter
	record func(n int64)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.record(int64(len(b)))
	n, err := w.ResponseWriter.Write(b)
	if n < len(b) {
		w.record(int64(n - len(b)))
	}
	return n, err
}

// Flush passes flushes on so that streamed bodies are not held back.
func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Stats returns a copy of the counts.
func (p *CountingProxy) Stats() ProxyStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := ProxyStats{Total: p.stats.Total,
		ByKind:   make(map[RequestKind]Counts, len(p.stats.ByKind)),
		ByDigest: make(map[string]Counts, len(p.stats.ByDigest))}
	for k, v := range p.stats.ByKind {
		s.ByKind[k] = v
	}
	for k, v := range p.stats.ByDigest {
		s.ByDigest[k] = v
	}
	return s
}

// Reset sets every count to zero.
func (p *CountingProxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats = ProxyStats{ByKind: make(map[RequestKind]Counts), ByDigest: make(map[string]Counts)}
}

// Close stops the proxy, waiting up to five seconds for requests in flight.
func (p *CountingProxy) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := p.server.Shutdown(ctx)
	if err != nil {
		p.server.Close()
	}
	<-p.done
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("testenv: close counting proxy: %w", err)
	}
	return nil
}
