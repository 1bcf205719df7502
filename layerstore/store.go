package layerstore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"

	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/artifact"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/layerstore/spancache"
	"github.com/lazypull/lazypull/ztoc"
)

// Options are the parts of a Store that are not configuration.
type Options struct {
	// Version is reported in status and the registry User-Agent.
	Version string
	// Log receives the store's log; default: logrus' standard logger.
	Log *logrus.Entry
	// Auth authorizes registry requests (authbridge in the daemon); default
	// anonymous.
	Auth remote.AuthFunc
	// AuthStats reports token statistics for status; optional.
	AuthStats func() control.AuthStats
	// Handover receives credentials handed over by podman; optional.
	Handover func(ctx context.Context, creds map[string]control.Credential) error
	// Transport replaces the registry client's base transport (tests).
	Transport http.RoundTripper
	// OnClose, when set, runs last in Close (e.g. closing the credential
	// manager behind Auth).
	OnClose func() error
}

// Store is the layer store: it resolves images, finds or builds zTOCs and
// serves layers. It implements alsfs.Resolver and control.Service.
type Store struct {
	cfg     config.Config
	opts    Options
	log     *logrus.Entry
	client  *remote.Client
	spans   *spancache.Cache
	local   *artifact.Local
	shared  artifact.Backend // nil when no shared repository is configured
	sharedN reference.Named
	// memSpans holds inflated spans for all layers.
	memSpans *ztoc.SpanCache
	metrics  *metrics
	prefetch *prefetcher
	// demand counts on-demand span fetches in flight (prefetch yields);
	// lastDemand is when the last one started (unix nanoseconds).
	demand     atomic.Int64
	lastDemand atomic.Int64
	started    time.Time
	// buildSem bounds layers indexed at the same time.
	buildSem chan struct{}

	// ctx is canceled by Close; wg tracks the goroutines the store owns,
	// started through background (bgMu guards closing: no new goroutine
	// once Close waits for them).
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	bgMu    sync.Mutex
	closing bool

	imageSF, layerSF, indexSF singleflight.Group

	mu sync.Mutex // guards the fields below
	// layers are the layers served, by compressed digest.
	layers          map[digest.Digest]*layer
	images          map[string]*imageEntry
	registryIndexes map[string]*registryIndexEntry
	building        map[digest.Digest]bool // background builds in progress
}

var (
	_ alsfs.Resolver  = (*Store)(nil)
	_ control.Service = (*Store)(nil)
)

// New opens the store's state under cfg.RootDir.
func New(cfg config.Config, opts Options) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if opts.Auth == nil {
		opts.Auth = remote.AnonymousAuthFunc
	}
	fsSize, err := fsBytes(cfg.RootDir)
	if err != nil {
		return nil, err
	}
	spans, err := spancache.Open(filepath.Join(cfg.RootDir, "spans"), cfg.Cache.SpanCacheSize.Resolve(fsSize))
	if err != nil {
		return nil, err
	}
	local, err := artifact.OpenLocal(filepath.Join(cfg.RootDir, "artifacts"), cfg.Cache.ArtifactCacheSize.Resolve(fsSize))
	if err != nil {
		return nil, err
	}
	client, err := remote.NewClient(remote.Options{
		Version:                opts.Version,
		Auth:                   opts.Auth,
		Log:                    opts.Log.WithField("component", "registry"),
		InsecureRegistries:     cfg.Registry.Insecure,
		RegistriesConf:         cfg.Registry.RegistriesConf,
		RegistriesConfDir:      registriesConfDir(cfg.Registry.RegistriesConf),
		SystemRegistriesConf:   true, // podman's, when registries_conf is ""
		CertsDir:               cfg.Registry.CertsDir,
		MirrorFirstByteTimeout: time.Duration(cfg.Registry.MirrorFirstByteTimeout),
		MirrorWarmup:           time.Duration(cfg.Registry.MirrorWarmup),
		Transport:              opts.Transport,
		RequestTimeout:         time.Duration(cfg.Registry.RequestTimeout),
		MaxAttempts:            cfg.Registry.MaxRetries + 1,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg:             cfg,
		opts:            opts,
		log:             opts.Log,
		client:          client,
		spans:           spans,
		local:           local,
		memSpans:        ztoc.NewSpanCache(int64(cfg.Cache.MemorySpans) * int64(cfg.Index.SpanSize)),
		started:         time.Now(),
		buildSem:        make(chan struct{}, cfg.Index.Parallel),
		ctx:             ctx,
		cancel:          cancel,
		layers:          make(map[digest.Digest]*layer),
		images:          make(map[string]*imageEntry),
		registryIndexes: make(map[string]*registryIndexEntry),
		building:        make(map[digest.Digest]bool),
	}
	if repo := cfg.Artifacts.SharedRepository; repo != "" {
		named, err := reference.ParseNormalizedNamed(repo)
		if err != nil {
			client.Close()
			cancel()
			return nil, fmt.Errorf("artifacts.shared_repository %q: %w", repo, err)
		}
		s.sharedN = reference.TrimNamed(named)
		s.shared = artifact.NewRegistry(client, s.sharedN)
	}
	s.metrics = newMetrics(s)
	s.prefetch = newPrefetcher(s)
	return s, nil
}

// registriesConfDir is the drop-in directory of registries_conf ("" for
// podman's default).
func registriesConfDir(p string) string {
	if p == "" {
		return ""
	}
	return p + ".d"
}

func fsBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("root_dir %s: %w", dir, err)
	}
	return int64(st.Blocks) * st.Bsize, nil
}

