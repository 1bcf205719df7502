package layerstore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
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
	"github.com/lazypull/lazypull/layerstore/diskcache"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/layerstore/spans"
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
	// HasCredentials reports whether the daemon reads ref's image with
	// credentials (not a public image); nil means never.
	HasCredentials func(ref reference.Named) bool
	// SharedReadTimeout bounds the shared repository's part of a lookup
	// (and each read from it); default 10s. After 3 failures in a row the
	// repository is skipped for 30s (artifact.Breaker).
	SharedReadTimeout time.Duration
	// CredentialID identifies, without revealing it, the credential ref is
	// read with right now (authbridge.Manager.CredentialID). A resolved
	// image, and a layer directory served for it, are reused only under the
	// same ID: after a logout or a login as someone else, access is proved
	// again with the registry. nil: anonymous access only, never changes.
	CredentialID func(ref reference.Named) (string, error)
}

// Lifetimes of what the daemon keeps in memory (not configuration).
const (
	// layerIdleTTL is how long a layer nobody uses (no host reference, no
	// directory in the FUSE tree) stays loaded.
	layerIdleTTL = 10 * time.Minute
	// viewIdleTTL is how long the FUSE tree keeps a layer directory nobody
	// looked up; then the kernel is asked to forget it, and a later lookup
	// resolves (and authorizes) it again.
	viewIdleTTL = 10 * time.Minute
	// sweepInterval is how often the store sweeps what expired.
	sweepInterval = time.Minute
)

// viewEvicter is the FUSE tree's side of taking back what was served
// (alsfs.Server implements it).
type viewEvicter interface {
	// EvictLayer drops every layer directory of layer d.
	EvictLayer(d digest.Digest) int
	// EvictIdle drops layer directories not looked up for idle.
	EvictIdle(idle time.Duration) int
	// EvictRefs drops every layer directory under the image references
	// match accepts.
	EvictRefs(match func(ref string) bool) int
}

// Store is the layer store: it resolves images, finds or builds zTOCs and
// serves layers. It implements alsfs.Resolver and control.Service.
type Store struct {
	cfg      config.Config
	opts     Options
	lock     *rootLock // held on root_dir until Close
	log      *logrus.Entry
	client   *remote.Client
	spans    *diskcache.Cache
	local    *artifact.Local
	shared   artifact.Backend // nil when no shared repository is configured
	sharedN  reference.Named
	sched    *spans.Scheduler
	metrics  *metrics
	fill     *filler
	prof     *profiles
	backing  *backingWriter // nil without fuse.passthrough
	started  time.Time
	buildSem chan struct{} // bounds layers indexed at the same time

	// sharedReg is the shared repository itself (shared wraps it in an
	// artifact.Breaker); nil without one.
	sharedReg *artifact.Registry

	// ctx is canceled by Close; wg tracks the goroutines the store owns,
	// started through background (bgMu guards closing: no new goroutine
	// once Close waits for them).
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	bgMu    sync.Mutex
	closing bool

	imageSF, layerSF, indexSF singleflight.Group

	evictMu sync.Mutex  // guards evicter
	evicter viewEvicter // set by Serve once mounted

	mu sync.Mutex // guards the fields below
	// layers are the layers loaded, by compressed digest and, for a layer
	// whose index is not trusted, the repository it serves.
	layers map[layerKey]*layer
	images map[string]*imageEntry
	// authorized maps an image reference to the CredentialID with which
	// the registry last granted access to it (Reauthorize).
	authorized      map[string]string
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
	lock, err := lockRootDir(cfg.RootDir)
	if err != nil {
		return nil, err
	}
	s, err := newLocked(cfg, opts, lock)
	if err != nil {
		lock.release()
		return nil, err
	}
	return s, nil
}

// newLocked is New once root_dir is locked (by the caller, who releases
// the lock when this fails).
func newLocked(cfg config.Config, opts Options, lock *rootLock) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if opts.Auth == nil {
		opts.Auth = remote.AnonymousAuthFunc
	}
	return open(cfg, opts, lock)
}

