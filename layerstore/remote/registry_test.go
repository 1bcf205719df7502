package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/manifest"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// testRegistry is go-containerregistry's in-process registry (with the
// referrers API) behind an optional middleware, counting requests by method
// and path kind.
type testRegistry struct {
	host     string
	mu       sync.Mutex
	requests map[string]int // "GET manifests", "POST uploads", ...
}

func newTestRegistry(t *testing.T, middleware func(http.Handler) http.Handler) *testRegistry {
	t.Helper()
	var h http.Handler = ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)), ggcr.WithReferrersSupport(true))
	if middleware != nil {
		h = middleware(h)
	}
	tr := &testRegistry{requests: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "other"
		for _, k := range []string{"uploads", "manifests", "blobs", "referrers"} {
			if strings.Contains(r.URL.Path, "/"+k+"/") {
				kind = k
				break
			}
		}
		tr.mu.Lock()
		tr.requests[r.Method+" "+kind]++
		tr.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	tr.host = u.Host
	return tr
}

func (tr *testRegistry) count(key string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.requests[key]
}

// noReferrersAPI answers 404 to the referrers API, like distribution 2.8.
func noReferrersAPI(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/referrers/") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[{"code":"NOT_FOUND","message":"404 page not found"}]}`))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// testImage is an image built for the tests.
type testImage struct {
	manifest  []byte
	digest    digest.Digest
	mediaType string
	config    []byte
	layers    [][]byte
	diffIDs   []digest.Digest
	platform  ocispec.Platform
}

// buildImage makes an image of n random layers; docker selects schema2 media
// types instead of OCI ones. diffIDs can be cut to make a broken config.
func buildImage(t *testing.T, seed, n int, docker bool, p ocispec.Platform, cutDiffIDs int) testImage {
	t.Helper()
	img := testImage{platform: p, mediaType: ocispec.MediaTypeImageManifest}
	configType, layerType := ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageLayerGzip
	if docker {
		img.mediaType = manifest.DockerV2Schema2MediaType
		configType, layerType = manifest.DockerV2Schema2ConfigMediaType, manifest.DockerV2Schema2LayerMediaType
	}
	var layerDescs []ocispec.Descriptor
	for i := 0; i < n; i++ {
		l := testContent(1000*seed + 100*i + 1)
		img.layers = append(img.layers, l)
		img.diffIDs = append(img.diffIDs, digest.FromBytes(append(bytes.Clone(l), 'u')))
		layerDescs = append(layerDescs, ocispec.Descriptor{MediaType: layerType, Digest: digest.FromBytes(l), Size: int64(len(l)),
			Annotations: map[string]string{"test.layer": fmt.Sprint(i)}})
	}
	config := map[string]any{
		"architecture": p.Architecture, "os": p.OS, "variant": p.Variant,
		"rootfs": map[string]any{"type": "layers", "diff_ids": img.diffIDs[:len(img.diffIDs)-cutDiffIDs]},
	}
	var err error
	if img.config, err = json.Marshal(config); err != nil {
		t.Fatal(err)
	}
	m := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   img.mediaType,
		Config:      ocispec.Descriptor{MediaType: configType, Digest: digest.FromBytes(img.config), Size: int64(len(img.config))},
		Layers:      layerDescs,
		Annotations: map[string]string{"test.image": fmt.Sprint(seed)},
	}
	if docker {
		m.Annotations = nil
	}
	if img.manifest, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	img.digest = digest.FromBytes(img.manifest)
	return img
}

// push uploads img with the client under test; tag "" pushes by digest.
func (img testImage) push(t *testing.T, c *Client, repo reference.Named, tag string) {
	t.Helper()
	ctx := context.Background()
	for _, blob := range append([][]byte{img.config}, img.layers...) {
		if err := c.PushBlob(ctx, repo, digest.FromBytes(blob), int64(len(blob)), bytes.NewReader(blob)); err != nil {
			t.Fatalf("PushBlob: %v", err)
		}
	}
	if tag == "" {
		tag = img.digest.String()
	}
	got, err := c.PutManifest(ctx, repo, tag, img.mediaType, img.manifest)
	if err != nil || got != img.digest {
		t.Fatalf("PutManifest = %s, %v; want %s", got, err, img.digest)
	}
}

