package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// permanent marks an error that must not be retried.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// sendBody sends a request with a body (nil for none) of size bytes; no
// redirects are followed. Bodies of known replayable types (bytes.Reader)
// can be replayed by the Auth after a 401.
func (r *repoClient) sendBody(ctx context.Context, method string, u *url.URL, header http.Header, body io.Reader, size int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, redactURL(u), err)
	}
	if body != nil && req.Body != http.NoBody {
		req.Body = countBody(req.Body, &r.c.stats.pushBytes)
		if getBody := req.GetBody; getBody != nil {
			req.GetBody = func() (io.ReadCloser, error) {
				rc, err := getBody()
				if err != nil {
					return nil, err
				}
				return countBody(rc, &r.c.stats.pushBytes), nil
			}
		}
		req.ContentLength = size
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return r.send(req)
}

// PushBlob uploads size bytes from r as blob dgst of repo, unless the
// registry has it already (HEAD). It uses a POST and a monolithic PUT.
// Failed uploads are retried only when r is an io.Seeker.
func (c *Client) PushBlob(ctx context.Context, repo reference.Named, dgst digest.Digest, size int64, r io.Reader) error {
	if err := c.pushBlob(ctx, repo, dgst, size, r); err != nil {
		return fmt.Errorf("push blob %s to %s: %w", dgst, repo.Name(), err)
	}
	return nil
}

func (c *Client) pushBlob(ctx context.Context, repo reference.Named, dgst digest.Digest, size int64, r io.Reader) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("digest %q: %w", dgst, ErrUnsupported)
	}
	if size < 0 {
		return fmt.Errorf("negative size %d: %w", size, ErrInvalidRange)
	}
	rc, err := c.pushRepo(ctx, repo)
	if err != nil {
		return err
	}
	exists, err := rc.blobExists(ctx, dgst)
	if err != nil || exists {
		return err
	}
	seeker, _ := r.(io.Seeker)
	return c.retry(ctx, func(attempt int) error {
		if attempt > 1 {
			if seeker == nil {
				return permanent{errors.New("upload failed and the source cannot be rewound")}
			}
			if _, err := seeker.Seek(0, io.SeekStart); err != nil {
				return permanent{fmt.Errorf("rewind source: %w", err)}
			}
		}
		return rc.upload(ctx, dgst, size, r)
	})
}

// blobExists asks HEAD /v2/<name>/blobs/<digest>.
func (r *repoClient) blobExists(ctx context.Context, dgst digest.Digest) (bool, error) {
	var exists bool
	err := r.c.retry(ctx, func(int) error {
		ctx, cancel := context.WithTimeout(ctx, r.c.opts.RequestTimeout)
		defer cancel()
		resp, _, err := r.do(ctx, http.MethodHead, r.url("blobs/"+dgst.String(), nil), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			exists = true
			return nil
		case http.StatusNotFound:
			exists = false
			return nil
		}
		return responseError(resp)
	})
	return exists, err
}

// upload runs POST /blobs/uploads/ and the monolithic PUT.
func (r *repoClient) upload(ctx context.Context, dgst digest.Digest, size int64, body io.Reader) error {
	resp, err := r.sendBody(ctx, http.MethodPost, r.url("blobs/uploads/", nil), nil, nil, 0)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusAccepted {
		return responseError(resp)
	}
	_ = resp.Body.Close()
	loc := resp.Header.Get("Location")
	if loc == "" {
		return fmt.Errorf("upload session without Location: %w", ErrInvalidResponse)
	}
	u, err := resp.Request.URL.Parse(loc)
	if err != nil {
		return fmt.Errorf("upload Location: %w", ErrInvalidResponse)
	}
	q := u.Query()
	q.Set("digest", dgst.String())
	u.RawQuery = q.Encode()
	resp, err = r.sendBody(ctx, http.MethodPut, u, http.Header{
		"Content-Type": {"application/octet-stream"},
	}, body, size)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return responseError(resp)
	}
	return nil
}

// PutManifest uploads data as manifest tagOrDigest of repo with mediaType
// and returns its digest. When tagOrDigest is a digest, data must match it.
func (c *Client) PutManifest(ctx context.Context, repo reference.Named, tagOrDigest, mediaType string, data []byte) (digest.Digest, error) {
	dgst, _, err := c.putManifest(ctx, repo, tagOrDigest, mediaType, data)
	if err != nil {
		return "", fmt.Errorf("put manifest %s of %s: %w", tagOrDigest, repo.Name(), err)
	}
	return dgst, nil
}

