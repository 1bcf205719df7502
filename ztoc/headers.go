package ztoc

// This file checks zTOC entries against the tar headers of the layer: one
// entry at a time from the bytes in front of its data (CheckHeaderRun,
// CheckHeadersIn, used before an entry is served), and the comparison of an
// entry with a tar header shared with Verify and CompareTOC.

import (
	"archive/tar"
	"bytes"
	"fmt"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
)

const blockSize = 512

// diffEntry describes the first field in which z (a zTOC entry) differs
// from h (the entry as the layer's tar header gives it), or returns "".
// Every field is compared, the data offset included; PAX records compare as
// maps (nil and empty alike).
func diffEntry(z, h *FileMetadata) string {
	switch {
	case z.Name != h.Name:
		return fmt.Sprintf("name %.200q, the tar header says %.200q", z.Name, h.Name)
	case z.Type != h.Type:
		return fmt.Sprintf("type %s, the tar header says %s", z.Type, h.Type)
	case z.UncompressedOffset != h.UncompressedOffset:
		return fmt.Sprintf("data offset %d, the tar header's data is at %d", z.UncompressedOffset, h.UncompressedOffset)
	case z.UncompressedSize != h.UncompressedSize:
		return fmt.Sprintf("size %d, the tar header says %d", z.UncompressedSize, h.UncompressedSize)
	case z.Linkname != h.Linkname:
		return fmt.Sprintf("link target %.200q, the tar header says %.200q", z.Linkname, h.Linkname)
	case z.Mode != h.Mode:
		return fmt.Sprintf("mode %#o, the tar header says %#o", z.Mode, h.Mode)
	case z.UID != h.UID || z.GID != h.GID:
		return fmt.Sprintf("owner %d:%d, the tar header says %d:%d", z.UID, z.GID, h.UID, h.GID)
	case z.Uname != h.Uname || z.Gname != h.Gname:
		return fmt.Sprintf("owner names %.100q:%.100q, the tar header says %.100q:%.100q", z.Uname, z.Gname, h.Uname, h.Gname)
	case !z.ModTime.Equal(h.ModTime):
		return fmt.Sprintf("modification time %s, the tar header says %s", z.ModTime, h.ModTime)
	case z.Devmajor != h.Devmajor || z.Devminor != h.Devminor:
		return fmt.Sprintf("device %d:%d, the tar header says %d:%d", z.Devmajor, z.Devminor, h.Devmajor, h.Devminor)
	case !maps.Equal(z.PAXRecords, h.PAXRecords):
		return "PAX records (xattrs) " + diffPAX(z.PAXRecords, h.PAXRecords)
	}
	return ""
}

// diffPAX names a key whose record differs.
func diffPAX(z, h map[string]string) string {
	keys := make([]string, 0, len(z)+len(h))
	for k := range z {
		keys = append(keys, k)
	}
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		zv, zok := z[k]
		hv, hok := h[k]
		switch {
		case zok && !hok:
			return fmt.Sprintf("has %.100q, the tar header not", k)
		case !zok && hok:
			return fmt.Sprintf("lack %.100q, which the tar header has", k)
		case zv != hv:
			return fmt.Sprintf("differ in %.100q", k)
		}
	}
	return "differ"
}

// HeaderRange returns the range [start, end) of the uncompressed tar stream
// that holds every tar header block of entry i: its PAX and GNU long-name
// headers, if any, and its own header; end is the entry's data offset.
// start is where the previous entry's data ends, rounded up to 512 (0 for
// the first entry): the zTOC stores no header offsets.
func (x *LayerIndex) HeaderRange(i int) (start, end int64) {
	e := x.z.TOC.FileMetadata
	if i < 0 || i >= len(e) {
		return 0, 0
	}
	if i > 0 {
		p := &e[i-1]
		start = alignTarBlock(p.UncompressedOffset + dataLen(p))
	}
	return start, e[i].UncompressedOffset
}

