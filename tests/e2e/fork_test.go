package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// The fork: podman 5.6.2 and buildah 1.41.5 built with lazypull's plugin by
// `make fork` (contrib/fork/build.sh) into bin/. The tests below drive those
// binaries end to end with the real parts: docker-registry on 127.0.0.1
// behind a counting proxy, `lazypull serve` (FUSE), runc, and stock podman
// 4.3.1 for the eager reference pulls.

// forkBinary returns the forked binary name ("podman", "buildah") built by
// `make fork`: in $LAZYPULL_FORK_BIN_DIR, else the checkout's bin/. It skips
// the test when the binary is not there (`make test` builds it first).
func forkBinary(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("LAZYPULL_FORK_BIN_DIR")
	if dir == "" {
		var err error
		if dir, err = filepath.Abs(filepath.Join("..", "..", "bin")); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		t.Skipf("forked %s not built (%v): run `make fork` first", name, err)
	}
	return path
}

// forkDaemonConfig is the layer store configuration of the fork tests: the
// proxy and the registry insecure, no prefetch and no background
// verification, so that the registry counts only what the pulls and the
// containers read. The tests push SOCI indexes to their own registry
// (`lazypull index --push`), so it is named in trust_indexes_for, as an
// operator names their own registry: without it, a read deep in a layer
// waits for the checkpoint proof, which streams the layer up to it (what
// the proof does is tested in layerstore's adversarial tests).
func forkDaemonConfig(hosts ...string) map[string]any {
	trusted := make([]string, len(hosts))
	for i, h := range hosts {
		trusted[i] = h + "/"
	}
	return map[string]any{
		"registry":     map[string]any{"insecure": hosts},
		"prefetch":     map[string]any{"enabled": false},
		"verification": map[string]any{"enabled": false, "trust_indexes_for": trusted},
	}
}

// forkPodman returns a harness for the forked podman with the "lazypull"
// graph driver, using the test's daemon d (never starting one of its own).
func forkPodman(t testing.TB, d *testenv.Daemon, insecure ...string) *testenv.Podman {
	t.Helper()
	return testenv.NewPodman(t, testenv.PodmanOptions{
		Binary: forkBinary(t, "podman"), StorageDriver: "lazypull", InsecureRegistries: insecure,
		StorageOpts: []string{"lazypull.config=" + d.ConfigPath, "lazypull.start=never"},
	})
}

// lazyDiffs returns the diff directories of the layers of the store under
// root (driver lazypull) that are symlinks into the daemon's mount, by layer
// ID.
func lazyDiffs(t testing.TB, root, mount string) map[string]string {
	t.Helper()
	diffs, err := filepath.Glob(filepath.Join(root, "lazypull", "*", "diff"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range diffs {
		if target, err := os.Readlink(d); err == nil && strings.HasPrefix(target, mount+"/") {
			out[filepath.Base(filepath.Dir(d))] = d
		}
	}
	return out
}

// podmanOut runs the harness's podman and fails the test on error.
func podmanOut(t testing.TB, p *testenv.Podman, args ...string) string {
	t.Helper()
	out, _, err := p.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// lowerDirs returns the overlay lower directories of image (podman image
// inspect), base layer last.
func lowerDirs(t testing.TB, p *testenv.Podman, image string) []string {
	t.Helper()
	out := podmanOut(t, p, "image", "inspect", "--format", "{{.GraphDriver.Data.LowerDir}}", image)
	if out == "" || out == "<no value>" {
		return nil
	}
	return strings.Split(out, ":")
}

// checkOnLazyBase checks that image (built or committed on the lazily pulled
// base) stacks on the very layers the lazy pull created: every lazily served
// diff is one of its lower directories, none was copied.
func checkOnLazyBase(t testing.TB, p *testenv.Podman, image string, lazy map[string]string) {
	t.Helper()
	lower := map[string]bool{}
	for _, l := range lowerDirs(t, p, image) {
		lower[l] = true
	}
	for id, diff := range lazy {
		if !lower[diff] {
			t.Errorf("%s does not stack on the lazily served layer %s (lower dirs %v)", image, id, lowerDirs(t, p, image))
		}
	}
}

// indexPush indexes the image at ref from "another machine" and pushes the
// index to the registry.
func indexPush(t testing.TB, reg *testenv.Registry, ref string) {
	t.Helper()
	runLazypull(t, map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}}}, "index", "--push", ref)
}

// stockEagerTree pulls ref with stock podman 4.3.1 (eagerly, no layer
// store) and returns its root filesystem.
func stockEagerTree(t testing.TB, ref string, insecure ...string) fstree.Tree {
	t.Helper()
	return eagerTree(t, testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: insecure}), ref)
}