func checkImage(t *testing.T, got *Image, want testImage) {
	t.Helper()
	if got.ManifestDigest != want.digest || !bytes.Equal(got.Manifest, want.manifest) || got.MediaType != want.mediaType {
		t.Errorf("manifest = %s (%s), want %s (%s)", got.ManifestDigest, got.MediaType, want.digest, want.mediaType)
	}
	if !bytes.Equal(got.Config, want.config) || got.ConfigDigest != digest.FromBytes(want.config) {
		t.Errorf("config %s differs from the pushed one", got.ConfigDigest)
	}
	if len(got.Layers) != len(want.layers) {
		t.Fatalf("%d layers, want %d", len(got.Layers), len(want.layers))
	}
	for i, l := range got.Layers {
		w := want.layers[i]
		// Docker schema2 descriptors have no annotations.
		wantAnnotation := fmt.Sprint(i)
		if want.mediaType == manifest.DockerV2Schema2MediaType {
			wantAnnotation = ""
		}
		if l.Digest != digest.FromBytes(w) || l.Size != int64(len(w)) || l.DiffID != want.diffIDs[i] || l.Annotations["test.layer"] != wantAnnotation {
			t.Errorf("layer %d = %+v, want digest %s size %d diffID %s", i, l, digest.FromBytes(w), len(w), want.diffIDs[i])
		}
	}
}

func TestResolve(t *testing.T) {
	reg := newTestRegistry(t, nil)
	c := insecureClient(t, reg.host)
	host := ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	for _, docker := range []bool{false, true} {
		t.Run(fmt.Sprintf("docker=%v", docker), func(t *testing.T) {
			repo := mustRef(t, fmt.Sprintf("%s/single/docker-%v", reg.host, docker))
			img := buildImage(t, 3, 3, docker, host, 0)
			img.push(t, c, repo, "v1")

			before := reg.count("GET manifests") + reg.count("GET blobs")
			got, err := c.Resolve(context.Background(), mustRef(t, repo.Name()+":v1"))
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			checkImage(t, got, img)
			if n := reg.count("GET manifests") + reg.count("GET blobs") - before; n != 2 {
				t.Errorf("Resolve made %d GETs, want 2 (manifest and config)", n)
			}
			if got.IndexDigest != "" {
				t.Errorf("IndexDigest = %s, want none", got.IndexDigest)
			}
			if !docker && got.Annotations["test.image"] != "3" {
				t.Errorf("Annotations = %v, want test.image=3", got.Annotations)
			}

			byDigest := mustRef(t, repo.Name()+"@"+img.digest.String())
			if got, err := c.Resolve(context.Background(), byDigest); err != nil {
				t.Fatalf("Resolve by digest: %v", err)
			} else {
				checkImage(t, got, img)
			}
		})
	}
}