func (c *Client) putManifest(ctx context.Context, repo reference.Named, tagOrDigest, mediaType string, data []byte) (digest.Digest, http.Header, error) {
	dgst := digest.FromBytes(data)
	if strings.Contains(tagOrDigest, ":") {
		want := digest.Digest(tagOrDigest)
		if err := verifyDigest(data, want); err != nil {
			return "", nil, err
		}
		dgst = want
	}
	rc, err := c.pushRepo(ctx, repo)
	if err != nil {
		return "", nil, err
	}
	var header http.Header
	err = c.retry(ctx, func(int) error {
		ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
		defer cancel()
		resp, err := rc.sendBody(ctx, http.MethodPut, rc.url("manifests/"+tagOrDigest, nil),
			http.Header{"Content-Type": {mediaType}}, bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
			return responseError(resp)
		}
		header = resp.Header
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	return dgst, header, nil
}

// PushReferrer uploads data, a manifest of mediaType with a `subject` (a
// SOCI v1 index, for instance), by digest and makes it discoverable as a
// referrer of its subject: registries with the referrers API index it
// themselves (they confirm with an OCI-Subject header, or list it when
// asked); for the others the referrers tag index is read, extended and
// written back. Concurrent writers of the same tag index can lose each
// other's updates (the last write wins). The blobs the manifest refers to
// must be pushed first. It returns the descriptor under which the manifest
// is listed.
func (c *Client) PushReferrer(ctx context.Context, repo reference.Named, mediaType string, data []byte) (ocispec.Descriptor, error) {
	desc, err := c.pushReferrer(ctx, repo, mediaType, data)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push referrer to %s: %w", repo.Name(), err)
	}
	return desc, nil
}

func (c *Client) pushReferrer(ctx context.Context, repo reference.Named, mediaType string, data []byte) (ocispec.Descriptor, error) {
	var m struct {
		ArtifactType string              `json:"artifactType"`
		Config       ocispec.Descriptor  `json:"config"`
		Subject      *ocispec.Descriptor `json:"subject"`
		Annotations  map[string]string   `json:"annotations"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("parse manifest: %w", err)
	}
	if m.Subject == nil || m.Subject.Digest.Validate() != nil {
		return ocispec.Descriptor{}, fmt.Errorf("manifest has no valid subject: %w", ErrUnsupported)
	}
	desc := ocispec.Descriptor{
		MediaType:    mediaType,
		Digest:       digest.FromBytes(data),
		Size:         int64(len(data)),
		ArtifactType: m.ArtifactType,
		Annotations:  m.Annotations,
	}
	if desc.ArtifactType == "" {
		desc.ArtifactType = m.Config.MediaType
	}
	_, header, err := c.putManifest(ctx, repo, desc.Digest.String(), mediaType, data)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if header.Get("OCI-Subject") == m.Subject.Digest.String() {
		return desc, nil
	}
	rc, err := c.pushRepo(ctx, repo)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	// Some registries implement the API without announcing it.
	var (
		listed    []ocispec.Descriptor
		supported bool
	)
	err = c.retry(ctx, func(int) error {
		var err error
		listed, supported, err = rc.referrersAPI(ctx, m.Subject.Digest, "")
		return err
	})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if supported && slices.ContainsFunc(listed, func(d ocispec.Descriptor) bool { return d.Digest == desc.Digest }) {
		return desc, nil
	}
	var index *ocispec.Index
	err = c.retry(ctx, func(int) error {
		var err error
		index, _, err = rc.getReferrersTag(ctx, m.Subject.Digest)
		return err
	})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if slices.ContainsFunc(index.Manifests, func(d ocispec.Descriptor) bool { return d.Digest == desc.Digest }) {
		return desc, nil
	}
	index.Manifests = append(index.Manifests, desc)
	if index.SchemaVersion == 0 {
		index.SchemaVersion = 2
	}
	index.MediaType = ocispec.MediaTypeImageIndex
	indexData, err := json.Marshal(index)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode referrers index: %w", err)
	}
	tag := ReferrersTag(m.Subject.Digest)
	if _, _, err := c.putManifest(ctx, repo, tag, ocispec.MediaTypeImageIndex, indexData); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("referrers tag %s: %w", tag, err)
	}
	return desc, nil
}