// TestForkPodmanPull: plain `podman pull` of the forked podman is lazy for an
// ordinary gzip image indexed in its registry: the pull transfers less than
// 5 % of the image, its layers are served by the store, containers read
// exact bytes, the tree equals the generator's and an eager pull's; `podman
// images`/`inspect` list it, a second pull is a no-op (no layer byte, same
// image, no dangling image) and `rmi` removes it.
func TestForkPodmanPull(t *testing.T) {
	forkBinary(t, "podman")
	img := cachedImage(t, imagegen.E2E())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(t, reg.URL)
	directRef := push(t, reg, img, "lazypull/fork", "v1")
	ref := proxy.Host + "/lazypull/fork:v1"
	indexPush(t, reg, directRef)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: forkDaemonConfig(proxy.Host, reg.Host)})
	p := forkPodman(t, d, proxy.Host, reg.Host)
	t.Logf("forked podman: %s", podmanOut(t, p, "--version"))

	proxy.Reset()
	start := time.Now()
	id, err := p.Pull(ref)
	if err != nil {
		t.Fatalf("forked podman pull: %v\n%s", err, d.LogTail(30))
	}
	took := time.Since(start)
	pulled, total := proxy.Stats().BlobBytes(), img.CompressedSize()
	t.Logf("forked podman pull: %s in %v, %s of blobs fetched for a %s image (%.2f %%)", id[:12], took.Round(time.Millisecond),
		mib(pulled), mib(total), 100*float64(pulled)/float64(total))
	if pulled*100 >= total*5 {
		t.Errorf("forked podman pull fetched %d bytes, want < 5 %% of %d", pulled, total)
	}
	indexed := indexedLayers(img, 10<<20)
	lazy := lazyDiffs(t, p.Root, d.MountPoint)
	if len(lazy) != len(indexed) {
		t.Errorf("%d layer diffs point into the store, want %d (the indexed layers)\n%s", len(lazy), len(indexed), d.LogTail(20))
	}

	// images, inspect.
	if got := podmanOut(t, p, "images", "--noheading", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"); got != "sha256:"+id+" "+ref {
		t.Errorf("podman images = %q, want the image %s named %s only", got, id, ref)
	}
	var inspected []struct {
		ID     string `json:"Id"`
		RootFS struct {
			Layers []digest.Digest `json:"Layers"`
		} `json:"RootFS"`
		Size int64 `json:"Size"`
	}
	if err := json.Unmarshal([]byte(podmanOut(t, p, "image", "inspect", ref)), &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("podman image inspect: %v (%d images)", err, len(inspected))
	}
	if inspected[0].ID != id || len(inspected[0].RootFS.Layers) != len(img.Layers) {
		t.Errorf("inspect: ID %s with %d layers, want %s with %d", inspected[0].ID, len(inspected[0].RootFS.Layers), id, len(img.Layers))
	}
	for i, l := range img.Layers {
		if i < len(inspected[0].RootFS.Layers) && inspected[0].RootFS.Layers[i] != l.DiffID {
			t.Errorf("inspect: layer %d DiffID %s, want %s", i, inspected[0].RootFS.Layers[i], l.DiffID)
		}
	}

	// A second pull of the same image: nothing but the manifest and config.
	proxy.Reset()
	id2, err := p.Pull(ref)
	if err != nil {
		t.Fatalf("second pull: %v", err)
	}
	again := proxy.Stats()
	for _, l := range img.Layers {
		if n := again.ByDigest[l.Digest.String()].Bytes; n != 0 {
			t.Errorf("second pull fetched %d bytes of layer %s", n, l.Digest)
		}
	}
	if id2 != id {
		t.Errorf("second pull gave image %s, want the same %s", id2, id)
	}
	if got := podmanOut(t, p, "images", "--all", "--noheading", "--format", "{{.ID}}"); strings.Count(got, "\n") != 0 {
		t.Errorf("after a second pull, podman images --all lists %q, want one image", got)
	}
	if n := len(lazyDiffs(t, p.Root, d.MountPoint)); n != len(lazy) {
		t.Errorf("after a second pull %d lazily served layers, want the same %d", n, len(lazy))
	}
	t.Logf("second pull: %d requests, %s of blobs (manifest, config)", again.Total.Requests, mib(again.BlobBytes()))

	// run: a workload reading a few files of every layer, exact bytes.
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, dir := range []string{"usr/lib/base", "usr/lib/app", "opt/data", "srv/small", "var/top"} {
		paths = append(paths, regularFiles(want, dir, 3, false)...)
	}
	paths = append(paths, regularFiles(want, "opt/data", 1, true)...)
	proxy.Reset()
	checkFilesInContainer(t, p, ref, want, paths)
	t.Logf("first run: %s fetched", mib(proxy.Stats().BlobBytes()))

	// The lazily mounted tree equals the generator's and an eager pull's.
	compareTrees(t, p, ref, want, "forked podman's lazy rootfs vs the generator's tree")
	compareTrees(t, p, ref, stockEagerTree(t, directRef, reg.Host), "forked podman's lazy rootfs vs an eager pull")
	if st := d.Status(t); st.Reads.Errors != 0 {
		t.Errorf("daemon counted %d read errors", st.Reads.Errors)
	}

	podmanOut(t, p, "rmi", ref)
	if n := len(lazyDiffs(t, p.Root, d.MountPoint)); n != 0 {
		t.Errorf("after rmi %d lazily served layers remain", n)
	}
}