func TestResolveManifestList(t *testing.T) {
	reg := newTestRegistry(t, nil)
	platforms := []ocispec.Platform{
		{OS: "linux", Architecture: "arm", Variant: "v7"},
		{OS: "windows", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64", Variant: "v8"},
		{OS: "linux", Architecture: "s390x"},
		{OS: "linux", Architecture: "amd64"},
	}
	if runtime.GOOS != "linux" || (runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64") {
		platforms = append(platforms, ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH})
	}
	for _, docker := range []bool{false, true} {
		t.Run(fmt.Sprintf("docker=%v", docker), func(t *testing.T) {
			c := insecureClient(t, reg.host)
			repo := mustRef(t, fmt.Sprintf("%s/multi/docker-%v", reg.host, docker))
			images := map[string]testImage{}
			var descs []ocispec.Descriptor
			for i, p := range platforms {
				img := buildImage(t, 10+i, 2, docker, p, 0)
				img.push(t, c, repo, "")
				images[p.OS+"/"+p.Architecture] = img
				descs = append(descs, ocispec.Descriptor{MediaType: img.mediaType, Digest: img.digest, Size: int64(len(img.manifest)), Platform: &platforms[i]})
			}
			listType := ocispec.MediaTypeImageIndex
			if docker {
				listType = manifest.DockerV2ListMediaType
			}
			index, err := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: listType, Manifests: descs})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.PutManifest(context.Background(), repo, "multi", listType, index); err != nil {
				t.Fatalf("PutManifest(list): %v", err)
			}

			tests := []struct {
				name     string
				os, arch string
				want     string
			}{
				{"host platform", "", "", runtime.GOOS + "/" + runtime.GOARCH},
				{"arm64 chosen explicitly", "linux", "arm64", "linux/arm64"},
				{"s390x chosen explicitly", "linux", "s390x", "linux/s390x"},
			}
			for _, tc := range tests {
				pc, err := NewClient(Options{InsecureRegistries: []string{reg.host}, OS: tc.os, Architecture: tc.arch})
				if err != nil {
					t.Fatal(err)
				}
				got, err := pc.Resolve(context.Background(), mustRef(t, repo.Name()+":multi"))
				if err != nil {
					t.Fatalf("%s: Resolve: %v", tc.name, err)
				}
				if got.IndexDigest != digest.FromBytes(index) || !bytes.Equal(got.Index, index) {
					t.Errorf("%s: IndexDigest = %s, want %s", tc.name, got.IndexDigest, digest.FromBytes(index))
				}
				checkImage(t, got, images[tc.want])
				_ = pc.Close()
			}

			mips := ocispec.Platform{OS: "linux", Architecture: "mips64"}
			mc, _ := NewClient(Options{InsecureRegistries: []string{reg.host}, OS: mips.OS, Architecture: mips.Architecture})
			if _, err := mc.Resolve(context.Background(), mustRef(t, repo.Name()+":multi")); !errors.Is(err, ErrNotFound) {
				t.Errorf("Resolve for a platform missing from the list: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	reg := newTestRegistry(t, nil)
	c := insecureClient(t, reg.host)
	repo := mustRef(t, reg.host+"/broken/app")
	host := ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	buildImage(t, 5, 3, false, host, 1).push(t, c, repo, "fewer-diffids")
	good := buildImage(t, 6, 1, false, host, 0)
	good.push(t, c, repo, "good")
	schema1 := []byte(`{"schemaVersion":1,"name":"broken/app","tag":"old","architecture":"amd64","fsLayers":[],"history":[]}`)
	if _, err := c.PutManifest(context.Background(), repo, "old", manifest.DockerV2Schema1SignedMediaType, schema1); err != nil {
		t.Fatalf("PutManifest(schema1): %v", err)
	}
	tests := []struct {
		ref     string
		wantErr error
		wantMsg string
	}{
		{repo.Name() + ":missing", ErrNotFound, "MANIFEST_UNKNOWN"},
		{reg.host + "/nobody/here:1", ErrNotFound, "NAME_UNKNOWN"},
		{repo.Name() + ":fewer-diffids", ErrInvalidResponse, "diff_ids"},
		{repo.Name() + ":old", ErrUnsupported, "schema1"},
		{repo.Name() + "@" + digest.FromString("other").String(), ErrNotFound, "MANIFEST_UNKNOWN"},
	}
	for _, tc := range tests {
		_, err := c.Resolve(context.Background(), mustRef(t, tc.ref))
		if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("Resolve(%s) error = %v, want %v mentioning %q", tc.ref, err, tc.wantErr, tc.wantMsg)
		}
	}
	if s := c.Stats(); s.Retries != 0 {
		t.Errorf("Stats().Retries = %d, want 0", s.Retries)
	}
}

// TestResolveDigestMismatch: a registry serving other bytes for a digest
// (impossible to provoke on a real registry, hence a fake).
func TestResolveDigestMismatch(t *testing.T) {
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		return response(req, http.StatusOK, http.Header{"Content-Type": {ocispec.MediaTypeImageManifest}}, body), nil
	})
	c := newFakeClient(t, rt, newFakeClock(), nil)
	_, err := c.Resolve(context.Background(), mustRef(t, testRepo+"@"+digest.FromString("x").String()))
	if !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("Resolve error = %v, want ErrDigestMismatch", err)
	}
}