// open opens the store's state once root_dir is locked.
func open(cfg config.Config, opts Options, lock *rootLock) (*Store, error) {
	fsSize, err := fsBytes(cfg.RootDir)
	if err != nil {
		return nil, err
	}
	// The span cache before diskcache: spans are fetched again.
	_ = os.RemoveAll(filepath.Join(cfg.RootDir, "spans"))
	spanCache, err := diskcache.Open(filepath.Join(cfg.RootDir, "spancache"), cfg.Cache.SpanCacheSize.Resolve(fsSize))
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
		cfg:    cfg,
		opts:   opts,
		lock:   lock,
		log:    opts.Log,
		client: client,
		spans:  spanCache,
		local:  local,
		sched: spans.NewScheduler(spans.SchedulerOptions{
			MaxActive:     cfg.Fetch.Concurrency,
			MaxBackground: cfg.Prefetch.Concurrency,
			Bandwidth:     int64(cfg.Prefetch.Bandwidth),
			Burst:         int64(cfg.Prefetch.BatchSize),
		}),
		started:         time.Now(),
		buildSem:        make(chan struct{}, cfg.Index.Parallel),
		ctx:             ctx,
		cancel:          cancel,
		layers:          make(map[layerKey]*layer),
		images:          make(map[string]*imageEntry),
		authorized:      make(map[string]string),
		registryIndexes: make(map[string]*registryIndexEntry),
		building:        make(map[digest.Digest]bool),
		prof:            newProfiles(),
	}
	if repo := cfg.Artifacts.SharedRepository; repo != "" {
		named, err := reference.ParseNormalizedNamed(repo)
		if err != nil {
			client.Close()
			cancel()
			return nil, fmt.Errorf("artifacts.shared_repository %q: %w", repo, err)
		}
		s.sharedN = reference.TrimNamed(named)
		s.sharedReg = artifact.NewRegistry(client, s.sharedN)
		// A lookup never waits long on the shared repository: each read
		// has a deadline, and after a few failures in a row it is skipped
		// for a while (the lookup falls back to the image's registry).
		s.shared = artifact.NewBreaker(s.sharedReg, artifact.BreakerOptions{ReadTimeout: s.sharedTimeout()})
	}
	s.metrics = newMetrics(s)
	s.fill = newFiller(fillerConfig{
		prefetch:    cfg.Prefetch.Enabled,
		verifyAll:   cfg.Verify.Enabled,
		concurrency: cfg.Prefetch.Concurrency,
		batchSize:   int64(cfg.Prefetch.BatchSize),
		ensureFresh: client.EnsureFresh,
		idle:        s.sched.WaitIdle,
		budget:      s.sched.BackgroundBudget,
		verify:      s.verifyLayer,
		metrics:     s.metrics,
		log:         s.log.WithField("component", "prefetch"),
	})
	if cfg.FUSE.Passthrough {
		s.backing = newBackingWriter()
		s.background(s.backing.run)
	}
	s.background(s.sweepLoop)
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

// sharedTimeout bounds the shared repository's part of a lookup.
func (s *Store) sharedTimeout() time.Duration {
	if s.opts.SharedReadTimeout > 0 {
		return s.opts.SharedReadTimeout
	}
	return 10 * time.Second
}

// Close stops background work and releases the store's resources. The FUSE
// mount must be gone first.
func (s *Store) Close() error {
	s.bgMu.Lock()
	s.closing = true
	s.bgMu.Unlock()
	s.cancel()
	s.fill.close()
	s.wg.Wait()
	s.mu.Lock()
	layers := s.layers
	s.layers = map[layerKey]*layer{}
	s.mu.Unlock()
	for _, l := range layers {
		l.close()
	}
	s.sched.Close()
	err := s.client.Close()
	if s.opts.OnClose != nil {
		err = errors.Join(err, s.opts.OnClose())
	}
	s.lock.release()
	return err
}