// Close stops background work and releases the store's resources. The FUSE
// mount must be gone first.
func (s *Store) Close() error {
	s.bgMu.Lock()
	s.closing = true
	s.bgMu.Unlock()
	s.cancel()
	s.prefetch.close()
	s.wg.Wait()
	s.mu.Lock()
	for _, l := range s.layers {
		l.file.Close()
	}
	s.layers = map[digest.Digest]*layer{}
	s.mu.Unlock()
	err := s.client.Close()
	if s.opts.OnClose != nil {
		err = errors.Join(err, s.opts.OnClose())
	}
	return err
}

// background runs fn on a goroutine the store owns: its context ends, and
// Close waits for it, when the store closes.
func (s *Store) background(fn func(ctx context.Context)) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.closing {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn(s.ctx)
	}()
}

// Client returns the registry client (for `lazypull index`).
func (s *Store) Client() *remote.Client { return s.client }

// Use implements alsfs.Resolver.
func (s *Store) Use(ref string, dgst digest.Digest) {
	if l := s.knownLayer(dgst); l != nil {
		l.use()
	}
}

// Release implements alsfs.Resolver.
func (s *Store) Release(ref string, dgst digest.Digest) {
	if l := s.knownLayer(dgst); l != nil {
		l.release()
	}
}

// dropLayer forgets a layer found bad: its index and cached spans go, so a
// later lookup starts from scratch; reads of the old object keep failing.
// The layer stays listed (status shows why it is bad) until a lookup
// replaces it.
func (s *Store) dropLayer(l *layer) {
	s.prefetch.remove(l)
	s.memSpans.Drop(l.x)
	if err := s.spans.RemoveLayer(l.digest); err != nil {
		l.log.WithError(err).Warn("Dropping cached spans")
	}
	s.forgetZtoc(l.digest, l.ztocDigest)
}

// Prune implements control.Service: it evicts cached spans and artifacts of
// layers not in use down to the given sizes.
func (s *Store) Prune(_ context.Context, req control.PruneRequest) (*control.PruneResult, error) {
	if req.SpanTarget < 0 || req.ArtifactTarget < 0 {
		return nil, errors.New("prune targets must not be negative")
	}
	freed := s.local.Prune(req.ArtifactTarget)
	return &control.PruneResult{SpanBytesFreed: s.spans.Prune(req.SpanTarget), ArtifactBytesFreed: freed}, nil
}

// Handover implements control.Service.
func (s *Store) Handover(ctx context.Context, creds map[string]control.Credential) error {
	if s.opts.Handover == nil {
		return errors.New("this daemon does not accept credentials")
	}
	return s.opts.Handover(ctx, creds)
}

// Status implements control.Service.
func (s *Store) Status(context.Context) (*control.Status, error) {
	rs := s.client.Stats()
	cs := s.spans.Stats()
	mh, mm := s.memSpans.Stats()
	as := s.local.Stats()
	nblobs, ablobs := as.Entries, as.Bytes
	st := &control.Status{
		Version:    s.opts.Version,
		Uptime:     time.Since(s.started).Round(time.Second),
		MountPoint: s.cfg.MountPoint,
		RootDir:    s.cfg.RootDir,
		Registry: control.RegistryStats{
			Requests:       rs.Requests,
			BytesFetched:   rs.ManifestBytes + rs.BlobRangeBytes + rs.BlobFullBytes,
			ManifestBytes:  rs.ManifestBytes,
			RangeBytes:     rs.BlobRangeBytes,
			FullBlobBytes:  rs.BlobFullBytes,
			Retries:        rs.Retries,
			Errors:         rs.Errors,
			RedirectsFresh: rs.Redirects,
		},
		Cache: control.CacheStats{
			SpanEntries: cs.Entries, SpanBytes: cs.Bytes, SpanMaxBytes: cs.MaxBytes,
			SpanHits: cs.Hits, SpanMisses: cs.Misses, SpanEvictions: cs.Evictions,
			MemoryHits: mh, MemoryMisses: mm,
			ArtifactBlobs: nblobs, ArtifactBytes: ablobs, ArtifactMaxSize: s.local.Max(),
		},
		Reads: s.metrics.readStats(),
	}
	if s.opts.AuthStats != nil {
		st.Auth = s.opts.AuthStats()
	}
	s.mu.Lock()
	layers := make([]*layer, 0, len(s.layers))
	for _, l := range s.layers {
		layers = append(layers, l)
	}
	s.mu.Unlock()
	for _, l := range layers {
		st.Layers = append(st.Layers, l.status())
	}
	return st, nil
}

// servedBy names the registry endpoint that served the layer's last read,
// from its most recently used source that has served one.
func servedBy(blobs []blobSource) string {
	for i := len(blobs) - 1; i >= 0; i-- {
		if b, ok := blobs[i].(interface{ ServedBy() string }); ok && b.ServedBy() != "" {
			return b.ServedBy()
		}
	}
	return ""
}

func (l *layer) status() control.LayerStatus {
	n, _ := l.s.spans.LayerBytes(l.digest)
	l.mu.Lock()
	refs := make([]string, len(l.refs))
	for i, r := range l.refs {
		refs[i] = r.String()
	}
	ls := control.LayerStatus{
		Digest:         l.digest.String(),
		Refs:           refs,
		Size:           l.size,
		Spans:          l.x.NumSpans(),
		SpansCached:    n,
		BytesFetched:   l.src.fetchedBytes.Load(),
		InUse:          l.uses,
		Prefetch:       l.pf.String(),
		Verified:       l.verified.Load(),
		IndexSource:    l.source,
		Endpoint:       servedBy(l.blobs),
		ReadsServed:    l.reads.Load(),
		ReadErrors:     l.readErrors.Load(),
		FirstMountedAt: l.mounted.UTC().Format(time.RFC3339),
	}
	l.mu.Unlock()
	if r := l.bad.Load(); r != nil {
		ls.Bad = *r
	}
	return ls
}
