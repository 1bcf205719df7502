package layerstore

import (
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"

	"github.com/lazypull/lazypull/layerstore/diskcache"
	"github.com/lazypull/lazypull/ztoc"
)

// FUSE passthrough: once a layer is verified and a file's bytes are all
// here, the file is written out whole (a "backing file" beside the layer's
// spans in the span cache), and later opens hand it to the kernel, which
// then reads it without asking the daemon: warm reads at the speed of the
// local disk. Only verified layers get backing files (an open file keeps
// reading its backing file whatever happens to the layer afterwards), and
// only files of at least passthroughMin bytes (smaller ones take one FUSE
// read, then live in the page cache).
const (
	passthroughMin = 64 << 10
	// backingQueue bounds the files waiting to be written out; more are
	// dropped (asked for again at their next open).
	backingQueue = 256
)

// backingWork is a file to write out.
type backingWork struct {
	l *layer
	i int
}

// backingWriter writes backing files on one goroutine of the Store.
type backingWriter struct {
	work chan backingWork

	mu      sync.Mutex // guards pending
	pending map[backingWork]bool
}

func newBackingWriter() *backingWriter {
	return &backingWriter{work: make(chan backingWork, backingQueue), pending: make(map[backingWork]bool)}
}

// request queues file i of l (once; dropped when the queue is full).
func (b *backingWriter) request(l *layer, i int) {
	w := backingWork{l, i}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending[w] {
		return
	}
	select {
	case b.work <- w:
		b.pending[w] = true
	default:
	}
}

// run writes the files asked for until ctx ends.
func (b *backingWriter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case w := <-b.work:
			if err := w.l.writeBacking(ctx, w.i); err != nil && ctx.Err() == nil {
				w.l.log.WithError(err).WithField("file", w.l.idx.Entries()[w.i].Name).Debug("Writing the backing file failed")
			}
			b.mu.Lock()
			delete(b.pending, w)
			b.mu.Unlock()
		}
	}
}

func backingKey(group string, i int) diskcache.Key {
	return diskcache.Key{Group: group, Name: "f" + strconv.Itoa(i)}
}

// BackingFile implements alsfs.BackingFiler.
func (l *layer) BackingFile(i int) (*os.File, bool) {
	if l.backing == nil || !l.verified.Load() || l.spans.Bad() != "" {
		return nil, false
	}
	m := &l.idx.Entries()[i]
	if m.Type != ztoc.TypeReg || m.UncompressedSize < passthroughMin {
		return nil, false
	}
	k := backingKey(l.group, i)
	f, size, err := l.cache.Open(k)
	if err == nil {
		if size == m.UncompressedSize {
			return f, true
		}
		f.Close()
		_ = l.cache.Remove(k)
	} else if !errors.Is(err, diskcache.ErrNotFound) {
		return nil, false
	}
	// Written out once every span of the file is here.
	lay := l.idx.Layout()
	first, last := lay.SpanOf(m.UncompressedOffset), lay.SpanOf(m.UncompressedOffset+m.UncompressedSize-1)
	for id := first; id <= last; id++ {
		if !l.spans.Present(id) {
			return nil, false
		}
	}
	l.backing.request(l, i)
	return nil, false
}

// writeBacking writes file i out whole into the span cache.
func (l *layer) writeBacking(ctx context.Context, i int) error {
	k := backingKey(l.group, i)
	if l.cache.Has(k) {
		return nil
	}
	w, err := l.cache.Create(k)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); ; {
		n, err := l.ReadFile(ctx, i, buf, off)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				w.Abort()
				return werr
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			break
		}
		if err != nil {
			w.Abort()
			return err
		}
	}
	return w.Commit()
}
