package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"sync/atomic"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"
)

// Blob reads byte ranges of one blob of a repository. Create it with
// Client.Blob; it is safe for concurrent use and cheap, since everything
// worth keeping (redirect locations, range capabilities, credentials) lives
// in the Client.
type Blob struct {
	c      *Client
	repo   reference.Named
	digest digest.Digest
	size   int64
	// served is the endpoint that served the last read.
	served atomic.Pointer[endpoint]
}

// Blob returns a reader for the blob dgst of size bytes in repo. repo is
// the image reference the blob belongs to (tag or digest included): it
// decides, through registries.conf, which mirrors may serve the blob, as
// the image's pull-from-mirror settings do for podman.
func (c *Client) Blob(repo reference.Named, dgst digest.Digest, size int64) (*Blob, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("blob %q: %w", dgst, ErrUnsupported)
	}
	if size < 0 {
		return nil, fmt.Errorf("blob %s: negative size %d: %w", dgst, size, ErrInvalidRange)
	}
	return &Blob{c: c, repo: repo, digest: dgst, size: size}, nil
}

// Digest is the blob's digest.
func (b *Blob) Digest() digest.Digest { return b.digest }

// Size is the blob's size in bytes.
func (b *Blob) Size() int64 { return b.size }

// ServedBy names the endpoint that served the last read, as the repository
// there (e.g. "mirror.example.com:5000/library/alpine"); "" before any.
func (b *Blob) ServedBy() string {
	if ep := b.served.Load(); ep != nil {
		return ep.name()
	}
	return ""
}

func (b *Blob) setServedBy(ep *endpoint) {
	if b.served.Load() != ep {
		b.served.Store(ep)
	}
}

// RejectLastRead tells the Blob that bytes it returned did not verify (the
// caller checks them against an index): if a mirror served the last read,
// it is left out for this blob (Options.MirrorSkipTTL), so that the next
// reads come from the next endpoint. Bytes from the primary location are
// the registry's word; nothing changes then.
func (b *Blob) RejectLastRead() {
	ep := b.served.Load()
	if ep == nil || !ep.mirror {
		return
	}
	b.c.markFailed(ep, b.digest.String(), ErrDigestMismatch)
	b.c.stats.mirrorFallbacks.Add(1)
	b.c.log.WithFields(logrus.Fields{"mirror": ep.name(), "digest": b.digest.String(), "left_out_for": b.c.opts.MirrorSkipTTL.String() + " for this object"}).
		Warn("Registry mirror served bytes that do not match the layer's index, skipping it for this blob")
}

// ReadRanges returns the bytes of each range, in the order given.
//
// Overlapping and adjacent ranges (and, with Options.RangeMergeGap, nearby
// ones) are merged first; the merged ranges go out as multi-range requests
// of up to MaxRangesPerRequest ranges, up to MaxParallelRequests at a time.
// Registries that reject multi-range requests (416, 400, incomplete
// multipart answers, or 200) are remembered and get single-range requests
// from then on. A registry that ignores ranges altogether (200 with the
// whole blob) gets one request covering all the ranges, whose body is
// streamed and dropped outside the ranges: memory stays at the size of the
// requested data, but the transfer can be up to the whole blob.
//
// The returned slices may share memory where ranges overlap; do not modify
// them.
func (b *Blob) ReadRanges(ctx context.Context, ranges []Range) ([][]byte, error) {
	for _, r := range ranges {
		if r.Offset < 0 || r.Length < 0 || r.End() > b.size {
			return nil, fmt.Errorf("read %s of %s (size %d): %w", r, b.digest, b.size, ErrInvalidRange)
		}
	}
	spans := mergeRanges(ranges, b.c.opts.RangeMergeGap)
	if len(spans) > 0 {
		if err := b.fetch(ctx, spans); err != nil {
			return nil, fmt.Errorf("read ranges of %s in %s: %w", b.digest, b.repo.Name(), err)
		}
	}
	out := make([][]byte, len(ranges))
	for i, r := range ranges {
		if r.Length == 0 {
			out[i] = []byte{}
			continue
		}
		j := sort.Search(len(spans), func(k int) bool { return spans[k].Offset > r.Offset }) - 1
		s := spans[j]
		lo, hi := r.Offset-s.Offset, r.End()-s.Offset
		out[i] = s.buf[lo:hi:hi]
	}
	return out, nil
}

