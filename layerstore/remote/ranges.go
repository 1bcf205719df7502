package remote

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"sort"
	"strconv"
	"strings"
)

// Range is a byte range of a blob: Length bytes from Offset.
type Range struct {
	Offset, Length int64
}

// End is the offset just past the range.
func (r Range) End() int64 { return r.Offset + r.Length }

// String renders the range as "offset+length".
func (r Range) String() string { return fmt.Sprintf("%d+%d", r.Offset, r.Length) }

// span is a merged range being fetched into buf.
type span struct {
	Range
	buf   []byte
	cover []Range // filled parts (relative to the blob), see covered
	done  bool
}

// covered reports whether the filled parts cover the whole span.
func (s *span) covered() bool {
	if s.done {
		return true
	}
	parts := append([]Range(nil), s.cover...)
	sort.Slice(parts, func(i, j int) bool { return parts[i].Offset < parts[j].Offset })
	next := s.Offset
	for _, p := range parts {
		if p.Offset > next {
			return false
		}
		next = max(next, p.End())
	}
	return next >= s.End()
}

// mergeRanges sorts ranges and merges those that overlap, touch or are at
// most gap bytes apart. Empty ranges are dropped.
func mergeRanges(ranges []Range, gap int64) []*span {
	sorted := make([]Range, 0, len(ranges))
	for _, r := range ranges {
		if r.Length > 0 {
			sorted = append(sorted, r)
		}
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
	var spans []*span
	for _, r := range sorted {
		if n := len(spans); n > 0 && r.Offset <= spans[n-1].End()+gap {
			last := spans[n-1]
			if e := r.End(); e > last.End() {
				last.Length = e - last.Offset
			}
			continue
		}
		spans = append(spans, &span{Range: r})
	}
	return spans
}

// rangeHeader renders spans as one Range header value.
func rangeHeader(spans []*span) string {
	var b strings.Builder
	b.WriteString("bytes=")
	for i, s := range spans {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d-%d", s.Offset, s.End()-1)
	}
	return b.String()
}

// parseContentRange parses "bytes first-last/total" ("*" total gives -1).
func parseContentRange(v string) (first, last, total int64, err error) {
	bad := fmt.Errorf("Content-Range %q: %w", v, ErrInvalidResponse)
	v = strings.TrimSpace(v)
	unit, rest, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return 0, 0, 0, bad
	}
	rng, tot, ok := strings.Cut(strings.TrimSpace(rest), "/")
	if !ok {
		return 0, 0, 0, bad
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if first, err = strconv.ParseInt(strings.TrimSpace(a), 10, 64); err != nil || first < 0 {
		return 0, 0, 0, bad
	}
	if last, err = strconv.ParseInt(strings.TrimSpace(b), 10, 64); err != nil || last < first {
		return 0, 0, 0, bad
	}
	total = -1
	if t := strings.TrimSpace(tot); t != "*" {
		if total, err = strconv.ParseInt(t, 10, 64); err != nil || total <= last {
			return 0, 0, 0, bad
		}
	}
	return first, last, total, nil
}

// errMultiRejected: the server refused or botched a multi-range request;
// the caller switches the host to single-range requests.
var errMultiRejected = errors.New("multi-range request rejected")

// fill copies a response part holding blob bytes [first, first+n) from r
// into the spans it intersects. It reads exactly n bytes and then expects the
// part to end.
func fill(r io.Reader, first, n int64, spans []*span) error {
	off := first
	end := first + n
	for _, s := range spans { // spans are sorted and disjoint
		if s.End() <= off || s.Offset >= end {
			continue
		}
		if s.Offset > off { // bytes between spans (coalesced by the server)
			if err := discard(r, s.Offset-off); err != nil {
				return err
			}
			off = s.Offset
		}
		stop := min(end, s.End())
		if s.buf == nil {
			s.buf = make([]byte, s.Length)
		}
		if _, err := io.ReadFull(r, s.buf[off-s.Offset:stop-s.Offset]); err != nil {
			return truncated(err)
		}
		s.cover = append(s.cover, Range{Offset: off, Length: stop - off})
		off = stop
	}
	if off < end {
		if err := discard(r, end-off); err != nil {
			return err
		}
	}
	// The part must end here.
	var one [1]byte
	switch k, err := io.ReadFull(r, one[:]); {
	case k > 0:
		return fmt.Errorf("part for bytes %d-%d is longer than announced: %w", first, end-1, ErrInvalidResponse)
	case err != io.EOF:
		return truncated(err)
	}
	return nil
}

func discard(r io.Reader, n int64) error {
	k, err := io.CopyN(io.Discard, r, n)
	if k < n {
		return truncated(err)
	}
	return nil
}

// truncated turns the error of a short read into ErrTruncated, keeping
// network errors visible.
func truncated(err error) error {
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("body ended early: %w", ErrTruncated)
	}
	return fmt.Errorf("reading body: %w (%w)", ErrTruncated, err)
}

// consumePartial copies a 206 answer (single range or multipart/byteranges)
// into spans. size is the blob size, to check the totals against.
func consumePartial(resp *http.Response, spans []*span, size int64) error {
	mediaType, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err == nil && strings.EqualFold(mediaType, "multipart/byteranges") {
		boundary := params["boundary"]
		if boundary == "" {
			return fmt.Errorf("multipart answer without boundary: %w", ErrInvalidResponse)
		}
		mr := multipart.NewReader(resp.Body, boundary)
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				if anyUncovered(spans) {
					return truncated(err)
				}
				return nil // everything arrived; ignore a broken epilogue
			}
			if err := consumePart(part.Header, part, spans, size); err != nil {
				return err
			}
		}
	}
	first, last, total, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err != nil {
		return err
	}
	if total >= 0 && total != size {
		return fmt.Errorf("Content-Range total %d, blob size %d: %w", total, size, ErrInvalidResponse)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != last-first+1 {
		return fmt.Errorf("Content-Length %d does not match Content-Range %d-%d: %w", resp.ContentLength, first, last, ErrInvalidResponse)
	}
	return fill(resp.Body, first, last-first+1, spans)
}

func consumePart(h textproto.MIMEHeader, r io.Reader, spans []*span, size int64) error {
	first, last, total, err := parseContentRange(h.Get("Content-Range"))
	if err != nil {
		return fmt.Errorf("multipart part: %w", err)
	}
	if total >= 0 && total != size {
		return fmt.Errorf("Content-Range total %d, blob size %d: %w", total, size, ErrInvalidResponse)
	}
	return fill(r, first, last-first+1, spans)
}

// consumeFull reads a 200 answer (the whole blob) sequentially, copying the
// spans' bytes and discarding the rest; it stops after the last span, so
// memory use is the size of the requested data, not of the blob.
func consumeFull(resp *http.Response, spans []*span, size int64) error {
	if resp.ContentLength >= 0 && resp.ContentLength != size {
		return fmt.Errorf("full body of %d bytes, blob size %d: %w", resp.ContentLength, size, ErrInvalidResponse)
	}
	var off int64
	for _, s := range spans {
		if s.done {
			continue
		}
		if err := discard(resp.Body, s.Offset-off); err != nil {
			return err
		}
		s.buf = make([]byte, s.Length)
		if _, err := io.ReadFull(resp.Body, s.buf); err != nil {
			return truncated(err)
		}
		s.cover = append(s.cover[:0], s.Range)
		off = s.End()
	}
	return nil
}

func anyUncovered(spans []*span) bool {
	for _, s := range spans {
		if !s.covered() {
			return true
		}
	}
	return false
}