// background runs fn on a goroutine the store owns: its context ends, and
// Close waits for it, when the store closes.
// It reports whether fn was started (not when the store closes).
func (s *Store) background(fn func(ctx context.Context)) bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn(s.ctx)
	}()
	return true
}

// Client returns the registry client (for `lazypull index`).
func (s *Store) Client() *remote.Client { return s.client }

// setEvicter connects the FUSE tree (Serve does, once mounted).
func (s *Store) setEvicter(e viewEvicter) {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	s.evicter = e
}

func (s *Store) evicterOf() viewEvicter {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	return s.evicter
}

// Use implements alsfs.Resolver.
func (s *Store) Use(ref string, dgst digest.Digest) {
	if l := s.findLayer(dgst, refScope(ref)); l != nil {
		l.use(s)
	}
}

// Release implements alsfs.Resolver.
func (s *Store) Release(ref string, dgst digest.Digest) {
	if l := s.findLayer(dgst, refScope(ref)); l != nil {
		l.release(s)
	}
}

// promote makes the index of a layer verified in full trusted: its
// mapping becomes the layer's for every image (and is shared when
// artifacts.share allows), and the layer serves every repository.
func (s *Store) promote(l *layer) {
	if l.ztocDigest == "" {
		return // a layer with its own TOC: nothing to record or share
	}
	key := artifact.LayerKey(l.digest, int64(s.cfg.Index.SpanSize))
	if zi, ok := l.idx.(*ztocIndex); ok && zi.windows != nil && zi.windows.local == nil {
		// A native zTOC whose windows come from a registry: recorded as
		// trusted, it would be opened after a restart as one built here,
		// whose windows must be local, and refused. It stays the
		// repository's (found again through its scoped mapping, windows
		// from the registry, verified again).
		l.log.Debug("Verified index keeps its repository scope: its windows are not stored here")
	} else if err := s.local.WriteRef(s.ctx, artifact.LayerRef, key, l.ztocDigest); err != nil {
		l.log.WithError(err).Warn("Recording the verified index")
	}
	s.mu.Lock()
	if l.scope != "" && s.layers[layerKey{l.digest, l.scope}] == l && s.layers[layerKey{l.digest, ""}] == nil {
		delete(s.layers, layerKey{l.digest, l.scope})
		l.scope = ""
		s.layers[layerKey{l.digest, ""}] = l
	}
	s.mu.Unlock()
	if ref := l.latestRef(); s.mayShare(ref) {
		zd := l.ztocDigest
		s.share(func(ctx context.Context) error { return s.putShared(ctx, key, zd) })
	}
}

// mayShare reports whether indexes of ref's image may go to the shared
// repository (artifacts.share): "all", "none", or "public", images this
// daemon reads without credentials.
func (s *Store) mayShare(ref reference.Named) bool {
	if s.shared == nil {
		return false
	}
	switch s.cfg.Artifacts.Share {
	case "all":
		return true
	case "public":
		return s.opts.HasCredentials == nil || !s.opts.HasCredentials(ref)
	}
	return false
}

// limits are the bounds on what comes from outside (zTOCs, SOCI indexes,
// layers indexed here).
func (s *Store) limits() ztoc.Limits {
	return ztoc.Limits{
		MaxZtocSize: int64(s.cfg.Index.MaxZtocSize),
		MaxEntries:  s.cfg.Index.MaxEntries,
		MaxSpanSize: int64(s.cfg.Index.MaxSpanSize),
	}
}

// use and release count the host's references (ALS `use` and rmdir); while
// there are any, the layer's spans and zTOC are kept from eviction.
func (l *layer) use(s *Store) {
	l.mu.Lock()
	l.uses++
	first := l.uses == 1
	l.mu.Unlock()
	if first {
		s.spans.Pin(l.group)
		for _, d := range l.artifacts() {
			s.local.Pin(d)
		}
	}
}