// CheckHeaderRun checks entry i against the layer's tar headers in front
// of its data: run must be the uncompressed bytes HeaderRange(i) (from
// inflated spans). They must parse as the header blocks of exactly one tar
// entry whose data starts where the zTOC says, and that entry must equal
// entry i in every field: name, type, size, link target, mode, owner (ids
// and names), modification time, device numbers and PAX records (which
// carry xattrs and any override of path, size, owner or times). It works
// for every entry type; a hard link is checked against its own header. A
// difference is an error wrapping ErrHeaderMismatch.
//
// What a passing check proves, before Verify: the bytes in front of the
// entry's data, as inflated with the zTOC's checkpoints, are a tar header
// run describing the entry exactly as the zTOC does. See README.md for what
// it does not prove.
func (x *LayerIndex) CheckHeaderRun(i int, run []byte) error {
	e := x.z.TOC.FileMetadata
	if i < 0 || i >= len(e) {
		return fmt.Errorf("%w: entry %d of %d", ErrNotExist, i, len(e))
	}
	m := &e[i]
	start, end := x.HeaderRange(i)
	if int64(len(run)) != end-start {
		return fmt.Errorf("ztoc: check header of %.200q: %d bytes given, the header run is [%d, %d)", m.Name, len(run), start, end)
	}
	cr := &countReader{r: bytes.NewReader(run)}
	h, err := tar.NewReader(cr).Next()
	if err != nil {
		return fmt.Errorf("%w: %.200q: no tar header in [%d, %d) before its data: %v", ErrHeaderMismatch, m.Name, start, end, err)
	}
	if cr.n != int64(len(run)) {
		return fmt.Errorf("%w: %.200q: the tar headers in [%d, %d) end at %d, not where the zTOC puts its data",
			ErrHeaderMismatch, m.Name, start, end, start+cr.n)
	}
	got, err := metadataFromHeader(h, end)
	if err != nil {
		return fmt.Errorf("%w: %.200q: its tar header is not acceptable: %w", ErrHeaderMismatch, m.Name, err)
	}
	if d := diffEntry(m, &got); d != "" {
		return fmt.Errorf("%w: %.200q: the zTOC has %s", ErrHeaderMismatch, m.Name, d)
	}
	return nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r *bytes.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// EntriesWithHeadersIn returns the entries [first, last) whose whole header
// run (HeaderRange) lies within the uncompressed range [u0, u1).
func (x *LayerIndex) EntriesWithHeadersIn(u0, u1 int64) (first, last int) {
	e := x.z.TOC.FileMetadata
	first = sort.Search(len(e), func(i int) bool {
		s, _ := x.HeaderRange(i)
		return s >= u0
	})
	last = sort.Search(len(e), func(i int) bool { return e[i].UncompressedOffset > u1 })
	return first, max(first, last)
}

// CheckHeadersIn checks every entry whose header run lies within the
// inflated spans first, first+1, ... given in spans (each the whole
// uncompressed span, as InflateSpan returns it) and is not in checks yet,
// and records CheckHeaderRun's result in checks. A span manager calls it
// when it inflates spans, so that the metadata of the entries in them
// (directory listings, hard links, xattrs) can be served without further
// fetches.
func (x *LayerIndex) CheckHeadersIn(first SpanID, spans [][]byte, checks *HeaderChecks) {
	if len(spans) == 0 || first < 0 || int(first)+len(spans) > x.nspans {
		return
	}
	u0, _ := x.SpanUncompressedRange(first)
	for k, s := range spans {
		a, b := x.SpanUncompressedRange(first + SpanID(k))
		if int64(len(s)) != b-a {
			spans = spans[:k] // not a whole span: stop before it
			break
		}
	}
	if len(spans) == 0 {
		return
	}
	_, u1 := x.SpanUncompressedRange(first + SpanID(len(spans)-1))
	lo, hi := x.EntriesWithHeadersIn(u0, u1)
	var scratch []byte
	for i := lo; i < hi; i++ {
		if done, _ := checks.Result(i); done {
			continue
		}
		s, e := x.HeaderRange(i)
		scratch = gatherRange(x, first, spans, s, e, scratch[:0])
		checks.Record(i, x.CheckHeaderRun(i, scratch))
	}
}

// gatherRange appends the uncompressed bytes [s, e) held by the inflated
// spans first.. to dst (the range lies within them).
func gatherRange(x *LayerIndex, first SpanID, spans [][]byte, s, e int64, dst []byte) []byte {
	for k, data := range spans {
		a, _ := x.SpanUncompressedRange(first + SpanID(k))
		lo, hi := max(s-a, 0), min(e-a, int64(len(data)))
		if lo < hi {
			dst = append(dst, data[lo:hi]...)
		}
	}
	return dst
}

// HeaderChecks remembers the result of the header check of each entry of a
// layer (see CheckHeaderRun): not checked yet, matching, or the mismatch.
// Safe for concurrent use; a lookup of a matching entry takes no lock.
type HeaderChecks struct {
	ok []atomic.Uint64 // bit i: entry i checked and matching

	mu  sync.Mutex    // guards bad
	bad map[int]error // entries checked and not matching
}

// NewHeaderChecks returns the record for a layer of n entries, none checked.
func NewHeaderChecks(n int) *HeaderChecks {
	return &HeaderChecks{ok: make([]atomic.Uint64, (n+63)/64)}
}

// Result reports whether entry i was checked, and the check's error.
func (c *HeaderChecks) Result(i int) (checked bool, err error) {
	if i < 0 || i/64 >= len(c.ok) {
		return false, nil
	}
	if c.ok[i/64].Load()&(1<<(i%64)) != 0 {
		return true, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err, checked = c.bad[i]
	return checked, err
}

// Record stores the result of checking entry i. A mismatch is final: a
// later Record of success does not clear it.
func (c *HeaderChecks) Record(i int, err error) {
	if i < 0 || i/64 >= len(c.ok) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		if _, bad := c.bad[i]; !bad {
			c.ok[i/64].Or(1 << (i % 64))
		}
		return
	}
	if c.bad == nil {
		c.bad = make(map[int]error)
	}
	c.bad[i] = err
	c.ok[i/64].And(^uint64(1 << (i % 64)))
}
