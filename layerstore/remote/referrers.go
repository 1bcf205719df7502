package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxReferrerPages bounds the pagination of a referrers list.
const maxReferrerPages = 64

// Referrers lists the manifests whose subject is the manifest subject in
// repo, keeping those of artifactType (all when it is ""). It uses the OCI
// referrers API and falls back to the referrers tag schema (the tag
// "<alg>-<hex>" holding an OCI index) when the registry does not implement
// the API (404, 400 or 405, or an answer that is not an OCI index), as with
// distribution 2.8. No referrers is an empty list, not an error.
func (c *Client) Referrers(ctx context.Context, repo reference.Named, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	descs, err := c.referrers(ctx, repo, subject, artifactType)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s in %s: %w", subject, repo.Name(), err)
	}
	return descs, nil
}

func (c *Client) referrers(ctx context.Context, repo reference.Named, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	if err := subject.Validate(); err != nil {
		return nil, fmt.Errorf("subject %q: %w", subject, ErrUnsupported)
	}
	var descs []ocispec.Descriptor
	err := c.retry(ctx, func(int) error {
		return c.onEndpoints(ctx, repo, pullActions, "referrers/"+subject.String(), "referrers", func(ctx context.Context, rc *repoClient) error {
			var err error
			descs, err = rc.referrers(ctx, subject, artifactType)
			if err == nil && len(descs) == 0 && !rc.last {
				// A mirror may simply not have them (not every mirror
				// proxies referrers): the primary location has the last word.
				return fmt.Errorf("no referrers of %s at the mirror: %w", subject, ErrNotFound)
			}
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	out := []ocispec.Descriptor{}
	for _, d := range descs {
		if artifactType == "" || d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	return out, nil
}

// referrers does one attempt to list the referrers of subject at r: the
// referrers API, else the referrers tag.
func (r *repoClient) referrers(ctx context.Context, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	descs, supported, err := r.referrersAPI(ctx, subject, artifactType)
	if err != nil {
		return nil, err
	}
	if !supported {
		return r.referrersTagIndex(ctx, subject)
	}
	return descs, nil
}

// referrersAPI queries GET /v2/<name>/referrers/<digest>, following
// pagination, one attempt per page. supported is false when the registry
// lacks the API.
func (r *repoClient) referrersAPI(ctx context.Context, subject digest.Digest, artifactType string) (descs []ocispec.Descriptor, supported bool, err error) {
	var q url.Values
	if artifactType != "" {
		q = url.Values{"artifactType": {artifactType}}
	}
	next := r.url("referrers/"+subject.String(), q)
	for page := 0; next != nil; page++ {
		if page >= maxReferrerPages {
			return nil, false, fmt.Errorf("more than %d pages of referrers: %w", maxReferrerPages, ErrInvalidResponse)
		}
		var (
			index ocispec.Index
			link  *url.URL
			noAPI bool
		)
		err := func() error {
			ctx, cancel := context.WithTimeout(ctx, r.c.opts.RequestTimeout)
			defer cancel()
			resp, err := awaitHeaders(r.c.opts.FirstByteTimeout, cancel, func() (*http.Response, error) {
				resp, _, err := r.do(ctx, http.MethodGet, next, http.Header{"Accept": {ocispec.MediaTypeImageIndex}})
				return resp, err
			})
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
			case http.StatusNotFound, http.StatusBadRequest, http.StatusMethodNotAllowed:
				noAPI = true
				return nil
			default:
				return responseError(resp)
			}
			if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != ocispec.MediaTypeImageIndex {
				noAPI = true
				return nil
			}
			data, err := readLimited(resp, r.c.opts.MaxManifestSize, &r.c.stats.manifestBytes)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(data, &index); err != nil {
				return fmt.Errorf("parse referrers list: %w (%w)", ErrInvalidResponse, err)
			}
			link = nextLink(resp)
			return nil
		}()
		if err != nil {
			return nil, false, err
		}
		if noAPI {
			if page > 0 {
				return nil, false, fmt.Errorf("referrers page %d: %w", page+1, ErrInvalidResponse)
			}
			return nil, false, nil
		}
		descs = append(descs, index.Manifests...)
		next = link
	}
	return descs, true, nil
}

// nextLink parses `Link: <url>; rel="next"`.
func nextLink(resp *http.Response) *url.URL {
	for _, v := range resp.Header.Values("Link") {
		for _, link := range strings.Split(v, ",") {
			target, params, ok := strings.Cut(strings.TrimSpace(link), ";")
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			isNext := false
			for _, p := range strings.Split(params, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(k, "rel") && strings.Trim(v, `"`) == "next" {
					isNext = true
				}
			}
			if !isNext {
				continue
			}
			if u, err := resp.Request.URL.Parse(strings.Trim(target, "<>")); err == nil {
				return u
			}
		}
	}
	return nil
}

// ReferrersTag is the tag of the referrers tag schema for subject:
// "<algorithm>-<encoded>", truncated to 32 and 64 characters.
func ReferrersTag(subject digest.Digest) string {
	alg, enc := string(subject.Algorithm()), subject.Encoded()
	if len(alg) > 32 {
		alg = alg[:32]
	}
	if len(enc) > 64 {
		enc = enc[:64]
	}
	return alg + "-" + enc
}

// referrersTagIndex reads the referrers tag index of subject (nil when the
// tag does not exist).
func (r *repoClient) referrersTagIndex(ctx context.Context, subject digest.Digest) ([]ocispec.Descriptor, error) {
	index, _, err := r.getReferrersTag(ctx, subject)
	if err != nil {
		return nil, err
	}
	return index.Manifests, nil
}

// getReferrersTag reads the referrers tag index of subject; a missing tag
// gives an empty index and found == false.
func (r *repoClient) getReferrersTag(ctx context.Context, subject digest.Digest) (index *ocispec.Index, found bool, err error) {
	tag := ReferrersTag(subject)
	desc, data, err := r.getManifest(ctx, tag, []string{ocispec.MediaTypeImageIndex})
	if errors.Is(err, ErrNotFound) {
		return &ocispec.Index{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: ocispec.MediaTypeImageIndex,
			Manifests: []ocispec.Descriptor{},
		}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("referrers tag %s: %w", tag, err)
	}
	if desc.MediaType != ocispec.MediaTypeImageIndex {
		return nil, false, fmt.Errorf("referrers tag %s has type %q: %w", tag, desc.MediaType, ErrInvalidResponse)
	}
	index = &ocispec.Index{}
	if err := json.Unmarshal(data, index); err != nil {
		return nil, false, fmt.Errorf("parse referrers tag %s: %w (%w)", tag, ErrInvalidResponse, err)
	}
	return index, true, nil
}