// TestForkPodmanPullOnDemand: plain `podman pull` of the forked podman of an
// image nobody indexed: the layer store indexes each layer while podman waits
// (index.on_demand = "sync", one pass over the blob), the layers are served
// lazily all the same, and containers read exact bytes; the tree equals the
// generator's.
func TestForkPodmanPullOnDemand(t *testing.T) {
	forkBinary(t, "podman")
	img := cachedImage(t, forkBuildImage())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(t, reg.URL)
	push(t, reg, img, "fork/ondemand", "v1")
	ref := proxy.Host + "/fork/ondemand:v1"
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: forkDaemonConfig(proxy.Host, reg.Host)})
	p := forkPodman(t, d, proxy.Host)

	proxy.Reset()
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, d.LogTail(30))
	}
	st := proxy.Stats()
	t.Logf("on-demand pull: %s fetched by the store to index a %s image", mib(st.BlobBytes()), mib(img.CompressedSize()))
	if n := len(lazyDiffs(t, p.Root, d.MountPoint)); n != len(img.Layers) {
		t.Fatalf("%d layer diffs point into the store, want %d\n%s", n, len(img.Layers), d.LogTail(20))
	}
	for _, l := range img.Layers {
		if n := st.ByDigest[l.Digest.String()].Bytes; n > l.Size+l.Size/10 {
			t.Errorf("layer %s: %d bytes fetched to index it, want one pass over its %d", l.Digest, n, l.Size)
		}
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	checkFilesInContainer(t, p, ref, want, append(regularFiles(want, "usr/lib/base", 3, true), regularFiles(want, "opt/top", 3, false)...))
	compareTrees(t, p, ref, want, "on-demand lazy rootfs vs the generator's tree")
}

// forkBuildImage is the base image of the build tests: two gzip layers above
// the 10 MiB index threshold, mostly incompressible, busybox in the base.
func forkBuildImage() imagegen.Options {
	return imagegen.Options{
		Name: "forkbuild",
		Seed: 9,
		Layers: []imagegen.LayerSpec{
			{Compression: imagegen.Gzip, Dir: "usr/lib/base", Busybox: true, Zoo: true, SmallFiles: 300,
				Random: []int64{24 << 20, 8 << 20}},
			{Compression: imagegen.Gzip, Dir: "opt/top", SmallFiles: 100, Random: []int64{16 << 20}},
		},
	}
}