func (l *layer) release(s *Store) {
	l.mu.Lock()
	if l.uses == 0 {
		l.mu.Unlock()
		return
	}
	l.uses--
	last := l.uses == 0
	if last && l.views == 0 {
		l.idleSince = time.Now()
	}
	l.mu.Unlock()
	if last {
		s.spans.Unpin(l.group)
		for _, d := range l.artifacts() {
			s.local.Unpin(d)
		}
	}
}

// artifacts are the artifacts the layer's index is made of in the local
// store (kept from eviction while the host uses the layer): a zTOC and the
// windows of a native one; none for a layer with its own TOC.
func (l *layer) artifacts() []digest.Digest {
	z, ok := l.idx.(*ztocIndex)
	if !ok {
		return nil
	}
	out := []digest.Digest{l.ztocDigest}
	if wd, _, ok := z.x.NativeWindows(); ok {
		out = append(out, wd)
	}
	return out
}

// newView returns the layer as seen through one reference, counting a view
// until the FUSE tree releases it. note, when set, is told the spans the
// view's reads touch.
func (l *layer) newView(id layerIdentity, note func(first, last int)) (*layerView, error) {
	if err := l.badErr(); err != nil {
		return nil, err
	}
	info, err := infoJSON(l, id)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.views++
	l.mu.Unlock()
	return &layerView{l: l, info: info, content: viewContent{layer: l, note: note}, release: func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.views--
		if l.views == 0 && l.uses == 0 {
			l.idleSince = time.Now()
		}
	}}, nil
}

// idleFor reports how long nobody has used or viewed the layer (0 while
// somebody does).
func (l *layer) idleFor(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.uses > 0 || l.views > 0 {
		return 0
	}
	return now.Sub(l.idleSince)
}

// close stops the layer's span manager and closes its index.
func (l *layer) close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.mu.Unlock()
	l.spans.Close()
	_ = l.idx.Close()
}

// markBad takes a layer out of service: every later read fails with EIO,
// the FUSE tree forgets its directories (the next lookup starts afresh),
// and the artifacts and spans that described it are dropped. The layer stays
// listed (status shows why it is bad) until a lookup replaces it or it is
// swept.
func (s *Store) markBad(l *layer, reason string) {
	l.spans.MarkBad(reason) // the manager may have done so itself
	if !l.dropped.CompareAndSwap(false, true) {
		return
	}
	reason = l.spans.Bad()
	l.log.WithField("reason", reason).Error("Layer failed verification: reads fail from now on, its index and cached spans are dropped")
	s.metrics.verified.WithLabelValues("bad").Inc()
	s.fill.remove(l)
	if err := s.spans.RemoveGroup(l.group); err != nil {
		l.log.WithError(err).Warn("Dropping cached spans")
	}
	if l.ztocDigest != "" {
		s.forgetZtoc(l.digest, l.ztocDigest)
	}
	// Not from here: markBad may run inside a FUSE read, and the FUSE tree
	// must not notify the kernel from a request handler.
	s.background(func(context.Context) {
		if e := s.evicterOf(); e != nil {
			e.EvictLayer(l.digest)
			if l.tocDigest != "" {
				e.EvictLayer(l.tocDigest) // the directories podman 5 looked up
			}
		}
	})
}

// sweepLoop drops, every sweepInterval, what nobody needs any more: layers
// idle for layerIdleTTL (their span managers and zTOCs), resolved images
// and registry index answers past their TTL, and FUSE layer directories
// not looked up for viewIdleTTL.
func (s *Store) sweepLoop(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sweep(time.Now(), layerIdleTTL, viewIdleTTL)
		}
	}
}

