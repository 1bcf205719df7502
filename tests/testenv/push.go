package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// ErrPush is returned (wrapped, with the HTTP status and body) when the
// registry refuses a push request.
var ErrPush = errors.New("testenv: push refused")

// ErrLayout is returned when an image layout cannot be read.
var ErrLayout = errors.New("testenv: bad image layout")

// Pusher uploads OCI image layouts to a registry over plain HTTP without
// authentication. The zero value is ready to use.
type Pusher struct {
	// Client does the requests; default http.DefaultClient.
	Client *http.Client
	// ChunkSize: blobs up to this size are uploaded with one PUT, bigger ones
	// in PATCH chunks of this size; default 64 MiB.
	ChunkSize int64
	// Concurrency is the number of blobs uploaded at once; default 3.
	Concurrency int
}

// Push uploads the image of the layout directory (its first manifest) to
// registryURL ("http://host:port" or "host:port") as repo:tag with the
// default Pusher, and returns the manifest digest.
func Push(ctx context.Context, registryURL, repo, tag, layoutDir string) (digest.Digest, error) {
	var p Pusher
	return p.Push(ctx, registryURL, repo, tag, layoutDir)
}

// layoutIndex and layoutManifest are the parts of index.json and of a
// manifest the pusher needs.
type layoutIndex struct {
	Manifests []layoutDescriptor `json:"manifests"`
}

type layoutDescriptor struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

type layoutManifest struct {
	MediaType string             `json:"mediaType"`
	Config    layoutDescriptor   `json:"config"`
	Layers    []layoutDescriptor `json:"layers"`
}

// readLayout returns the first manifest of the layout, its bytes and its
// descriptor.
func readLayout(dir string) (layoutManifest, []byte, layoutDescriptor, error) {
	var idx layoutIndex
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return layoutManifest{}, nil, layoutDescriptor{}, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	if err := json.Unmarshal(b, &idx); err != nil || len(idx.Manifests) == 0 {
		return layoutManifest{}, nil, layoutDescriptor{}, fmt.Errorf("%w: %s/index.json lists no manifest (%v)", ErrLayout, dir, err)
	}
	desc := idx.Manifests[0]
	if err := desc.Digest.Validate(); err != nil {
		return layoutManifest{}, nil, layoutDescriptor{}, fmt.Errorf("%w: manifest digest: %w", ErrLayout, err)
	}
	raw, err := os.ReadFile(blobPath(dir, desc.Digest))
	if err != nil {
		return layoutManifest{}, nil, layoutDescriptor{}, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	var m layoutManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return layoutManifest{}, nil, layoutDescriptor{}, fmt.Errorf("%w: manifest: %w", ErrLayout, err)
	}
	if m.MediaType == "" {
		m.MediaType = desc.MediaType
	}
	if desc.MediaType == "" {
		desc.MediaType = m.MediaType
	}
	for _, d := range append([]layoutDescriptor{m.Config}, m.Layers...) {
		if err := d.Digest.Validate(); err != nil {
			return layoutManifest{}, nil, layoutDescriptor{}, fmt.Errorf("%w: blob digest: %w", ErrLayout, err)
		}
	}
	return m, raw, desc, nil
}

func blobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// Push uploads the image of the layout directory (its first manifest) to
// registryURL as repo:tag (by digest only when tag is empty) and returns the
// manifest digest. Blobs the registry already has are skipped.
func (p *Pusher) Push(ctx context.Context, registryURL, repo, tag, layoutDir string) (digest.Digest, error) {
	base := strings.TrimSuffix(registryURL, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	m, raw, desc, err := readLayout(layoutDir)
	if err != nil {
		return "", err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, p.concurrency()))
	for _, d := range append([]layoutDescriptor{m.Config}, m.Layers...) {
		g.Go(func() error { return p.pushBlob(gctx, base, repo, layoutDir, d) })
	}
	if err := g.Wait(); err != nil {
		return "", err
	}
	ref := tag
	if ref == "" {
		ref = desc.Digest.String()
	}
	u := fmt.Sprintf("%s/v2/%s/manifests/%s", base, repo, ref)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(raw))
	if err != nil {
		return "", fmt.Errorf("testenv: push manifest: %w", err)
	}
	req.Header.Set("Content-Type", m.MediaType)
	if _, err := p.do(req, http.StatusCreated); err != nil {
		return "", fmt.Errorf("push manifest %s:%s: %w", repo, ref, err)
	}
	return desc.Digest, nil
}