// paddedLayout writes to dir a copy of img whose layer tars carry trailing
// zero padding after the end-of-archive marker up to a 10 KiB record, as GNU
// tar, Python's tarfile and many distribution tools write them (Go's
// archive/tar does not); it returns the new layers (digest, DiffID, size).
func paddedLayout(t testing.TB, img *imagegen.Image, dir string) []imagegen.Layer {
	t.Helper()
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	writeBlob := func(b []byte) digest.Digest {
		d := digest.FromBytes(b)
		if err := os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	var layers []imagegen.Layer
	for _, l := range img.Layers {
		raw, err := os.ReadFile(img.BlobPath(l.Digest))
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		tarBytes, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		const record = 10240
		tarBytes = append(tarBytes, make([]byte, record-len(tarBytes)%record)...)
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		if _, err := zw.Write(tarBytes); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		nl := l
		nl.Digest, nl.DiffID, nl.Size, nl.DiffSize = writeBlob(gz.Bytes()), digest.FromBytes(tarBytes), int64(gz.Len()), int64(len(tarBytes))
		layers = append(layers, nl)
	}
	readJSON := func(d digest.Digest) map[string]any {
		var v map[string]any
		b, err := os.ReadFile(img.BlobPath(d))
		if err == nil {
			err = json.Unmarshal(b, &v)
		}
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cfg := readJSON(img.ConfigDigest)
	var diffIDs []digest.Digest
	for _, l := range layers {
		diffIDs = append(diffIDs, l.DiffID)
	}
	cfg["rootfs"] = map[string]any{"type": "layers", "diff_ids": diffIDs}
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	man := readJSON(img.ManifestDigest)
	man["config"] = imagegen.Descriptor{MediaType: imagegen.MediaTypeOCIConfig, Digest: writeBlob(cfgBytes), Size: int64(len(cfgBytes))}
	var descs []imagegen.Descriptor
	for _, l := range layers {
		descs = append(descs, imagegen.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size})
	}
	man["layers"] = descs
	manBytes, err := json.Marshal(man)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := json.Marshal(imagegen.Index{SchemaVersion: 2, MediaType: imagegen.MediaTypeOCIIndex, Manifests: []imagegen.Descriptor{
		{MediaType: imagegen.MediaTypeOCIManifest, Digest: writeBlob(manBytes), Size: int64(len(manBytes))}}})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"index.json": idx, "oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return layers
}

// tarIsPadded reports whether the gzip blob's tar has bytes after its
// end-of-archive marker.
func tarIsPadded(t testing.TB, blob string) bool {
	t.Helper()
	f, err := os.Open(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		if _, err := tr.Next(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	rest, err := io.Copy(io.Discard, zr)
	if err != nil {
		t.Fatal(err)
	}
	return rest > 0
}

// TestForkPodmanBuild: `podman build` and `podman commit` of the forked
// podman on a lazily pulled base, with Go-written (unpadded) and padded layer
// tars: the build reads only what its RUN step reads (the base layers are
// never re-exported or fetched in full), the new image stacks on the very
// lazily served layers, runs with exact bytes, and can be saved, pushed
// (and pulled back eagerly, identical) and removed.
func TestForkPodmanBuild(t *testing.T) {
	forkBinary(t, "podman")
	img := cachedImage(t, forkBuildImage())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(t, reg.URL)
	padded := t.TempDir()
	paddedLayers := paddedLayout(t, img, padded)
	if !tarIsPadded(t, filepath.Join(padded, "blobs", "sha256", paddedLayers[0].Digest.Encoded())) || tarIsPadded(t, img.BlobPath(img.Layers[0].Digest)) {
		t.Fatal("the padded layout's base layer is not padded, or the generator's is")
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	extracted := t.TempDir()
	if err := testenv.ExtractImage(img.Dir, extracted); err != nil {
		t.Fatal(err)
	}
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: forkDaemonConfig(proxy.Host, reg.Host)})

	for _, tc := range []struct {
		name, layout string
		layers       []imagegen.Layer
	}{
		{"unpadded", img.Dir, img.Layers},
		{"padded", padded, paddedLayers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if _, err := testenv.Push(ctx, reg.URL, "fork/build-"+tc.name, "v1", tc.layout); err != nil {
				t.Fatal(err)
			}
			indexPush(t, reg, reg.Ref("fork/build-"+tc.name, "v1"))
			ref := proxy.Host + "/fork/build-" + tc.name + ":v1"
			var total int64
			for _, l := range tc.layers {
				total += l.Size
			}
			p := forkPodman(t, d, proxy.Host, reg.Host)

			proxy.Reset()
			if _, err := p.Pull(ref); err != nil {
				t.Fatalf("pull: %v\n%s", err, d.LogTail(30))
			}
			lazy := lazyDiffs(t, p.Root, d.MountPoint)
			if len(lazy) != len(tc.layers) {
				t.Fatalf("%d lazily served layers, want %d\n%s", len(lazy), len(tc.layers), d.LogTail(20))
			}
			t.Logf("pull: %s of %s", mib(proxy.Stats().BlobBytes()), mib(total))

			// podman build FROM the lazy image, reading one file of each layer.
			small := regularFiles(want, "opt/top", 1, false)[0]
			base := regularFiles(want, "usr/lib/base", 1, false)[0]
			ctxDir := t.TempDir()
			containerfile := fmt.Sprintf("FROM %s\nRUN cat /%s /%s > /copied && echo built > /built.txt\n", ref, small, base)
			if err := os.WriteFile(filepath.Join(ctxDir, "Containerfile"), []byte(containerfile), 0o644); err != nil {
				t.Fatal(err)
			}
			proxy.Reset()
			args := append([]string{"build", "--pull=never", "-t", "localhost/built-" + tc.name + ":1"}, testenv.BuildFlags()...)
			if _, _, err := p.Run(append(args, ctxDir)...); err != nil {
				t.Fatalf("podman build: %v\n%s", err, d.LogTail(20))
			}
			built := proxy.Stats()
			t.Logf("podman build: %s fetched (%d requests) of a %s image", mib(built.BlobBytes()), built.Total.Requests, mib(total))
			// The RUN step reads busybox and two small files: a few 1 MiB spans.
			if built.BlobBytes()*4 >= total {
				t.Errorf("podman build fetched %d bytes, want < 25 %% of the base image's %d (busybox and two small files)", built.BlobBytes(), total)
			}
			for _, l := range tc.layers {
				if n := built.ByDigest[l.Digest.String()].Bytes; n*2 > l.Size {
					t.Errorf("podman build fetched %d bytes of the %d-byte base layer %s", n, l.Size, l.Digest)
				}
			}
			builtRef := "localhost/built-" + tc.name + ":1"
			checkOnLazyBase(t, p, builtRef, lazy)
			out, stderr, err := p.RunContainer(builtRef, "/bin/sh", "-c", "cat /built.txt && sha256sum /copied")
			if err != nil {
				t.Fatalf("run built image: %v\n%s", err, stderr)
			}
			wantCopied := concatSHA256(t, extracted, want, small, base)
			if !strings.Contains(out, "built\n") || !strings.Contains(out, wantCopied+"  /copied") {
				t.Errorf("built image: %q, want built.txt and /copied with sha256 %s", out, wantCopied)
			}

			// podman commit of a container of the lazy image.
			proxy.Reset()
			name := "c-" + tc.name
			if _, stderr, err := p.Run("run", "--name", name, "--network", "none", ref, "/bin/sh", "-c", "echo committed > /c.txt"); err != nil {
				t.Fatalf("run: %v\n%s", err, stderr)
			}
			committed := "localhost/committed-" + tc.name + ":1"
			if _, stderr, err := p.Run("commit", name, committed); err != nil {
				t.Fatalf("podman commit: %v\n%s", err, stderr)
			}
			t.Logf("podman run + commit: %s fetched", mib(proxy.Stats().BlobBytes()))
			for _, l := range tc.layers {
				if n := proxy.Stats().ByDigest[l.Digest.String()].Bytes; n*2 > l.Size {
					t.Errorf("podman commit fetched %d bytes of the %d-byte base layer %s", n, l.Size, l.Digest)
				}
			}
			checkOnLazyBase(t, p, committed, lazy)
			if out, _, err := p.RunContainer(committed, "/bin/cat", "/c.txt"); err != nil || out != "committed\n" {
				t.Errorf("committed image: /c.txt = %q (%v)", out, err)
			}

			// save, push (everything is read now), an eager pull of the
			// pushed image is the built one.
			saved := filepath.Join(t.TempDir(), "built.tar")
			if _, stderr, err := p.Run("save", "-o", saved, builtRef); err != nil {
				t.Fatalf("podman save: %v\n%s", err, stderr)
			}
			if fi, err := os.Stat(saved); err != nil || fi.Size() < total/2 {
				t.Errorf("podman save wrote %v (%v), want the whole image", fi, err)
			}
			pushed := reg.Host + "/fork/pushed-" + tc.name + ":1"
			if _, stderr, err := p.Run("push", "--tls-verify=false", builtRef, pushed); err != nil {
				t.Fatalf("podman push: %v\n%s", err, stderr)
			}
			checkNoTOCAnnotation(t, reg, "fork/pushed-"+tc.name, "1")
			wantBuilt := want.Clone()
			got := stockEagerTree(t, pushed, reg.Host)
			if got["built.txt"].SHA256 != sha256hexString("built\n") || got["copied"].SHA256 != wantCopied {
				t.Errorf("pushed image: built.txt %+v, copied %+v", got["built.txt"], got["copied"])
			}
			if diffs := testenv.Diff(wantBuilt, got, fstree.IgnorePaths("built.txt", "copied"), fstree.IgnoreMtimes(fstree.TypeDir),
				fstree.IgnoreXattrs("trusted.overlay.", "security.selinux")); len(diffs) > 0 {
				if len(diffs) > 20 {
					diffs = diffs[:20]
				}
				t.Errorf("pushed built image differs from the base plus the build's files:\n%s", strings.Join(diffs, "\n"))
			}

			podmanOut(t, p, "rm", "--force", name)
			podmanOut(t, p, "rmi", builtRef, committed, ref)
			if n := len(lazyDiffs(t, p.Root, d.MountPoint)); n != 0 {
				t.Errorf("after rmi %d lazily served layers remain", n)
			}
		})
	}
}

// checkNoTOCAnnotation fails when the manifest of repo:tag in reg names a
// TOC digest on a layer: the fork annotates the base layers of a build with
// their TOC digest for the local commit only, a pushed image must not carry it.
func checkNoTOCAnnotation(t testing.TB, reg *testenv.Registry, repo, tag string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, reg.URL+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", imagegen.MediaTypeOCIManifest+", "+imagegen.MediaTypeDockerManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw struct {
		Layers []imagegen.Descriptor `json:"layers"`
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode == http.StatusOK {
		err = json.Unmarshal(b, &raw)
	} else if err == nil {
		err = fmt.Errorf("status %s", resp.Status)
	}
	if err != nil {
		t.Fatalf("manifest of %s:%s: %v", repo, tag, err)
	}
	for i, l := range raw.Layers {
		for k := range l.Annotations {
			if strings.Contains(k, "zstd-chunked") || strings.Contains(k, "stargz") {
				t.Errorf("pushed %s:%s: layer %d carries the annotation %s=%s", repo, tag, i, k, l.Annotations[k])
			}
		}
	}
	if len(raw.Layers) == 0 {
		t.Errorf("pushed %s:%s: manifest lists no layers:\n%s", repo, tag, b)
	}
}

// concatSHA256 returns the sha256 of the files paths of the build test
// image, concatenated (what `cat` of them writes), read from the image
// extracted to extracted and checked against want.
func concatSHA256(t testing.TB, extracted string, want fstree.Tree, paths ...string) string {
	t.Helper()
	h := digest.Canonical.Digester()
	for _, p := range paths {
		b, err := os.ReadFile(filepath.Join(extracted, p))
		if err != nil {
			t.Fatal(err)
		}
		if got := digest.FromBytes(b).Encoded(); got != want[p].SHA256 {
			t.Fatalf("extracted %s: sha256 %s, want %s", p, got, want[p].SHA256)
		}
		h.Hash().Write(b)
	}
	return h.Digest().Encoded()
}

func sha256hexString(s string) string { return digest.FromString(s).Encoded() }

// TestForkBuildahBud: the forked buildah pulls lazily (`buildah from`),
// builds on the lazy base with `buildah bud` and commits a working container
// (`buildah copy` + `buildah commit`), all without fetching the base layers.
func TestForkBuildahBud(t *testing.T) {
	bin := forkBinary(t, "buildah")
	img := cachedImage(t, forkBuildImage())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(t, reg.URL)
	directRef := push(t, reg, img, "fork/buildah", "v1")
	ref := proxy.Host + "/fork/buildah:v1"
	indexPush(t, reg, directRef)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: forkDaemonConfig(proxy.Host, reg.Host)})
	p := forkPodman(t, d, proxy.Host, reg.Host) // lists and removes what buildah made
	buildah := func(args ...string) string {
		t.Helper()
		global := []string{"--root", p.Root, "--runroot", p.RunRoot, "--storage-driver", "lazypull",
			"--storage-opt", "lazypull.config=" + d.ConfigPath, "--storage-opt", "lazypull.start=never"}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append(global, args...)...)
		cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(p.Dir, "containers.conf"),
			"CONTAINERS_REGISTRIES_CONF="+filepath.Join(p.Dir, "registries.conf"),
			"CONTAINERS_STORAGE_CONF="+filepath.Join(p.Dir, "storage.conf"))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("buildah %s: %v\n%s\n%s", strings.Join(args, " "), err, stderr.String(), d.LogTail(20))
		}
		return strings.TrimSpace(stdout.String())
	}
	t.Cleanup(func() { // before the podman harness's cleanup
		buildah("rm", "--all")
	})
	t.Logf("forked buildah: %s", buildah("--version"))

	proxy.Reset()
	ctr := buildah("from", "--pull-always", ref)
	pulled := proxy.Stats().BlobBytes()
	t.Logf("buildah from: %s of %s fetched", mib(pulled), mib(img.CompressedSize()))
	if pulled*100 >= img.CompressedSize()*5 {
		t.Errorf("buildah from fetched %d bytes, want < 5 %% of %d", pulled, img.CompressedSize())
	}
	lazy := lazyDiffs(t, p.Root, d.MountPoint)
	if len(lazy) != len(img.Layers) {
		t.Fatalf("%d lazily served layers after buildah from, want %d\n%s", len(lazy), len(img.Layers), d.LogTail(20))
	}

	// buildah copy + commit.
	file := filepath.Join(t.TempDir(), "added.txt")
	if err := os.WriteFile(file, []byte("added by buildah\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	proxy.Reset()
	buildah("copy", ctr, file, "/added.txt")
	buildah("commit", ctr, "localhost/bcommit:1")
	t.Logf("buildah copy + commit: %s fetched", mib(proxy.Stats().BlobBytes()))
	checkBaseNotFetched(t, proxy.Stats(), img.Layers, "buildah commit")
	checkOnLazyBase(t, p, "localhost/bcommit:1", lazy)
	if out, _, err := p.RunContainer("localhost/bcommit:1", "/bin/cat", "/added.txt"); err != nil || out != "added by buildah\n" {
		t.Errorf("buildah-committed image: /added.txt = %q (%v)", out, err)
	}

	// buildah bud FROM the lazy image.
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	small := regularFiles(want, "opt/top", 1, false)[0]
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "Containerfile"), []byte(fmt.Sprintf("FROM %s\nRUN sha256sum /%s > /sum.txt\n", ref, small)), 0o644); err != nil {
		t.Fatal(err)
	}
	proxy.Reset()
	buildah(append(append([]string{"bud", "--pull=never", "-t", "localhost/bud:1"}, testenv.BuildFlags()...), ctxDir)...)
	t.Logf("buildah bud: %s fetched", mib(proxy.Stats().BlobBytes()))
	checkBaseNotFetched(t, proxy.Stats(), img.Layers, "buildah bud")
	checkOnLazyBase(t, p, "localhost/bud:1", lazy)
	if out, _, err := p.RunContainer("localhost/bud:1", "/bin/cat", "/sum.txt"); err != nil || out != want[small].SHA256+"  /"+small+"\n" {
		t.Errorf("bud image: /sum.txt = %q (%v), want the sha256 of /%s", out, err, small)
	}
}

