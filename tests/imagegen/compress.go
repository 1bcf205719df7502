package imagegen

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// gzipLevel is the compression level of every gzip layer (the usual default).
const gzipLevel = 6

// newCompressor returns a writer that compresses into w as c says. Close
// flushes everything but does not close w.
func newCompressor(c Compression, w io.Writer, o *Options) (io.WriteCloser, error) {
	switch c {
	case Uncompressed:
		return nopCloser{w}, nil
	case Gzip:
		zw, err := gzip.NewWriterLevel(w, gzipLevel)
		if err != nil {
			return nil, fmt.Errorf("imagegen: gzip writer: %w", err)
		}
		zw.ModTime = time.Unix(0, 0) // MTIME 0: no time in the header
		return zw, nil
	case GzipParallel:
		zw, err := pgzip.NewWriterLevel(w, gzipLevel)
		if err != nil {
			return nil, fmt.Errorf("imagegen: pgzip writer: %w", err)
		}
		zw.ModTime = time.Unix(0, 0)
		if err := zw.SetConcurrency(o.gzipBlockSize(), 2*runtime.GOMAXPROCS(0)); err != nil {
			return nil, fmt.Errorf("imagegen: pgzip writer: %w", err)
		}
		return zw, nil
	case GzipMultiMember:
		return newMemberWriter(w, o.memberSize(), runtime.GOMAXPROCS(0)), nil
	case Zstd:
		zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("imagegen: zstd writer: %w", err)
		}
		return zw, nil
	}
	return nil, fmt.Errorf("%w: unknown compression %q", ErrInvalidOptions, c)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// memberWriter cuts the stream into pieces of size bytes and writes each as
// its own gzip member. Pieces are compressed by up to workers goroutines at a
// time and written in order, so the output depends on the input and size
// only.
type memberWriter struct {
	w      io.Writer
	size   int
	buf    []byte
	pieces int // pieces submitted

	queue chan chan memberResult // pieces in order; capacity bounds the work in flight
	done  chan struct{}          // closed when the writing goroutine has finished
	wg    sync.WaitGroup         // compressing goroutines

	mu  sync.Mutex // guards err
	err error
}

type memberResult struct {
	data []byte
	err  error
}

func newMemberWriter(w io.Writer, size, workers int) *memberWriter {
	m := &memberWriter{
		w:     w,
		size:  size,
		buf:   make([]byte, 0, size),
		queue: make(chan chan memberResult, max(1, workers)),
		done:  make(chan struct{}),
	}
	go m.writeLoop()
	return m
}

// writeLoop writes finished members in order; after the first error it only
// drains the queue.
func (m *memberWriter) writeLoop() {
	defer close(m.done)
	for ch := range m.queue {
		r := <-ch
		if m.failed() != nil {
			continue
		}
		if r.err == nil {
			_, r.err = m.w.Write(r.data)
		}
		if r.err != nil {
			m.setErr(r.err)
		}
	}
}

func (m *memberWriter) failed() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

func (m *memberWriter) setErr(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil {
		m.err = err
	}
}

// Write buffers p and hands every full piece to a compressing goroutine.
func (m *memberWriter) Write(p []byte) (int, error) {
	if err := m.failed(); err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), m.size-len(m.buf))
		m.buf = append(m.buf, p[:k]...)
		p = p[k:]
		if len(m.buf) == m.size {
			m.submit()
		}
	}
	return n, nil
}

func (m *memberWriter) submit() {
	piece := m.buf
	m.buf = make([]byte, 0, m.size)
	m.pieces++
	ch := make(chan memberResult, 1)
	m.queue <- ch // blocks while `workers` pieces are in flight
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ch <- compressMember(piece)
	}()
}

func compressMember(piece []byte) memberResult {
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzipLevel)
	if err != nil {
		return memberResult{err: fmt.Errorf("imagegen: gzip member: %w", err)}
	}
	zw.ModTime = time.Unix(0, 0)
	if _, err := zw.Write(piece); err != nil {
		return memberResult{err: fmt.Errorf("imagegen: gzip member: %w", err)}
	}
	if err := zw.Close(); err != nil {
		return memberResult{err: fmt.Errorf("imagegen: gzip member: %w", err)}
	}
	return memberResult{data: out.Bytes()}
}

// Close compresses the last piece (an empty stream still gets one member),
// waits for every goroutine and returns the first error.
func (m *memberWriter) Close() error {
	if len(m.buf) > 0 || m.pieces == 0 {
		m.submit()
	}
	close(m.queue)
	<-m.done
	m.wg.Wait()
	return m.failed()
}