// ReaderAt returns an io.ReaderAt over the blob whose reads use ctx. Each
// ReadAt is one range request: buffer small sequential reads.
func (b *Blob) ReaderAt(ctx context.Context) io.ReaderAt { return blobReaderAt{b: b, ctx: ctx} }

type blobReaderAt struct {
	b   *Blob
	ctx context.Context
}

func (r blobReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at %d: %w", off, ErrInvalidRange)
	}
	if off >= r.b.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.b.size-off)
	data, err := r.b.ReadRanges(r.ctx, []Range{{Offset: off, Length: n}})
	if err != nil {
		return 0, err
	}
	copy(p, data[0])
	if int(n) < len(p) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// rangeCaps is what a registry host has shown about range requests.
type rangeCaps struct {
	noMulti atomic.Bool // multi-range requests are rejected or ignored
	ignored atomic.Bool // single ranges are answered with the whole blob
}

func (c *Client) capsFor(host string) *rangeCaps {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc, ok := c.caps[host]
	if !ok {
		rc = &rangeCaps{}
		c.caps[host] = rc
	}
	return rc
}

// fetch fills every span, with retries; each attempt asks the endpoints in
// turn (mirrors first).
func (b *Blob) fetch(ctx context.Context, spans []*span) error {
	return b.c.retry(ctx, func(int) error {
		return b.c.onEndpoints(ctx, b.repo, pullActions, b.digest.String(), "blob ranges", func(ctx context.Context, rc *repoClient) error {
			caps := b.c.capsFor(rc.host)
			for {
				var pending []*span
				for _, s := range spans {
					if !s.done {
						s.cover = s.cover[:0]
						pending = append(pending, s)
					}
				}
				if len(pending) == 0 {
					b.setServedBy(rc.ep)
					return nil
				}
				err := b.fetchPending(ctx, rc, caps, pending)
				if errors.Is(err, errMultiRejected) {
					if !caps.noMulti.Swap(true) {
						b.c.stats.multiFallbacks.Add(1)
					}
					continue // again, with single ranges
				}
				if err != nil {
					return err
				}
			}
		})
	})
}

