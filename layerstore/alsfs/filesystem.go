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

	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// filesystem is the state shared by all nodes of one mount.
type filesystem struct {
	resolver Resolver
	opts     Options
	created  time.Time // mtime of the root and of ref directories

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
	// refs maps an image ref to the inode number of its directory. It
	// keeps every ref name ever looked up (a few dozen bytes each), so
	// that a ref directory keeps its inode number.
	refs    map[string]uint64
	views   map[viewKey]*layerView
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
	*layerData
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
		ctx:      ctx,
		cancel:   cancel,
		refs:     make(map[string]uint64),
		views:    make(map[viewKey]*layerView),
		pending:  make(map[viewKey]*resolveCall),
	}
	f.lastIno.Store(1)
	return f
}

// allocIno reserves n consecutive inode numbers and returns the first.
func (f *filesystem) allocIno(n uint64) uint64 {
	return f.lastIno.Add(n) - n + 1
}

// close stops lookups in progress and waits for them.
func (f *filesystem) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.cancel()
	f.wg.Wait()
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
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, lookupErrno(ErrClosed)
	}
	if v := f.views[key]; v != nil {
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
	return call.view, 0
}

func (f *filesystem) resolve(key viewKey, call *resolveCall) {
	defer f.wg.Done()
	data, err := f.load(key)
	f.mu.Lock()
	delete(f.pending, key)
	if err == nil {
		v := &layerView{
			key:       key,
			ino:       f.allocIno(diffInoOffset + uint64(len(data.tree.inodes))),
			created:   time.Now(),
			layerData: data,
		}
		f.views[key] = v
		call.view = v
	} else {
		call.err = err
	}
	f.mu.Unlock()

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
// that nothing can fail after the lookup succeeded.
func (f *filesystem) load(key viewKey) (*layerData, error) {
	if key.ref == "" {
		// <mnt>/<digest>: serve a layer already resolved through a ref.
		f.mu.Lock()
		for k, v := range f.views {
			if k.digest == key.digest {
				f.mu.Unlock()
				return v.layerData, nil
			}
		}
		f.mu.Unlock()
	}
	layer, err := f.resolver.Lookup(f.ctx, key.ref, key.digest)
	if err != nil {
		return nil, fmt.Errorf("look up layer %s of %q: %w", key.digest, key.ref, err)
	}
	if layer == nil {
		return nil, fmt.Errorf("look up layer %s of %q: resolver returned no layer", key.digest, key.ref)
	}
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

// evict forgets the view for key; the next lookup resolves it again.
func (f *filesystem) evict(key viewKey) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.views[key]
	delete(f.views, key)
	return ok
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
