package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

// Stock podman 5.4.2 (Debian trixie, in testenv.Chroot) on a store filled
// by `lazypull pull`: the image has a Go-written base layer (busybox) and a
// layer written by GNU tar, whose tar stream ends with record padding (zero
// blocks up to a multiple of 10240 bytes after the end-of-archive marker).
// Both are served lazily. Everything a user does must work: run with exact
// bytes, podman build, podman commit and buildah from/commit on top of it
// sharing the lazy layers (without reading them), save (exact tar streams),
// push (the original blobs),
// `podman pull` of the same image reusing it, `podman images` while the
// layer store is stopped, and `lazypull verify` failing fast with its reason,
// stopping on SIGTERM without leaving mounts, and succeeding after a store
// restart. Fails on 064ea42 (main before this change): build and commit
// fail with "inconsistent layer size", podman pull downloads the image again
// and leaves the lazy one as <none>, podman images fails with the store
// stopped, verify waits its whole timeout and leaves GRAPHROOT/overlay mounted
// when killed.
func TestStockPodman5LazypullPull(t *testing.T) {
	ch := testenv.NewChroot(t)
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(t, reg.URL)
	pad := newPaddedImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := testenv.Push(ctx, reg.URL, "lazypull/stock5", "padded", pad.dir); err != nil {
		t.Fatal(err)
	}
	directRef := reg.Ref("lazypull/stock5", "padded")
	ref := proxy.Host + "/lazypull/stock5:padded"
	// Indexed on "another machine", as users do (the pull itself is lazy).
	out := runLazypull(t, map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}},
		"index": map[string]any{"min_layer_size": "1MiB"}}, "index", "--push", directRef)
	t.Logf("lazypull index: %s", out)

	// The index is in the test's own registry, which the store is told to
	// trust (trust_indexes_for), as an operator names their own: without
	// it a build's reads deep in a layer wait for the checkpoint proof,
	// which streams the layer (tested in layerstore's adversarial tests),
	// and the byte counts below would measure that instead.
	trusted := []string{proxy.Host + "/"}
	daemonCfg := map[string]any{
		"registry":     map[string]any{"insecure": []string{proxy.Host}},
		"index":        map[string]any{"min_layer_size": "1MiB", "on_demand": "off"},
		"prefetch":     map[string]any{"enabled": false},
		"verification": map[string]any{"enabled": false, "trust_indexes_for": trusted},
	}
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Dir: ch.SharedDir(t, "lazypull"), Config: daemonCfg})
	p := podman5(t, ch, []string{proxy.Host}, d.ALSOption())

	// lazypull pull: lazy, layers served by the store, the record a
	// download would write.
	proxy.Reset()
	id := stockLazypullPull(t, d, p, ref)
	pulled := proxy.Stats().BlobBytes()
	t.Logf("lazypull pull: image %s, %d bytes of blobs fetched for a %d-byte image", id, pulled, pad.blobBytes)
	if pulled*100 >= pad.blobBytes*10 {
		t.Errorf("lazypull pull fetched %d bytes, want < 10 %% of %d", pulled, pad.blobBytes)
	}
	if links := alsDiffLinks(t, p.Root, d.MountPoint); len(links) != 2 {
		t.Fatalf("%d layer diffs point into the store, want 2: %v\n%s", len(links), links, d.LogTail(30))
	}
	if id != pad.configDigest.Encoded() {
		t.Errorf("image ID %s, want the config digest %s (what podman's own pull gives)", id, pad.configDigest.Encoded())
	}
	recs := map[string]map[string]any{}
	for _, r := range readLayerRecords(t, p.Root) {
		if d, ok := r["diff-digest"].(string); ok {
			recs[d] = r
		}
	}
	for _, l := range pad.layers {
		r := recs[l.diffID.String()]
		if r == nil || r["compressed-diff-digest"] != l.digest.String() || r["diff-size"] != float64(l.diffSize) || r["toc-digest"] != nil {
			t.Errorf("layer record for %s = %v, want compressed digest %s, diff-size %d (the tar's exact length), no TOC digest", l.diffID, r, l.digest, l.diffSize)
		}
	}

	// lazypull verify with prefetch and verification off: fails at once,
	// saying why.
	start := time.Now()
	vout, err := runVerify(t, d, p, "2m", ref)
	took := time.Since(start)
	t.Logf("lazypull verify (prefetch off): %s, %v:\n%s", took.Round(time.Millisecond), err, vout)
	if err == nil || took > 30*time.Second || !strings.Contains(vout, "neither prefetched nor verified") {
		t.Errorf("lazypull verify with prefetch off: %v after %s, want a failure within 30s naming prefetch and verification\n%s", err, took, vout)
	}

	// verify against a slowly prefetching store, SIGTERM: it stops at
	// once and leaves containers/storage's bind mount of GRAPHROOT/overlay
	// unmounted.
	restartDaemon(t, d, daemonCfg, map[string]any{"enabled": true, "bandwidth": "16KiB"}, true)
	overlayHome := filepath.Join(p.Root, "overlay")
	for _, m := range mustMounts(t, overlayHome) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH) // podman's own, if it left one
	}
	cmd := verifyCommand(t, d, p, "10m", ref)
	var vbuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &vbuf, &vbuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "lazypull verify to mount "+overlayHome, func() bool { return len(mustMounts(t, overlayHome)) > 0 })
	time.Sleep(time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Logf("lazypull verify after SIGTERM: %v\n%s", err, vbuf.String())
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Errorf("lazypull verify still running 20s after SIGTERM\n%s", vbuf.String())
	}
	if left := mustMounts(t, overlayHome); len(left) > 0 {
		t.Errorf("lazypull verify left %v mounted after SIGTERM", left)
	}
	restartDaemon(t, d, daemonCfg, map[string]any{"enabled": false}, false)

	// Exact bytes in a container, from both layers.
	out, stderr, err := p.RunContainer(ref, "/bin/sha256sum", "/opt/padded/big.bin", "/opt/padded/notes.txt")
	if err != nil {
		t.Fatalf("podman run: %v\n%s", err, stderr)
	}
	for name, sum := range pad.sums {
		if !strings.Contains(out, sum+"  /opt/padded/"+name) {
			t.Errorf("podman run: sha256 of %s not %s in %q", name, sum, out)
		}
	}

	// podman build FROM the lazy image: works on the padded layer and
	// reads nothing of the base layers beyond what RUN runs (busybox).
	ctxDir := ch.SharedDir(t, "build")
	if err := os.WriteFile(filepath.Join(ctxDir, "Containerfile"), []byte("FROM "+ref+"\nRUN echo built > /built\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	proxy.Reset()
	args := append([]string{"build", "--pull=never", "-t", "localhost/built:1"}, testenv.BuildFlags()...)
	if _, stderr, err := p.Run(append(args, ctxDir)...); err != nil {
		t.Errorf("podman build FROM the lazy image: %v\n%s", err, stderr)
	} else {
		built := proxy.Stats().BlobBytes()
		t.Logf("podman build: %d bytes of blobs fetched", built)
		if built*100 >= pad.blobBytes*20 {
			t.Errorf("podman build fetched %d bytes, want < 20 %% of the image's %d (the base layers must not be read)", built, pad.blobBytes)
		}
		if out, stderr, err := p.RunContainer("localhost/built:1", "/bin/sh", "-c", "cat /built; sha256sum /opt/padded/big.bin"); err != nil || !strings.Contains(out, "built") || !strings.Contains(out, pad.sums["big.bin"]) {
			t.Errorf("podman run of the built image: %q, %v\n%s", out, err, stderr)
		}
		checkShared(t, p, pad, "podman build")
	}

	// podman commit of a container of the lazy image.
	if _, stderr, err := p.Run("run", "--name", "c1", ref, "/bin/sh", "-c", "echo committed > /committed"); err != nil {
		t.Fatalf("podman run: %v\n%s", err, stderr)
	}
	if _, stderr, err := p.Run("commit", "c1", "localhost/committed:1"); err != nil {
		t.Errorf("podman commit: %v\n%s", err, stderr)
	} else {
		if out, _, err := p.RunContainer("localhost/committed:1", "/bin/cat", "/committed"); err != nil || strings.TrimSpace(out) != "committed" {
			t.Errorf("podman run of the committed image: %q, %v", out, err)
		}
		checkShared(t, p, pad, "podman commit")
	}

	// buildah (1.39.3) from and commit on the lazy image.
	bctr, err := runBuildah(ch, p, d, append(append([]string{"from", "--pull=never"}, testenv.BuildFlags()...), ref)...)
	if err != nil {
		t.Errorf("buildah from: %v", err)
	} else if _, err := runBuildah(ch, p, d, "commit", bctr, "localhost/bcommitted:1"); err != nil {
		t.Errorf("buildah commit: %v", err)
	} else {
		checkShared(t, p, pad, "buildah commit")
		if _, err := runBuildah(ch, p, d, "rm", bctr); err != nil {
			t.Errorf("buildah rm: %v", err)
		}
	}

	// podman save: the layers in the archive (compressed again by
	// containers/image for OCI archives) hold the exact tar streams.
	archive := filepath.Join(ch.SharedDir(t, "save"), "image.tar")
	if _, stderr, err := p.Run("save", "--format", "oci-archive", "-o", archive, ref); err != nil {
		t.Errorf("podman save: %v\n%s", err, stderr)
	} else {
		got := archiveDigests(t, archive)
		for _, l := range pad.layers {
			if !got[l.diffID] {
				t.Errorf("podman save: no layer with DiffID %s (the exact tar stream) in the archive", l.diffID)
			}
		}
	}

	// podman push to another tag: the registry gets the same layers.
	if _, stderr, err := p.Run("push", ref, "docker://"+proxy.Host+"/lazypull/stock5:pushed"); err != nil {
		t.Errorf("podman push: %v\n%s", err, stderr)
	} else {
		got := layersOf(t, reg, "lazypull/stock5", "pushed")
		if len(got) != len(pad.layers) {
			t.Errorf("pushed manifest has %d layers, want %d", len(got), len(pad.layers))
		}
		for i := range got {
			if i < len(pad.layers) && got[i].Digest != pad.layers[i].digest.String() {
				t.Errorf("pushed layer %d is %s, want the original blob %s", i, got[i].Digest, pad.layers[i].digest)
			}
		}
	}

	// podman pull of the same image: no download, the lazy image kept
	// (same ID, its name, nothing dangling).
	proxy.Reset()
	if _, stderr, err := p.Run("pull", ref); err != nil {
		t.Fatalf("podman pull after lazypull pull: %v\n%s", err, stderr)
	}
	repulled := proxy.Stats().BlobBytes()
	t.Logf("podman pull after lazypull pull: %d bytes of blobs fetched", repulled)
	if repulled*100 >= pad.blobBytes {
		t.Errorf("podman pull after lazypull pull fetched %d bytes, want < 1 %% of %d (only the config)", repulled, pad.blobBytes)
	}
	if got := inspectID(t, p, ref); got != id {
		t.Errorf("after podman pull, %s is image %s, want the lazy image %s", ref, got, id)
	}
	if out, _, _ := p.Run("images", "-q", "--filter", "dangling=true"); strings.TrimSpace(out) != "" {
		t.Errorf("dangling images after podman pull: %q", out)
	}
	checkShared(t, p, pad, "podman pull")

	// The layer store stopped: podman images still lists the whole store
	// (sizes come from the layer records).
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	out, stderr, err = p.Run("images", "--format", "{{.ID}} {{.Size}}")
	if err != nil || !strings.Contains(out, id[:12]) {
		t.Errorf("podman images with the layer store stopped: %q, %v\n%s", out, err, stderr)
	}

	// A restarted store (with prefetch): verify asks it to serve the
	// layers again and waits for their verification.
	restartDaemon(t, d, daemonCfg, map[string]any{"enabled": true}, true)
	vout, err = runVerify(t, d, p, "3m", ref)
	if err != nil || !strings.Contains(vout, "2 lazy layers identified by DiffID verified") {
		t.Errorf("lazypull verify after a store restart: %v\n%s\n%s", err, vout, d.LogTail(30))
	}

	// The registry gone and the store restarted: it cannot serve the
	// layers, and verify says so at once.
	proxy.Close()
	restartDaemon(t, d, daemonCfg, map[string]any{"enabled": true}, true)
	start = time.Now()
	vout, err = runVerify(t, d, p, "2m", ref)
	took = time.Since(start)
	t.Logf("lazypull verify (registry gone): %s, %v:\n%s", took.Round(time.Millisecond), err, vout)
	if err == nil || took > 30*time.Second || !strings.Contains(vout, "does not serve it") {
		t.Errorf("lazypull verify with the registry gone: %v after %s, want a failure within 30s saying the store does not serve the layer\n%s", err, took, vout)
	}
}

// paddedImage is the test image of TestStockPodman5LazypullPull.
type paddedImage struct {
	dir          string
	configDigest digest.Digest
	layers       []paddedLayer
	blobBytes    int64
	sums         map[string]string // sha256 of the files in /opt/padded
}

type paddedLayer struct {
	digest, diffID digest.Digest
	diffSize       int64
}

// newPaddedImage writes an OCI layout: a generated busybox base layer (Go's
// tar writer, no padding) and a layer made by GNU tar, whose stream ends in
// record padding that Go's tar writer does not reproduce.
func newPaddedImage(t *testing.T) *paddedImage {
	t.Helper()
	const mib = 1 << 20
	base := cachedImage(t, imagegen.Options{Name: "stock5-base", Seed: 51, Layers: []imagegen.LayerSpec{
		{Compression: imagegen.Gzip, Dir: "usr/lib/base", Busybox: true, SmallFiles: 40, Random: []int64{3 * mib}},
	}})
	work := t.TempDir()
	tree := filepath.Join(work, "tree", "opt", "padded")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 9))
	big := make([]byte, 3*mib+777)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	notes := bytes.Repeat([]byte("padded layer written by GNU tar\n"), 100)
	img := &paddedImage{dir: filepath.Join(work, "layout"), sums: map[string]string{}}
	for name, b := range map[string][]byte{"big.bin": big, "notes.txt": notes} {
		if err := os.WriteFile(filepath.Join(tree, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		img.sums[name] = hex.EncodeToString(s[:])
	}
	tarPath := filepath.Join(work, "layer.tar")
	if out, err := exec.Command("tar", "--numeric-owner", "--owner=0", "--group=0", "--mtime=@1700000000", "--sort=name",
		"-C", filepath.Join(work, "tree"), "-cf", tarPath, "opt").CombinedOutput(); err != nil {
		t.Fatalf("GNU tar: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	// The precondition of the bug: Go's tar writer (buildah's tar filter)
	// writes this stream back shorter.
	if rewritten := rewriteTar(t, raw); len(raw)%10240 != 0 || rewritten >= int64(len(raw)) {
		t.Fatalf("GNU tar wrote %d bytes (rewritten by Go: %d); want record padding", len(raw), rewritten)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()

	// The layout: the base's blobs, the new layer, config and manifest.
	blobs := filepath.Join(img.dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) digest.Digest {
		d := digest.FromBytes(b)
		if err := os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	var manifest map[string]any
	mustJSON(t, base.BlobPath(base.ManifestDigest), &manifest)
	var config map[string]any
	mustJSON(t, base.BlobPath(base.ConfigDigest), &config)
	for _, l := range base.Layers {
		b, err := os.ReadFile(base.BlobPath(l.Digest))
		if err != nil {
			t.Fatal(err)
		}
		put(b)
		img.layers = append(img.layers, paddedLayer{digest: l.Digest, diffID: l.DiffID, diffSize: l.DiffSize})
		img.blobBytes += l.Size
	}
	layerDigest := put(gz.Bytes())
	diffID := digest.FromBytes(raw)
	img.layers = append(img.layers, paddedLayer{digest: layerDigest, diffID: diffID, diffSize: int64(len(raw))})
	img.blobBytes += int64(gz.Len())
	rootfs := config["rootfs"].(map[string]any)
	rootfs["diff_ids"] = append(rootfs["diff_ids"].([]any), diffID.String())
	if h, ok := config["history"].([]any); ok {
		config["history"] = append(h, map[string]any{"created_by": "GNU tar"})
	}
	cb, _ := json.Marshal(config)
	img.configDigest = put(cb)
	manifest["config"].(map[string]any)["digest"] = img.configDigest.String()
	manifest["config"].(map[string]any)["size"] = len(cb)
	manifest["layers"] = append(manifest["layers"].([]any), map[string]any{
		"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest.String(), "size": gz.Len()})
	mb, _ := json.Marshal(manifest)
	md := put(mb)
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{map[string]any{
		"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.String(), "size": len(mb)}}})
	for name, b := range map[string][]byte{"index.json": index, "oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`)} {
		if err := os.WriteFile(filepath.Join(img.dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// rewriteTar returns the length of raw written back by Go's tar writer (as
// buildah's tar filter does).
func rewriteTar(t *testing.T, raw []byte) int64 {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(raw))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return int64(out.Len())
}

func mustJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// lazypullCommand returns `lazypull <args>` on the store of p (with p's
// registries.conf and storage.conf) and the daemon d's configuration.
func lazypullCommand(t *testing.T, d *testenv.Daemon, p *testenv.Podman, args ...string) *exec.Cmd {
	t.Helper()
	all := append([]string{"--config", d.ConfigPath}, args...)
	all = append(all[:3:3], append([]string{"--root", p.Root, "--runroot", p.RunRoot, "--storage-driver", "overlay", "--storage-opt", d.ALSOption()}, all[3:]...)...)
	cmd := exec.Command(testenv.LazypullBinary(t), all...)
	cmd.Env = append(os.Environ(),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(p.Dir, "registries.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(p.Dir, "storage.conf"))
	return cmd
}

// stockLazypullPull runs `lazypull pull --quiet ref` into p's store and
// returns the image ID.
func stockLazypullPull(t *testing.T, d *testenv.Daemon, p *testenv.Podman, ref string) string {
	t.Helper()
	cmd := lazypullCommand(t, d, p, "pull", "--quiet", ref)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("lazypull pull: %v\n%s\n%s", err, stderr.String(), d.LogTail(20))
	}
	return strings.TrimSpace(string(out))
}

func verifyCommand(t *testing.T, d *testenv.Daemon, p *testenv.Podman, timeout, ref string) *exec.Cmd {
	return lazypullCommand(t, d, p, "verify", "--timeout", timeout, ref)
}

// runVerify runs `lazypull verify` and returns its combined output.
func runVerify(t *testing.T, d *testenv.Daemon, p *testenv.Podman, timeout, ref string) (string, error) {
	out, err := verifyCommand(t, d, p, timeout, ref).CombinedOutput()
	return string(out), err
}

// restartDaemon stops d and starts it again with cfg, whose prefetch and
// verification tables are replaced.
func restartDaemon(t *testing.T, d *testenv.Daemon, cfg map[string]any, prefetch map[string]any, verify bool) {
	t.Helper()
	_ = d.Stop()
	c := map[string]any{}
	for k, v := range cfg {
		c[k] = v
	}
	verification := map[string]any{"enabled": verify}
	if v, ok := cfg["verification"].(map[string]any); ok && v["trust_indexes_for"] != nil {
		verification["trust_indexes_for"] = v["trust_indexes_for"]
	}
	c["prefetch"], c["verification"] = prefetch, verification
	c["root_dir"], c["mount_point"], c["socket"], c["log_level"] = d.Root, d.MountPoint, d.Socket, "debug"
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.ConfigPath, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatalf("restart the layer store: %v\n%s", err, d.LogTail(20))
	}
}

// checkShared checks that the store holds each layer of pad once: what
// podman made after the lazy pull uses the lazily served layers instead of
// copies of them.
func checkShared(t *testing.T, p *testenv.Podman, pad *paddedImage, after string) {
	t.Helper()
	n := map[string]int{}
	for _, r := range readLayerRecords(t, p.Root) {
		if d, ok := r["diff-digest"].(string); ok {
			n[d]++
		}
	}
	for _, l := range pad.layers {
		if n[l.diffID.String()] != 1 {
			t.Errorf("after %s, the store has %d layers with DiffID %s, want 1 (the lazily served one, shared)", after, n[l.diffID.String()], l.diffID)
		}
	}
}

// runBuildah runs stock buildah in ch on p's storage (with d's store) and
// returns its trimmed stdout.
func runBuildah(ch *testenv.Chroot, p *testenv.Podman, d *testenv.Daemon, args ...string) (string, error) {
	name, argv := ch.Command("buildah", append([]string{"--root", p.Root, "--runroot", p.RunRoot, "--storage-driver", "overlay", "--storage-opt", d.ALSOption()}, args...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, argv...)
	cmd.Env = append(os.Environ(),
		"CONTAINERS_CONF="+filepath.Join(p.Dir, "containers.conf"),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(p.Dir, "registries.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(p.Dir, "storage.conf"),
		"PODMAN_IGNORE_CGROUPSV1_WARNING=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("buildah %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// archiveDigests returns the digests of the files of a tar archive (an OCI
// archive) and, for gzip-compressed ones, of their decompressed content.
func archiveDigests(t *testing.T, path string) map[digest.Digest]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[digest.Digest]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[digest.FromBytes(b)] = true
		if zr, err := gzip.NewReader(bytes.NewReader(b)); err == nil {
			if raw, err := io.ReadAll(zr); err == nil {
				out[digest.FromBytes(raw)] = true
			}
		}
	}
}

func readLayerRecords(t *testing.T, root string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	mustJSON(t, filepath.Join(root, "overlay-layers", "layers.json"), &recs)
	return recs
}

func inspectID(t *testing.T, p *testenv.Podman, ref string) string {
	t.Helper()
	out, stderr, err := p.Run("image", "inspect", "--format", "{{.Id}}", ref)
	if err != nil {
		t.Fatalf("podman image inspect %s: %v\n%s", ref, err, stderr)
	}
	return strings.TrimSpace(out)
}

func mustMounts(t *testing.T, dir string) []string {
	t.Helper()
	m, err := testenv.MountsBelow(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range m {
		if p == dir {
			out = append(out, p)
		}
	}
	return out
}
