package alsfs

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// filesystem is the state shared by all nodes of one mount.
type filesystem struct {
	resolver Resolver
	opts     Options
	created  time.Time // mtime of the root and of ref directories
	owner    owner     // of the directories and files made up

	// ctx is canceled on unmount; it bounds every Resolver.Lookup.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts resolve goroutines.
	wg sync.WaitGroup

	// lastIno is the last inode number handed out (1 is the root). Inode
	// numbers are never reused.
	lastIno atomic.Uint64

	// mu guards the fields below.
	mu     sync.Mutex
	closed bool
	// refs maps an image ref to the inode number of its directory, while
	// it has layer directories (a ref directory keeps its number as long).
	refs map[string]uint64
	// views are the layer directories served now; evicted ones the kernel
	// still holds live on in zombies until it forgets them.
	views   map[viewKey]*layerView
	zombies map[*layerView]struct{}
	pending map[viewKey]*resolveCall
}

// viewKey names a layer directory: ref is "" for <mnt>/<digest>.
type viewKey struct {
	ref    string
	digest digest.Digest
}

// resolveCall is a lookup in progress; done is closed when view or err is
// set.
type resolveCall struct {
	done chan struct{}
	view *layerView
	err  error
}

// layerData is what a layer directory serves; views of the same layer
// through different paths share it.
type layerData struct {
	info     []byte
	blob     io.ReaderAt
	blobSize int64
	content  LayerContent
	tree     *tree
}

// layerView is one layer directory. Its inode numbers: ino for the
// directory, ino+1 for info, ino+2 for blob, ino+3+k for inode k of the
// diff tree (the diff directory is k = 0).
type layerView struct {
	key     viewKey
	ino     uint64
	created time.Time
	owner   owner
	layer   Layer
	*layerData

	// Guarded by filesystem.mu.
	// kernelRef is set while the kernel holds the layer directory's inode
	// (from a lookup to the FORGET that drops it).
	kernelRef bool
	// evicted is set once the view left filesystem.views.
	evicted bool
	// released is set once layer.Release was called.
	released   bool
	lastLookup time.Time
	// inode is the layer directory's node while the kernel holds it.
	inode *fs.Inode
}

const (
	infoInoOffset = 1
	blobInoOffset = 2
	diffInoOffset = 3
)

func (v *layerView) diffIno(k int32) uint64 { return v.ino + diffInoOffset + uint64(k) }

func newFilesystem(r Resolver, opts Options) *filesystem {
	ctx, cancel := context.WithCancel(context.Background())
	f := &filesystem{
		resolver: r,
		opts:     opts.withDefaults(),
		created:  time.Now(),
		owner:    processOwner(),
		ctx:      ctx,
		cancel:   cancel,
		refs:     make(map[string]uint64),
		views:    make(map[viewKey]*layerView),
		zombies:  make(map[*layerView]struct{}),
		pending:  make(map[viewKey]*resolveCall),
	}
	f.lastIno.Store(1)
	return f
}

// allocIno reserves n consecutive inode numbers and returns the first.
func (f *filesystem) allocIno(n uint64) uint64 {
	return f.lastIno.Add(n) - n + 1
}

// close stops lookups in progress, waits for them, and releases every
// layer served.
func (f *filesystem) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	var rel []*layerView
	for k, v := range f.views {
		delete(f.views, k)
		v.evicted = true
		rel = append(rel, v)
	}
	for v := range f.zombies {
		delete(f.zombies, v)
		rel = append(rel, v)
	}
	for _, v := range rel {
		v.released = true
	}
	f.mu.Unlock()
	for _, v := range rel {
		v.layer.Release()
	}
}

// refIno returns the inode number of the directory of ref.
func (f *filesystem) refIno(ref string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	ino, ok := f.refs[ref]
	if !ok {
		ino = f.allocIno(1)
		f.refs[ref] = ino
	}
	return ino
}