// basicAuthOnly requires Basic credentials like a Basic-only registry.
func basicAuthOnly(user, password string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestAuthRequired(t *testing.T) {
	reg := newTestRegistry(t, basicAuthOnly("alice", "s3cret"))
	authed, err := NewClient(Options{InsecureRegistries: []string{reg.host},
		Auth: func(_ reference.Named, _ []string, base http.RoundTripper) (Auth, error) {
			return StaticAuth(base, reg.host, BasicAuthorization("alice", "s3cret")), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	repo := mustRef(t, reg.host+"/private/app")
	img := buildImage(t, 7, 2, false, ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}, 0)
	img.push(t, authed, repo, "v1")
	got, err := authed.Resolve(context.Background(), mustRef(t, repo.Name()+":v1"))
	if err != nil {
		t.Fatalf("Resolve with credentials: %v", err)
	}
	checkImage(t, got, img)

	anon := insecureClient(t, reg.host)
	_, err = anon.Resolve(context.Background(), mustRef(t, repo.Name()+":v1"))
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "authentication required") {
		t.Errorf("anonymous Resolve error = %v, want ErrUnauthorized with the registry's message", err)
	}
}

func TestPushBlobSkipsExisting(t *testing.T) {
	reg := newTestRegistry(t, nil)
	c := insecureClient(t, reg.host)
	repo := mustRef(t, reg.host+"/push/app")
	blob := testContent(100000)
	d := digest.FromBytes(blob)
	for i := 0; i < 2; i++ {
		if err := c.PushBlob(context.Background(), repo, d, int64(len(blob)), bytes.NewReader(blob)); err != nil {
			t.Fatalf("PushBlob %d: %v", i, err)
		}
	}
	if n := reg.count("POST uploads"); n != 1 {
		t.Errorf("upload sessions = %d, want 1 (second push skipped after HEAD)", n)
	}
	if s := c.Stats(); s.PushBytes != int64(len(blob)) {
		t.Errorf("Stats().PushBytes = %d, want %d", s.PushBytes, len(blob))
	}
	got, err := c.GetBlob(context.Background(), repo, d)
	if err != nil || !bytes.Equal(got, blob) {
		t.Errorf("GetBlob = %d bytes, %v; want the pushed %d bytes", len(got), err, len(blob))
	}
	bad := digest.FromString("not the content")
	if err := c.PushBlob(context.Background(), repo, bad, int64(len(blob)), bytes.NewReader(blob)); err == nil {
		t.Error("PushBlob with a wrong digest succeeded, want the registry's refusal")
	}
	small, err := NewClient(Options{InsecureRegistries: []string{reg.host}, MaxBlobInMemory: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := small.GetBlob(context.Background(), repo, d); !errors.Is(err, ErrTooLarge) {
		t.Errorf("GetBlob over the limit: %v, want ErrTooLarge", err)
	}
}

const sociIndexType = "application/vnd.amazon.soci.index.v1+json"

// pushSOCIIndex pushes a SOCI-v1-like index for subject as a referrer.
func pushSOCIIndex(t *testing.T, c *Client, repo reference.Named, subject testImage, note string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	empty := []byte("{}")
	ztoc := testContent(777 + len(note))
	for _, b := range [][]byte{empty, ztoc} {
		if err := c.PushBlob(ctx, repo, digest.FromBytes(b), int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatalf("PushBlob: %v", err)
		}
	}
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: sociIndexType, Digest: digest.FromBytes(empty), Size: 2},
		Layers: []ocispec.Descriptor{{MediaType: "application/octet-stream", Digest: digest.FromBytes(ztoc), Size: int64(len(ztoc)),
			Annotations: map[string]string{"com.amazon.soci.image-layer-digest": digest.FromBytes(subject.layers[0]).String()}}},
		Subject:     &ocispec.Descriptor{MediaType: subject.mediaType, Digest: subject.digest, Size: int64(len(subject.manifest))},
		Annotations: map[string]string{"com.amazon.soci.build-tool-identifier": "lazypull test " + note},
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := c.PushReferrer(ctx, repo, ocispec.MediaTypeImageManifest, data)
	if err != nil {
		t.Fatalf("PushReferrer: %v", err)
	}
	if desc.Digest != digest.FromBytes(data) || desc.ArtifactType != sociIndexType {
		t.Fatalf("PushReferrer = %+v, want digest %s and artifactType %s", desc, digest.FromBytes(data), sociIndexType)
	}
	return desc
}

func TestReferrers(t *testing.T) {
	tests := []struct {
		name       string
		middleware func(http.Handler) http.Handler
		wantTag    bool // the referrers tag index is maintained
	}{
		{"referrers API", nil, false},
		{"tag fallback (no API, like distribution 2.8)", noReferrersAPI, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTestRegistry(t, tc.middleware)
			c := insecureClient(t, reg.host)
			ctx := context.Background()
			repo := mustRef(t, reg.host+"/soci/app")
			img := buildImage(t, 20, 2, false, ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}, 0)
			img.push(t, c, repo, "v1")
			lonely := buildImage(t, 21, 1, false, ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}, 0)
			lonely.push(t, c, repo, "v2")

			if got, err := c.Referrers(ctx, repo, img.digest, sociIndexType); err != nil || len(got) != 0 {
				t.Fatalf("Referrers before any push = %v, %v; want an empty list", got, err)
			}
			first := pushSOCIIndex(t, c, repo, img, "a")
			second := pushSOCIIndex(t, c, repo, img, "bb")
			again := pushSOCIIndex(t, c, repo, img, "a") // idempotent
			if again.Digest != first.Digest {
				t.Fatalf("re-push gave %s, want %s", again.Digest, first.Digest)
			}

			got, err := c.Referrers(ctx, repo, img.digest, sociIndexType)
			if err != nil {
				t.Fatalf("Referrers: %v", err)
			}
			var digests []string
			for _, d := range got {
				digests = append(digests, d.Digest.String())
				if d.ArtifactType != sociIndexType || d.MediaType != ocispec.MediaTypeImageManifest {
					t.Errorf("referrer %s: artifactType %q mediaType %q", d.Digest, d.ArtifactType, d.MediaType)
				}
			}
			if len(got) != 2 || !strings.Contains(strings.Join(digests, " "), first.Digest.String()) ||
				!strings.Contains(strings.Join(digests, " "), second.Digest.String()) {
				t.Errorf("Referrers = %v, want %s and %s", digests, first.Digest, second.Digest)
			}
			if other, err := c.Referrers(ctx, repo, img.digest, "application/vnd.example.other"); err != nil || len(other) != 0 {
				t.Errorf("Referrers of another artifact type = %v, %v; want none", other, err)
			}
			if none, err := c.Referrers(ctx, repo, lonely.digest, sociIndexType); err != nil || len(none) != 0 {
				t.Errorf("Referrers of an image without any = %v, %v; want none", none, err)
			}

			desc, data, err := c.GetManifest(ctx, repo, ReferrersTag(img.digest))
			if tc.wantTag {
				var index ocispec.Index
				if err != nil || desc.MediaType != ocispec.MediaTypeImageIndex || json.Unmarshal(data, &index) != nil || len(index.Manifests) != 2 {
					t.Errorf("referrers tag: %s %s, %v; want an OCI index of 2 entries: %s", desc.MediaType, desc.Digest, err, data)
				}
			} else if !errors.Is(err, ErrNotFound) {
				t.Errorf("referrers tag on an API registry: %v, want ErrNotFound (not maintained)", err)
			}
			if blob, err := c.GetBlob(ctx, repo, first.Digest); err == nil {
				t.Errorf("GetBlob of a manifest digest returned %d bytes, want an error", len(blob))
			}
		})
	}
}