// checkBaseNotFetched fails when an operation fetched more than half of a
// base layer.
func checkBaseNotFetched(t testing.TB, st testenv.ProxyStats, layers []imagegen.Layer, what string) {
	t.Helper()
	for _, l := range layers {
		if n := st.ByDigest[l.Digest.String()].Bytes; n*2 > l.Size {
			t.Errorf("%s fetched %d bytes of the %d-byte base layer %s", what, n, l.Size, l.Digest)
		}
	}
}

// TestForkRootlessPull: the forked podman as an unprivileged user (subordinate
// IDs, XDG_RUNTIME_DIR, storage.conf driver "lazypull") starts the layer store
// itself (re-executing podman, in podman's user namespace), pulls lazily and
// runs a container that reads exact bytes and writes on top.
func TestForkRootlessPull(t *testing.T) {
	podman := forkBinary(t, "podman")
	img := cachedImage(t, forkBuildImage())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(t, reg.URL)
	directRef := push(t, reg, img, "fork/rootless", "v1")
	ref := proxy.Host + "/fork/rootless:v1"
	indexPush(t, reg, directRef)
	u := testenv.NewRootlessUser(t, testenv.RootlessUserOptions{Prefix: "lzf", SubIDFloor: 500000, Binaries: map[string]string{"podman": podman}})

	cfg := forkDaemonConfig(proxy.Host, reg.Host)
	cfg["root_dir"] = filepath.Join(u.Home, ".local", "share", "lazypull")
	cfg["mount_point"] = filepath.Join(u.RunDir, "lazypull", "store")
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		t.Fatal(err)
	}
	u.WriteFile(".config/lazypull/config.toml", buf.String())
	u.WriteFile(".config/containers/storage.conf", "[storage]\ndriver = \"lazypull\"\n")
	u.WriteFile(".config/containers/registries.conf", fmt.Sprintf("unqualified-search-registries = []\n\n[[registry]]\nlocation = %q\ninsecure = true\n", proxy.Host))
	u.WriteFile(".config/containers/containers.conf", "[containers]\ndefault_ulimits = []\nnetns = \"none\"\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n")
	t.Cleanup(func() { // before the user goes
		if out, err := u.Run("podman", "rmi", "--all", "--force"); err != nil {
			t.Errorf("rootless cleanup: %v\n%s", err, out)
		}
	})
	storageOpts := []string{"--storage-opt", "lazypull.start=reexec", "--storage-opt", "lazypull.start_timeout=60s"}

	proxy.Reset()
	id, err := u.Run("podman", append(storageOpts, "pull", "--quiet", ref)...)
	daemonLog := filepath.Join(cfg["root_dir"].(string), "daemon.log")
	if err != nil {
		b, _ := os.ReadFile(daemonLog)
		t.Fatalf("rootless forked podman pull: %v\n%s", err, b)
	}
	pulled := proxy.Stats().BlobBytes()
	t.Logf("rootless forked podman pull: image %.12s, %s of %s fetched", id, mib(pulled), mib(img.CompressedSize()))
	if pulled*100 >= img.CompressedSize()*5 {
		t.Errorf("rootless pull fetched %d bytes, want < 5 %% of %d", pulled, img.CompressedSize())
	}
	storage := filepath.Join(u.Home, ".local", "share", "containers", "storage")
	if n := len(lazyDiffs(t, storage, cfg["mount_point"].(string))); n != len(img.Layers) {
		b, _ := os.ReadFile(daemonLog)
		t.Errorf("%d layer diffs point into the rootless store, want %d\n%s", n, len(img.Layers), b)
	}

	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, dir := range []string{"usr/lib/base", "opt/top"} {
		for _, p := range regularFiles(want, dir, 40, false) {
			if want[p].Mode&0o004 != 0 && !strings.ContainsAny(p, " \t\n'\"\\$`*?[") && len(paths) < 8 {
				paths = append(paths, p)
			}
		}
	}
	out, err := u.Run("podman", append(storageOpts, "run", "--rm", ref, "/bin/sh", "-c",
		"sha256sum /"+strings.Join(paths, " /")+" && echo written > /etc/new-file && cat /etc/new-file")...)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if !strings.Contains(out, want[p].SHA256+"  /"+p) {
			t.Errorf("rootless container: sha256 of %s not %s in %q", p, want[p].SHA256, out)
		}
	}
	if !strings.HasSuffix(out, "written") {
		t.Errorf("rootless container could not write on top of the lazy layers: %q", out)
	}
	if total := proxy.Stats().BlobBytes(); total*2 > img.CompressedSize() {
		t.Errorf("rootless pull and run fetched %d bytes of %d", total, img.CompressedSize())
	}
}