// view returns the layer directory for key, resolving it if needed.
// Concurrent calls for one key share one resolution, so they return the
// same view. Interrupts are ignored: the kernel abandons the request by
// itself if the caller gets a fatal signal, while an EINTR would reach
// programs that do not retry stat(2) (and Go programs, whose runtime
// signals its threads, would retry in a loop).
func (f *filesystem) view(key viewKey) (*layerView, syscall.Errno) {
	for {
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return nil, lookupErrno(ErrClosed)
		}
		if v := f.views[key]; v != nil {
			if ra, ok := f.resolver.(Reauthorizer); ok && key.ref != "" {
				f.mu.Unlock()
				if !f.reauthorize(ra, v) {
					return nil, syscall.ENOENT
				}
				f.mu.Lock()
				if v.evicted {
					f.mu.Unlock()
					continue
				}
			}
			v.kernelRef, v.lastLookup = true, time.Now()
			f.mu.Unlock()
			return v, 0
		}
		call := f.pending[key]
		if call == nil {
			call = &resolveCall{done: make(chan struct{})}
			f.pending[key] = call
			f.wg.Add(1)
			go f.resolve(key, call)
		}
		f.mu.Unlock()

		<-call.done
		if call.err != nil {
			return nil, lookupErrno(call.err)
		}
		f.mu.Lock()
		if v := call.view; !v.evicted {
			v.kernelRef, v.lastLookup = true, time.Now()
			f.mu.Unlock()
			return v, 0
		}
		f.mu.Unlock()
		// Evicted before this lookup got it: resolve it anew.
	}
}

// reauthorize asks ra whether the layer directory of v may still be
// served; when not, v is evicted (released once the kernel forgets it) and
// reauthorize reports false.
func (f *filesystem) reauthorize(ra Reauthorizer, v *layerView) bool {
	err := ra.Reauthorize(f.ctx, v.key.ref, v.key.digest)
	if err == nil {
		return true
	}
	f.evict(func(x *layerView) bool { return x == v })
	if f.opts.Log != nil {
		f.opts.Log.WithFields(logrus.Fields{"ref": v.key.ref, "layer": v.key.digest}).WithError(err).
			Info("Layer directory no longer authorized; evicted")
	}
	return false
}

func (f *filesystem) resolve(key viewKey, call *resolveCall) {
	defer f.wg.Done()
	layer, data, err := f.load(key)
	f.mu.Lock()
	delete(f.pending, key)
	closed := f.closed
	if err == nil && !closed {
		v := &layerView{
			key:        key,
			ino:        f.allocIno(diffInoOffset + uint64(len(data.tree.inodes))),
			created:    time.Now(),
			owner:      f.owner,
			layer:      layer,
			layerData:  data,
			lastLookup: time.Now(),
		}
		f.views[key] = v
		call.view = v
	} else if err == nil {
		err = ErrClosed
	}
	call.err = err
	f.mu.Unlock()
	if closed && layer != nil {
		layer.Release()
	}

	if err != nil && f.opts.Log != nil {
		log := f.opts.Log.WithFields(logrus.Fields{"ref": key.ref, "layer": key.digest}).WithError(err)
		if errors.Is(err, ErrInvalidLayer) {
			log.Warn("Refusing to serve layer lazily; it will be pulled normally")
		} else {
			log.Debug("Layer lookup failed")
		}
	}
	close(call.done)
}

// load resolves key and checks everything the layer directory serves, so
// that nothing can fail after the lookup succeeded. A layer it returns is
// released by the caller or, once served, when its view is dropped.
func (f *filesystem) load(key viewKey) (Layer, *layerData, error) {
	layer, err := f.resolver.Lookup(f.ctx, key.ref, key.digest)
	if err != nil {
		return nil, nil, fmt.Errorf("look up layer %s of %q: %w", key.digest, key.ref, err)
	}
	if layer == nil {
		return nil, nil, fmt.Errorf("look up layer %s of %q: resolver returned no layer", key.digest, key.ref)
	}
	data, err := f.check(key, layer)
	if err != nil {
		layer.Release()
		return nil, nil, err
	}
	return layer, data, nil
}

// check gets what layer serves and checks it.
func (f *filesystem) check(key viewKey, layer Layer) (*layerData, error) {
	info, err := layer.Info()
	if err != nil {
		return nil, fmt.Errorf("info of layer %s: %w", key.digest, err)
	}
	if err := checkInfo(info); err != nil {
		return nil, fmt.Errorf("info of layer %s: %w", key.digest, err)
	}
	blob, blobSize := layer.Blob()
	if blob == nil || blobSize < 0 {
		return nil, fmt.Errorf("blob of layer %s: no reader (size %d)", key.digest, blobSize)
	}
	content, err := layer.Content()
	if err != nil {
		return nil, fmt.Errorf("content of layer %s: %w", key.digest, err)
	}
	if content == nil {
		return nil, fmt.Errorf("content of layer %s: resolver returned no content", key.digest)
	}
	t, err := buildTree(content.Entries(), f.opts.OpaqueXattrs)
	if err != nil {
		return nil, fmt.Errorf("diff of layer %s: %w", key.digest, err)
	}
	return &layerData{info: info, blob: blob, blobSize: blobSize, content: content, tree: t}, nil
}