func TestEnsureFreshAndAuthCache(t *testing.T) {
	var calls []string
	var mu sync.Mutex
	c := newFakeClient(t, roundTripFunc(func(req *http.Request) (*http.Response, error) {
		return response(req, http.StatusNotFound, nil, nil), nil
	}), newFakeClock(), func(o *Options) {
		o.Auth = func(ref reference.Named, actions []string, base http.RoundTripper) (Auth, error) {
			mu.Lock()
			calls = append(calls, ref.String()+" "+strings.Join(actions, ","))
			mu.Unlock()
			return &freshAuth{Auth: Anonymous(base)}, nil
		}
	})
	// Credentials may be valid for one exact reference (handed over by
	// podman), so the AuthFunc sees the tag and is cached per reference.
	for _, ref := range []reference.Named{mustRef(t, testRepo+":1.0"), mustRef(t, testRepo+":2.0")} {
		for i := 0; i < 3; i++ {
			if err := c.EnsureFresh(context.Background(), ref, time.Minute); err != nil {
				t.Fatalf("EnsureFresh: %v", err)
			}
			_, _, _ = c.GetManifest(context.Background(), ref, "latest")
		}
	}
	if want := []string{testRepo + ":1.0 pull", testRepo + ":2.0 pull"}; fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Errorf("AuthFunc calls = %q, want %q (cached per reference)", calls, want)
	}
}

// TestClientReauthenticate: Client.Reauthenticate reaches the Auth of the
// reference when it is a Reauthenticator, and is a no-op otherwise.
func TestClientReauthenticate(t *testing.T) {
	notFound := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		return response(req, http.StatusNotFound, nil, nil), nil
	})
	var got []string
	c := newFakeClient(t, notFound, newFakeClock(), func(o *Options) {
		o.Auth = func(ref reference.Named, _ []string, base http.RoundTripper) (Auth, error) {
			return &reauthAuth{Auth: Anonymous(base), onReauth: func() { got = append(got, ref.String()) }}, nil
		}
	})
	ref := mustRef(t, testRepo+":1.0")
	for range 2 {
		if err := c.Reauthenticate(ref); err != nil {
			t.Fatalf("Reauthenticate: %v", err)
		}
	}
	if want := []string{testRepo + ":1.0", testRepo + ":1.0"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Reauthenticate calls = %q, want %q", got, want)
	}
	plain := newFakeClient(t, notFound, newFakeClock(), nil)
	if err := plain.Reauthenticate(ref); err != nil {
		t.Errorf("Reauthenticate with an Auth that cannot: %v, want nil", err)
	}
}

type reauthAuth struct {
	Auth
	onReauth func()
}

func (r *reauthAuth) Reauthenticate() { r.onReauth() }

type freshAuth struct {
	Auth
	n int
}

func (f *freshAuth) EnsureFresh(context.Context, time.Duration) error { f.n++; return nil }
