package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tests/imagegen"
)

// get fetches url (with an optional Range) and returns status and body.
func get(t *testing.T, url, rng string, accept ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	for _, a := range accept {
		req.Header.Add("Accept", a)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// TestPushThroughCountingProxy pushes an image to both kinds of registry
// through a CountingProxy (chunked uploads for the big layer), reads it back
// and checks the counts of every kind of request.
func TestPushThroughCountingProxy(t *testing.T) {
	img := smallImage(t, "small", nil)
	for _, inProcess := range []bool{false, true} {
		t.Run(fmt.Sprintf("in-process=%v", inProcess), func(t *testing.T) {
			reg := StartRegistry(t, RegistryOptions{InProcess: inProcess})
			proxy := StartCountingProxy(t, reg.URL)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			pusher := &Pusher{ChunkSize: 1 << 20, Concurrency: 2}
			dgst, err := pusher.Push(ctx, proxy.URL, "app/small", "v1", img.Dir)
			if err != nil {
				t.Fatalf("Push: %v", err)
			}
			if dgst != img.ManifestDigest {
				t.Errorf("Push = %s, want %s", dgst, img.ManifestDigest)
			}
			// One POST + PUT per blob, plus a PATCH per chunk of blobs above 1 MiB.
			wantUploads := int64(0)
			for _, size := range append([]int64{0}, layerSizes(img)...) { // 0: the config
				wantUploads += 2
				if size > 1<<20 {
					wantUploads += (size + 1<<20 - 1) / (1 << 20)
				}
			}
			if got := proxy.Stats().ByKind[KindUpload].Requests; got != wantUploads {
				t.Errorf("first push made %d upload requests, want %d", got, wantUploads)
			}

			// A second push finds every blob.
			proxy.Reset()
			if _, err := pusher.Push(ctx, proxy.URL, "app/small", "v2", img.Dir); err != nil {
				t.Fatalf("second Push: %v", err)
			}
			if got := proxy.Stats().ByKind[KindUpload].Requests; got != 0 {
				t.Errorf("second push made %d upload requests, want 0", got)
			}

			proxy.Reset()
			l := img.Layers[0]
			status, manifest := get(t, proxy.URL+"/v2/app/small/manifests/v1", "", img.ManifestMediaType)
			if status != http.StatusOK || digest.FromBytes(manifest) != img.ManifestDigest {
				t.Errorf("GET manifest = %d, digest %s; want 200, %s", status, digest.FromBytes(manifest), img.ManifestDigest)
			}
			status, blob := get(t, proxy.URL+"/v2/app/small/blobs/"+l.Digest.String(), "")
			if status != http.StatusOK || digest.FromBytes(blob) != l.Digest {
				t.Errorf("GET blob = %d, digest %s; want 200, %s", status, digest.FromBytes(blob), l.Digest)
			}
			status, part := get(t, proxy.URL+"/v2/app/small/blobs/"+l.Digest.String(), "bytes=1000-1999")
			if status != http.StatusPartialContent || string(part) != string(blob[1000:2000]) {
				t.Errorf("GET range = %d, %d bytes; want 206 and bytes 1000-1999 of the blob", status, len(part))
			}
			s := proxy.Stats()
			checks := []struct {
				name string
				got  Counts
				want Counts
			}{
				{"manifest", s.ByKind[KindManifest], Counts{1, img.ManifestSize}},
				{"blob", s.ByKind[KindBlob], Counts{1, l.Size}},
				{"range", s.ByKind[KindRange], Counts{1, 1000}},
				{"by digest", s.ByDigest[l.Digest.String()], Counts{2, l.Size + 1000}},
				{"total", s.Total, Counts{3, img.ManifestSize + l.Size + 1000}},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s counts = %+v, want %+v", c.name, c.got, c.want)
				}
			}
			if got := s.BlobBytes(); got != l.Size+1000 {
				t.Errorf("BlobBytes() = %d, want %d", got, l.Size+1000)
			}
		})
	}
}

func layerSizes(img *imagegen.Image) []int64 {
	var s []int64
	for _, l := range img.Layers {
		s = append(s, l.Size)
	}
	return s
}

// TestRegistryCloseLeavesNothing checks that Close ends the docker-registry
// process and removes the directory NewRegistry made.
func TestRegistryCloseLeavesNothing(t *testing.T) {
	r, err := NewRegistry(RegistryOptions{})
	if errors.Is(err, ErrNoRegistryBinary) {
		t.Skipf("needs docker-registry: %v", err)
	}
	if err != nil {
		t.Fatalf("NewRegistry: %v", err)
	}
	pid := r.cmd.Process.Pid
	dir := r.Dir
	if status, _ := get(t, r.URL+"/v2/", ""); status != http.StatusOK {
		t.Errorf("GET /v2/ = %d, want 200", status)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("registry process %d still exists after Close (kill 0: %v)", pid, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registry directory %s still exists after Close (stat: %v)", dir, err)
	}
}

func TestPushErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Push(ctx, "127.0.0.1:1", "a/b", "t", t.TempDir()); !errors.Is(err, ErrLayout) {
		t.Errorf("Push(empty dir) error = %v, want ErrLayout", err)
	}
	reg := StartRegistry(t, RegistryOptions{}) // docker-registry validates names
	img, err := imagegen.Generate(t.TempDir(), imagegen.Options{Layers: []imagegen.LayerSpec{{SmallFiles: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Push(ctx, reg.URL, "Upper/Case", "t", img.Dir); !errors.Is(err, ErrPush) {
		t.Errorf("Push(invalid repository name) error = %v, want ErrPush", err)
	}
}