// checkInfo rejects `info` contents the host could not decode into its
// Layer struct (a failure there aborts the whole pull).
func checkInfo(info []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(info, &m); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	return nil
}

// evict forgets the views whose keys match; the next lookup resolves them
// again. A view the kernel does not hold is released at once, the others
// when the kernel forgets them. It returns the keys evicted.
func (f *filesystem) evict(match func(*layerView) bool) []viewKey {
	f.mu.Lock()
	var keys []viewKey
	var rel []*layerView
	for k, v := range f.views {
		if !match(v) {
			continue
		}
		delete(f.views, k)
		keys = append(keys, k)
		v.evicted = true
		if v.kernelRef {
			f.zombies[v] = struct{}{}
		} else {
			v.released = true
			rel = append(rel, v)
		}
	}
	f.dropRefsLocked()
	f.mu.Unlock()
	for _, v := range rel {
		v.layer.Release()
	}
	return keys
}

// setInode records the node of view v's directory.
func (f *filesystem) setInode(v *layerView, in *fs.Inode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v.inode = in
}

// zombieInodes returns the directory nodes of evicted views the kernel
// still holds.
func (f *filesystem) zombieInodes() []*fs.Inode {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*fs.Inode
	for v := range f.zombies {
		if v.inode != nil {
			out = append(out, v.inode)
		}
	}
	return out
}

// forget is the kernel dropping its last reference to view v's directory.
func (f *filesystem) forget(v *layerView) {
	f.mu.Lock()
	v.kernelRef = false
	v.inode = nil
	release := v.evicted && !v.released
	if release {
		v.released = true
		delete(f.zombies, v)
	}
	f.mu.Unlock()
	if release {
		v.layer.Release()
	}
}

// dropRefsLocked forgets the ref directories without layer directories.
func (f *filesystem) dropRefsLocked() {
	used := make(map[string]bool, len(f.views))
	for k := range f.views {
		used[k.ref] = true
	}
	for ref := range f.refs {
		if !used[ref] {
			delete(f.refs, ref)
		}
	}
}

// rootEntries lists the root directory: ref directories and layer
// directories without a ref, sorted by name.
func (f *filesystem) rootEntries() []fuse.DirEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	var entries []fuse.DirEntry
	for ref, ino := range f.refs {
		entries = append(entries, fuse.DirEntry{Name: encodeRef(ref), Ino: ino, Mode: syscall.S_IFDIR})
	}
	for k, v := range f.views {
		if k.ref == "" {
			entries = append(entries, fuse.DirEntry{Name: k.digest.String(), Ino: v.ino, Mode: syscall.S_IFDIR})
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries
}

// refViews lists the layer directories under ref.
func (f *filesystem) refViews(ref string) []*layerView {
	f.mu.Lock()
	defer f.mu.Unlock()
	var vs []*layerView
	for k, v := range f.views {
		if k.ref == ref {
			vs = append(vs, v)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].key.digest < vs[j].key.digest })
	return vs
}

// encodeRef is the directory name of an image ref (containers/storage's
// getAdditionalLayerPath).
func encodeRef(ref string) string {
	return base64.StdEncoding.EncodeToString([]byte(ref))
}

// decodeRef parses a ref directory name. Refs are printable text.
func decodeRef(name string) (string, bool) {
	b, err := base64.StdEncoding.Strict().DecodeString(name)
	if err != nil || len(b) == 0 || !utf8.Valid(b) || encodeRef(string(b)) != name {
		return "", false
	}
	ref := string(b)
	if strings.ContainsFunc(ref, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
		return "", false
	}
	return ref, true
}

// parseDigest parses a layer directory name; only the canonical spelling
// of a valid digest is accepted.
func parseDigest(name string) (digest.Digest, bool) {
	d, err := digest.Parse(name)
	if err != nil || d.String() != name {
		return "", false
	}
	return d, true
}