// BenchmarkForkVsStock is the benchmark row of the fork: pull + first run
// of the e2e image (355 MB compressed), forked podman 5.6.2 (lazy, the image
// indexed in its registry) against stock podman 4.3.1 (eager), same registry
// on loopback, same run. Metrics: pull-s, run-s (a container reading a few
// files of every layer), MB fetched. Run with -benchtime=1x.
func BenchmarkForkVsStock(b *testing.B) {
	forkBinary(b, "podman")
	img := cachedImage(b, imagegen.E2E())
	reg := testenv.StartRegistry(b, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(b, reg.URL)
	directRef := push(b, reg, img, "lazypull/bench", "v1")
	indexPush(b, reg, directRef)
	ref := proxy.Host + "/lazypull/bench:v1"
	want, err := img.ExpectedTree()
	if err != nil {
		b.Fatal(err)
	}
	var paths []string
	for _, dir := range []string{"usr/lib/base", "usr/lib/app", "opt/data", "srv/small", "var/top"} {
		paths = append(paths, regularFiles(want, dir, 3, false)...)
	}
	for _, variant := range []string{"fork-lazy", "stock-4.3.1-eager"} {
		b.Run(variant, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				var p *testenv.Podman
				if variant == "fork-lazy" {
					d := testenv.StartDaemon(b, testenv.DaemonOptions{Config: forkDaemonConfig(proxy.Host, reg.Host)})
					p = forkPodman(b, d, proxy.Host)
				} else {
					p = testenv.NewPodman(b, testenv.PodmanOptions{InsecureRegistries: []string{proxy.Host}})
				}
				proxy.Reset()
				b.StartTimer()
				start := time.Now()
				if _, err := p.Pull(ref); err != nil {
					b.Fatal(err)
				}
				pull := time.Since(start)
				start = time.Now()
				if _, stderr, err := p.RunContainer(ref, append([]string{"/bin/sha256sum"}, prefixed(paths)...)...); err != nil {
					b.Fatalf("run: %v\n%s", err, stderr)
				}
				run := time.Since(start)
				b.StopTimer()
				b.ReportMetric(pull.Seconds(), "pull-s")
				b.ReportMetric(run.Seconds(), "run-s")
				b.ReportMetric(float64(proxy.Stats().BlobBytes())/1e6, "MB-fetched")
				b.Logf("%s: pull %v, first run %v, %s fetched", variant, pull.Round(time.Millisecond), run.Round(time.Millisecond), mib(proxy.Stats().BlobBytes()))
			}
		})
	}
}

func prefixed(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = "/" + p
	}
	sort.Strings(out)
	return out
}