func (p *Pusher) concurrency() int {
	if p.Concurrency == 0 {
		return 3
	}
	return p.Concurrency
}

func (p *Pusher) chunkSize() int64 {
	if p.ChunkSize == 0 {
		return 64 << 20
	}
	return p.ChunkSize
}

func (p *Pusher) client() *http.Client {
	if p.Client == nil {
		return http.DefaultClient
	}
	return p.Client
}

// do sends req and checks that the status is one of want; it returns the
// response with its body read and closed.
func (p *Pusher) do(req *http.Request, want ...int) (*http.Response, error) {
	resp, err := p.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("testenv: %s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if !slices.Contains(want, resp.StatusCode) {
		return nil, fmt.Errorf("%w: %s %s: %s: %s", ErrPush, req.Method, req.URL.Path, resp.Status, bytes.TrimSpace(body))
	}
	return resp, nil
}

// pushBlob uploads one blob unless the registry has it.
func (p *Pusher) pushBlob(ctx context.Context, base, repo, dir string, d layoutDescriptor) error {
	head, err := http.NewRequestWithContext(ctx, http.MethodHead, fmt.Sprintf("%s/v2/%s/blobs/%s", base, repo, d.Digest), nil)
	if err != nil {
		return fmt.Errorf("testenv: push blob: %w", err)
	}
	if _, err := p.do(head, http.StatusOK); err == nil {
		return nil
	}
	f, err := os.Open(blobPath(dir, d.Digest))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLayout, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLayout, err)
	}
	size := fi.Size()

	start, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/v2/%s/blobs/uploads/", base, repo), nil)
	if err != nil {
		return fmt.Errorf("testenv: push blob: %w", err)
	}
	resp, err := p.do(start, http.StatusAccepted)
	if err != nil {
		return fmt.Errorf("start upload of %s: %w", d.Digest, err)
	}
	loc, err := location(start.URL, resp)
	if err != nil {
		return err
	}
	if size > p.chunkSize() {
		for off := int64(0); off < size; {
			n := min(p.chunkSize(), size-off)
			patch, err := http.NewRequestWithContext(ctx, http.MethodPatch, loc.String(), io.NewSectionReader(f, off, n))
			if err != nil {
				return fmt.Errorf("testenv: push blob: %w", err)
			}
			patch.ContentLength = n
			patch.Header.Set("Content-Type", "application/octet-stream")
			patch.Header.Set("Content-Range", fmt.Sprintf("%d-%d", off, off+n-1))
			resp, err := p.do(patch, http.StatusAccepted, http.StatusNoContent) // go-containerregistry answers 204
			if err != nil {
				return fmt.Errorf("upload chunk at %d of %s: %w", off, d.Digest, err)
			}
			if loc, err = location(loc, resp); err != nil {
				return err
			}
			off += n
		}
	}
	q := loc.Query()
	q.Set("digest", d.Digest.String())
	loc.RawQuery = q.Encode()
	var body io.Reader = http.NoBody
	var length int64
	if size <= p.chunkSize() {
		body, length = io.NewSectionReader(f, 0, size), size
	}
	put, err := http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), body)
	if err != nil {
		return fmt.Errorf("testenv: push blob: %w", err)
	}
	put.ContentLength = length
	put.Header.Set("Content-Type", "application/octet-stream")
	if _, err := p.do(put, http.StatusCreated); err != nil {
		return fmt.Errorf("finish upload of %s: %w", d.Digest, err)
	}
	return nil
}

// location resolves the Location header of resp against the request URL.
func location(reqURL *url.URL, resp *http.Response) (*url.URL, error) {
	l := resp.Header.Get("Location")
	if l == "" {
		return nil, fmt.Errorf("%w: upload response without Location", ErrPush)
	}
	u, err := reqURL.Parse(l)
	if err != nil {
		return nil, fmt.Errorf("%w: bad Location %q: %w", ErrPush, l, err)
	}
	return u, nil
}
