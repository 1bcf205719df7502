package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/diskcache"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/layerstore/spans"
	"github.com/lazypull/lazypull/ztoc"
)

// windowSource is the windows blob of a native zTOC (see ztoc/native.go),
// read window by window: from the local artifact store when the blob is
// there (indexes built here), else from the span cache, else fetched (a
// range of the blob, in the shared repository or the image's own) and
// cached beside the layer's spans. Every window is checked against the
// digest the zTOC has for it before it is cached or used.
type windowSource struct {
	digest digest.Digest
	size   int64
	local  *os.File // the whole blob, or nil
	cache  *diskcache.Cache
	group  string
	// remotes hold the blob (tried in turn); each window fetched is
	// checked, so any holder will do.
	remotes []func() (spans.Source, error)
	ctx     context.Context // the store's

	mu    sync.Mutex // guards x
	x     *ztoc.LayerIndex
	fetch sync.Mutex // one remote fetch at a time per layer
	// proofPending reports whether the layer's checkpoint proof is still
	// to pass some span (set before the layer is served; nil: never): the
	// proof hands over each window it proves (keep), so Prepare fetches
	// none meanwhile.
	proofPending func() bool
}

// windowTimeout bounds the fetch of windows for one inflation.
const windowTimeout = time.Minute

var errNoWindowSource = errors.New("no source of the index's windows")

func (w *windowSource) setIndex(x *ztoc.LayerIndex) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.x = x
}

func (w *windowSource) index() *ztoc.LayerIndex {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.x
}

func (w *windowSource) key(id int) diskcache.Key {
	return diskcache.Key{Group: w.group, Name: "w" + strconv.Itoa(id)}
}

// ReadAt implements io.ReaderAt for ztoc, which reads whole windows.
func (w *windowSource) ReadAt(p []byte, off int64) (int, error) {
	if w.local != nil {
		return w.local.ReadAt(p, off)
	}
	if off%ztoc.WindowSize != 0 || len(p) != ztoc.WindowSize {
		return 0, fmt.Errorf("window read of %d bytes at %d", len(p), off)
	}
	id := int(off / ztoc.WindowSize)
	if data, err := w.cache.ReadFile(w.key(id)); err == nil && len(data) == len(p) {
		return copy(p, data), nil
	}
	got, err := w.fetchMissing([]int{id})
	if err != nil {
		return 0, err
	}
	if data, ok := got[id]; ok {
		return copy(p, data), nil
	}
	data, err := w.cache.ReadFile(w.key(id)) // fetched by another reader meanwhile
	if err != nil || len(data) != len(p) {
		return 0, fmt.Errorf("window %d: %v", id, err)
	}
	return copy(p, data), nil
}

// Prepare implements spans.Preparer: the windows of spans about to be
// fetched are fetched at the same time, so they come with their spans;
// not while the layer's proof runs, which proves them from the stream
// itself before any of those spans may inflate.
func (w *windowSource) Prepare(ids []int) {
	if w.proofPending != nil && w.proofPending() {
		return
	}
	_, _ = w.fetchMissing(ids) // a failure is the inflation's to report
}

// keep caches window id as the layer's verification proved it from the
// stream (ztoc.VerifyOptions.OnWindow), so that it is never fetched.
func (w *windowSource) keep(id int, window []byte) {
	if w.local != nil || w.cache.Has(w.key(id)) {
		return
	}
	_ = w.cache.Put(w.key(id), window) // a full cache only costs a fetch
}

// fetchMissing fetches the windows ids that are not cached yet, in one
// request, checks them, caches them and returns them.
func (w *windowSource) fetchMissing(ids []int) (map[int][]byte, error) {
	if w.local != nil || len(ids) == 0 {
		return nil, nil
	}
	x := w.index()
	if x == nil {
		return nil, errNoWindowSource
	}
	w.fetch.Lock()
	defer w.fetch.Unlock()
	var missing []int
	var ranges []remote.Range
	for _, id := range ids {
		if !w.cache.Has(w.key(id)) {
			off, n := ztoc.WindowRange(ztoc.SpanID(id))
			missing = append(missing, id)
			ranges = append(ranges, remote.Range{Offset: off, Length: n})
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(w.ctx, windowTimeout)
	defer cancel()
	var errs []error
	for _, open := range w.remotes {
		src, err := open()
		if err == nil {
			var bufs [][]byte
			if bufs, err = src.ReadRanges(ctx, ranges); err == nil {
				got := make(map[int][]byte, len(missing))
				for i, id := range missing {
					if err := x.CheckNativeWindow(ztoc.SpanID(id), bufs[i]); err != nil {
						return nil, fmt.Errorf("window %d from the registry: %w", id, err)
					}
					got[id] = bufs[i]
					// A full cache only costs a refetch.
					_ = w.cache.Put(w.key(id), bufs[i])
				}
				return got, nil
			}
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("windows %s: %w", w.digest, errNoWindowSource)
	}
	return nil, fmt.Errorf("windows %s: %w", w.digest, errors.Join(errs...))
}