// fetchPending issues the requests for one attempt.
func (b *Blob) fetchPending(ctx context.Context, rc *repoClient, caps *rangeCaps, pending []*span) error {
	type request struct {
		spans  []*span
		header string
		multi  bool
	}
	var reqs []request
	switch {
	case caps.ignored.Load():
		// One range covering everything: if ranges are still ignored this
		// streams the blob once; if they now work it wastes only the gaps.
		first, last := pending[0], pending[len(pending)-1]
		hdr := fmt.Sprintf("bytes=%d-%d", first.Offset, last.End()-1)
		reqs = append(reqs, request{spans: pending, header: hdr})
	case caps.noMulti.Load() || len(pending) == 1:
		for _, s := range pending {
			reqs = append(reqs, request{spans: []*span{s}, header: rangeHeader([]*span{s})})
		}
	default:
		for i := 0; i < len(pending); i += b.c.opts.MaxRangesPerRequest {
			group := pending[i:min(i+b.c.opts.MaxRangesPerRequest, len(pending))]
			reqs = append(reqs, request{spans: group, header: rangeHeader(group), multi: len(group) > 1})
		}
	}
	if len(reqs) == 1 {
		return b.fetchOne(ctx, rc, caps, reqs[0].spans, reqs[0].header, reqs[0].multi)
	}
	// Every request runs to its end (no cancellation of siblings), so the
	// spans that did arrive are kept for the next attempt.
	var g errgroup.Group
	g.SetLimit(b.c.opts.MaxParallelRequests)
	errs := make([]error, len(reqs))
	for i, r := range reqs {
		g.Go(func() error {
			errs[i] = b.fetchOne(ctx, rc, caps, r.spans, r.header, r.multi)
			return nil
		})
	}
	_ = g.Wait()
	for _, err := range errs { // errMultiRejected first: it is no failure
		if errors.Is(err, errMultiRejected) {
			return err
		}
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// fetchOne sends one (possibly multi-) range request and copies the answer
// into spans.
func (b *Blob) fetchOne(ctx context.Context, rc *repoClient, caps *rangeCaps, spans []*span, header string, multi bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wd := startWatchdog(rc.firstByte, b.c.opts.IdleTimeout, cancel)
	defer wd.stop()
	resp, err := b.get(ctx, rc, header)
	if err != nil {
		return wd.check(err)
	}
	wd.kick() // the answer has begun: from now on, IdleTimeout
	defer resp.Body.Close()
	resp.Body = kickingBody{ReadCloser: resp.Body, w: wd}
	wholeAsked := len(spans) == 1 && spans[0].Offset == 0 && spans[0].Length == b.size
	switch resp.StatusCode {
	case http.StatusPartialContent:
		caps.ignored.Store(false)
		if rc.ep.mirror {
			b.c.rangesServed(rc.ep, b.digest)
		}
		resp.Body = countBody(resp.Body, &b.c.stats.rangeBytes)
		err = consumePartial(resp, spans, b.size)
		if err == nil && anyUncovered(spans) {
			err = fmt.Errorf("206 answer to %s does not cover it: %w", header, ErrInvalidResponse)
		}
	case http.StatusOK:
		if !rc.last && !wholeAsked && !b.c.wholeBlobAllowed(rc.ep, b.digest) {
			// A mirror that does not serve ranges: the next endpoint does.
			return fmt.Errorf("GET %s with Range %s: %w", redactURL(resp.Request.URL), header, errRangesIgnored)
		}
		switch {
		case multi:
			caps.noMulti.Store(true)
		case wholeAsked:
			// A 200 for a range covering the whole blob proves nothing.
		default:
			caps.ignored.Store(true)
		}
		resp.Body = countBody(resp.Body, &b.c.stats.fullBytes)
		err = consumeFull(resp, spans, b.size)
	case http.StatusRequestedRangeNotSatisfiable, http.StatusBadRequest:
		if multi {
			return errMultiRejected
		}
		return responseError(resp)
	default:
		return responseError(resp)
	}
	// Keep what arrived complete, even when the answer broke later.
	for _, s := range spans {
		if s.covered() {
			s.done = true
		}
	}
	if multi && errors.Is(err, ErrInvalidResponse) {
		// A botched multi-range answer: single ranges may fare better.
		return errMultiRejected
	}
	return wd.check(err)
}

// get sends a GET for the blob to rc's endpoint with the given Range header
// (may be empty), through a cached redirect location when there is a fresh
// one.
func (b *Blob) get(ctx context.Context, rc *repoClient, rangeValue string) (*http.Response, error) {
	header := http.Header{}
	if rangeValue != "" {
		header.Set("Range", rangeValue)
	}
	key := rc.host + "/" + rc.name + "@" + b.digest.String()
	loc, state := b.c.location(key)
	if state == locationFresh {
		resp, _, err := rc.do(ctx, http.MethodGet, loc, header)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden:
			// Most likely the signed URL expired: ask the registry again.
			_ = resp.Body.Close()
			b.c.dropLocation(key)
			state = locationExpired
		default:
			return resp, nil
		}
	}
	resp, redirected, err := rc.do(ctx, http.MethodGet, rc.url("blobs/"+b.digest.String(), nil), header)
	if err != nil {
		return nil, err
	}
	if redirected {
		// Cached whatever the storage host answered: a 400 may be a refused
		// multi-range request, and a rejected URL is re-resolved next time.
		b.c.storeLocation(key, resp.Request.URL)
		b.c.stats.redirects.Add(1)
		if state == locationExpired {
			b.c.stats.reResolves.Add(1)
		}
	}
	return resp, nil
}

// location is a cached redirect target of a blob.
type location struct {
	url *url.URL
	at  time.Time
}

type locationState int

const (
	locationNone locationState = iota
	locationFresh
	locationExpired
)

func (c *Client) location(key string) (*url.URL, locationState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.locations[key]
	switch {
	case !ok:
		return nil, locationNone
	case c.opts.Clock.Now().Sub(l.at) >= c.opts.RedirectTTL:
		return nil, locationExpired
	}
	return l.url, locationFresh
}

// maxLocations triggers a sweep of expired locations.
const maxLocations = 4096

func (c *Client) storeLocation(key string, u *url.URL) {
	now := c.opts.Clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.locations) >= maxLocations {
		for k, l := range c.locations {
			if now.Sub(l.at) >= c.opts.RedirectTTL {
				delete(c.locations, k)
			}
		}
	}
	c.locations[key] = location{url: u, at: now}
}

func (c *Client) dropLocation(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.locations, key)
}

// countBody counts the bytes read from rc into n.
func countBody(rc io.ReadCloser, n *atomic.Int64) io.ReadCloser {
	return &countingBody{ReadCloser: rc, n: n}
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	k, err := c.ReadCloser.Read(p)
	c.n.Add(int64(k))
	return k, err
}
