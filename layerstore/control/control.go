package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Status is the daemon's state as `lazypull status` shows it.
type Status struct {
	Version    string        `json:"version"`
	Uptime     time.Duration `json:"uptime_ns"`
	MountPoint string        `json:"mount_point"`
	RootDir    string        `json:"root_dir"`

	Registry RegistryStats `json:"registry"`
	Cache    CacheStats    `json:"cache"`
	Auth     AuthStats     `json:"auth"`
	Reads    ReadStats     `json:"reads"`
	Layers   []LayerStatus `json:"layers"`
}

// RegistryStats counts traffic to registries.
type RegistryStats struct {
	Requests       int64 `json:"requests"`
	BytesFetched   int64 `json:"bytes_fetched"`
	ManifestBytes  int64 `json:"manifest_bytes"`
	RangeBytes     int64 `json:"range_bytes"`
	FullBlobBytes  int64 `json:"full_blob_bytes"`
	Retries        int64 `json:"retries"`
	Errors         int64 `json:"errors"`
	RedirectsFresh int64 `json:"redirects_resolved"`
}

// CacheStats describes the span cache, the in-memory inflated spans and the
// artifact store.
type CacheStats struct {
	SpanEntries     int   `json:"span_entries"`
	SpanBytes       int64 `json:"span_bytes"`
	SpanMaxBytes    int64 `json:"span_max_bytes"`
	SpanHits        int64 `json:"span_hits"`
	SpanMisses      int64 `json:"span_misses"`
	SpanEvictions   int64 `json:"span_evictions"`
	MemoryHits      int64 `json:"memory_hits"`
	MemoryMisses    int64 `json:"memory_misses"`
	ArtifactBlobs   int   `json:"artifact_blobs"`
	ArtifactBytes   int64 `json:"artifact_bytes"`
	ArtifactMaxSize int64 `json:"artifact_max_bytes"`
}

// AuthStats counts token work (never tokens).
type AuthStats struct {
	TokenFetches       int64 `json:"token_fetches"`
	ProactiveRefreshes int64 `json:"proactive_refreshes"`
	Unauthorized       int64 `json:"unauthorized"`
	Retries            int64 `json:"retries"`
	HandedOver         int   `json:"handed_over_refs"`
}

// ReadStats summarizes FUSE reads of layer files.
type ReadStats struct {
	Count      int64         `json:"count"`
	Bytes      int64         `json:"bytes"`
	Errors     int64         `json:"errors"`
	LatencyP50 time.Duration `json:"latency_p50_ns"`
	LatencyP99 time.Duration `json:"latency_p99_ns"`
}

// LayerStatus is one served layer.
type LayerStatus struct {
	Digest       string   `json:"digest"`
	Refs         []string `json:"refs"`
	Size         int64    `json:"size"`
	Spans        int      `json:"spans"`
	SpansCached  int      `json:"spans_cached"`
	BytesFetched int64    `json:"bytes_fetched"`
	InUse        int      `json:"in_use"`   // references held by the host (ALS use/release)
	Views        int      `json:"views"`    // layer directories the FUSE tree serves it through
	Prefetch     string   `json:"prefetch"` // "off", "waiting", "running", "done", "failed: ..."
	Verified     bool     `json:"verified"`
	// Proving is set while reads of the layer wait for the checkpoint
	// proof (an unverified gzip index from elsewhere); SpansProven spans
	// are served so far.
	Proving        bool   `json:"proving,omitempty"`
	SpansProven    int    `json:"spans_proven,omitempty"`
	Bad            string `json:"bad,omitempty"` // why the layer was marked bad
	IndexSource    string `json:"index_source"`  // "local", "shared", "registry", "built" (zTOC), "toc" (the layer's own)
	Format         string `json:"format"`        // "gzip", "tar" (through a zTOC), "estargz", "zstd:chunked" (through their own TOC)
	TOCDigest      string `json:"toc_digest,omitempty"`
	Endpoint       string `json:"endpoint"` // repository (at a mirror or the origin) that served the last read
	ReadsServed    int64  `json:"reads"`
	ReadErrors     int64  `json:"read_errors"`
	FirstMountedAt string `json:"mounted_at"`
}

// PruneRequest asks the daemon to evict cached data of layers not in use.
type PruneRequest struct {
	// SpanTarget and ArtifactTarget are the sizes to shrink to (bytes).
	SpanTarget     int64 `json:"span_target"`
	ArtifactTarget int64 `json:"artifact_target"`
}

// PruneResult reports what a prune freed.
type PruneResult struct {
	SpanBytesFreed     int64 `json:"span_bytes_freed"`
	ArtifactBytesFreed int64 `json:"artifact_bytes_freed"`
}

// Credential is one image reference's credentials handed over by podman.
type Credential struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
}

// Service is what the daemon exposes.
type Service interface {
	Status(ctx context.Context) (*Status, error)
	Prune(ctx context.Context, req PruneRequest) (*PruneResult, error)
	// Handover stores credentials by exact image reference.
	Handover(ctx context.Context, creds map[string]Credential) error
}

// Server serves a Service on a unix socket.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// maxRequestBody bounds requests (credential handovers are small).
const maxRequestBody = 1 << 20

// Listen creates the socket at path (replacing a stale one, mode 0600) and
// serves svc on it until Close.
func Listen(path string, svc Service) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control: %s: another daemon is listening", path)
	}
	_ = os.Remove(path) // stale socket of a daemon that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := svc.Status(r.Context())
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/prune", func(w http.ResponseWriter, r *http.Request) {
		var req PruneRequest
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		res, err := svc.Prune(r.Context(), req)
		reply(w, res, err)
	})
	mux.HandleFunc("POST /v1/auth", func(w http.ResponseWriter, r *http.Request) {
		var creds map[string]Credential
		if err := decode(r, &creds); err != nil {
			reply(w, nil, err)
			return
		}
		reply(w, struct{}{}, svc.Handover(r.Context(), creds))
	})
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // returns http.ErrServerClosed on Close
	}()
	return s, nil
}

// Close stops the server and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	_ = os.Remove(s.ln.Addr().String())
	return err
}

type errorBody struct {
	Error string `json:"error"`
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %w", err)
	}
	return nil
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		_ = json.NewEncoder(w).Encode(errorBody{Error: err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

// Client talks to a daemon's control socket.
type Client struct {
	path string
	hc   *http.Client
}

// ErrNoDaemon is returned when no daemon listens on the socket.
var ErrNoDaemon = errors.New("control: no lazypull daemon is running")

// NewClient returns a client of the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, fmt.Errorf("%w (socket %s: %w)", ErrNoDaemon, path, err)
		}
		return c, nil
	}}
	return &Client{path: path, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://lazypull"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		return fmt.Errorf("daemon: %s", e.Error)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
}

// Prune asks the daemon to evict cached data.
func (c *Client) Prune(ctx context.Context, req PruneRequest) (*PruneResult, error) {
	var res PruneResult
	return &res, c.do(ctx, http.MethodPost, "/v1/prune", req, &res)
}

// Handover passes credentials to the daemon.
func (c *Client) Handover(ctx context.Context, creds map[string]Credential) error {
	var out struct{}
	return c.do(ctx, http.MethodPost, "/v1/auth", creds, &out)
}