// sweep does one round of sweepLoop; it returns the number of layers
// dropped.
func (s *Store) sweep(now time.Time, layerTTL, viewTTL time.Duration) int {
	if e := s.evicterOf(); e != nil {
		e.EvictIdle(viewTTL)
	}
	var drop []*layer
	s.mu.Lock()
	for k, l := range s.layers {
		if idle := l.idleFor(now); idle > 0 && idle >= layerTTL {
			delete(s.layers, k)
			drop = append(drop, l)
		}
	}
	for k, e := range s.images {
		if now.After(e.expires) {
			delete(s.images, k)
		}
	}
	for k, e := range s.registryIndexes {
		if now.After(e.expires) {
			delete(s.registryIndexes, k)
		}
	}
	s.mu.Unlock()
	s.prof.sweep(now, time.Duration(s.cfg.Registry.ResolveCacheTTL))
	for _, l := range drop {
		s.fill.remove(l)
		l.close()
		l.log.Debug("Unloaded idle layer")
	}
	return len(drop)
}

// Prune implements control.Service: it evicts cached spans and artifacts of
// layers not in use down to the given sizes.
func (s *Store) Prune(_ context.Context, req control.PruneRequest) (*control.PruneResult, error) {
	if req.SpanTarget < 0 || req.ArtifactTarget < 0 {
		return nil, errors.New("prune targets must not be negative")
	}
	return &control.PruneResult{SpanBytesFreed: s.spans.Prune(req.SpanTarget), ArtifactBytesFreed: s.local.Prune(req.ArtifactTarget)}, nil
}

// Handover implements control.Service.
func (s *Store) Handover(ctx context.Context, creds map[string]control.Credential) error {
	if s.opts.Handover == nil {
		return errors.New("this daemon does not accept credentials")
	}
	if err := s.opts.Handover(ctx, creds); err != nil {
		return err
	}
	// Credentials withdrawn (podman read the image anonymously, e.g. after
	// a logout): what was served with them goes at once, and the next
	// lookup proves access again.
	for name, c := range creds {
		if c != (control.Credential{}) {
			continue
		}
		ref, err := reference.ParseNormalizedNamed(name)
		if err != nil {
			continue
		}
		s.forgetAuthorization(ref.String())
		if e := s.evicterOf(); e != nil {
			n := e.EvictRefs(func(r string) bool { return sameRef(r, ref) })
			s.log.WithFields(logrus.Fields{"ref": ref.String(), "evicted": n}).Info("Credentials withdrawn: layer directories of the image evicted")
		}
	}
	return nil
}

func readAhead(b config.ByteSize) int64 {
	if b == 0 {
		return -1
	}
	return int64(b)
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

// newLayer assembles a layer around an opened index, with its span manager.
func (s *Store) newLayer(p layerParts, log *logrus.Entry) *layer {
	l := &layer{
		digest:     p.desc.Digest,
		size:       p.desc.Size,
		mediaType:  p.desc.MediaType,
		diffID:     p.desc.DiffID,
		ztocDigest: p.ztocDigest,
		tocDigest:  p.tocDigest,
		source:     p.source,
		idx:        p.idx,
		indexID:    p.indexID,
		group:      spanGroup(p.desc.Digest, p.indexID),
		mounted:    time.Now(),
		log:        log,
		metrics:    s.metrics,
		cache:      s.spans,
		backing:    s.backing,
	}
	if _, ok := p.idx.(*ztocIndex); ok {
		l.checks = ztoc.NewHeaderChecks(len(p.idx.Entries()))
	}
	l.onBad = func(reason string) { s.markBad(l, reason) }
	l.verifyNow = func(ctx context.Context) error { return s.verifyShared(ctx, l, spans.Demand) }
	l.startProof = func(id int) *verifyRun { return s.proveUpTo(l, id) }
	if z, ok := p.idx.(*ztocIndex); ok && z.hasWindows() && p.prove {
		// Cleared in effect once verified: see proof.go.
		l.proof.needed = true
	}
	l.spans = spans.New(spans.Options{
		Layout:    p.idx.Layout(),
		Sources:   l.sources,
		Cache:     s.spans,
		Group:     l.group,
		Scheduler: s.sched,
		OnBad:     l.onBad,
		Log:       log,
		// 0 in the configuration disables read-ahead; spans.Options
		// takes a negative value for that.
		ReadAheadBytes: readAhead(s.cfg.Fetch.ReadAhead),
	})
	return l
}
