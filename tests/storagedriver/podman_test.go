package storagedrivertest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// lazypullPull runs `lazypull pull` (the binary under test) into the store
// of podman harness p, with p's registries.conf.
func lazypullPull(t *testing.T, d *testenv.Daemon, p *testenv.Podman, extra ...string) string {
	t.Helper()
	args := append([]string{"--config", d.ConfigPath, "pull", "--quiet", "--root", p.Root, "--runroot", p.RunRoot,
		"--storage-driver", "overlay", "--storage-opt", d.ALSOption()}, extra...)
	cmd := exec.Command(testenv.LazypullBinary(t), args...)
	cmd.Env = append(os.Environ(),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(p.Dir, "registries.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(p.Dir, "storage.conf"))
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("lazypull %s: %v\n%s\n%s", strings.Join(args, " "), err, stderr, d.LogTail(20))
	}
	return strings.TrimSpace(string(out))
}

// storedLayers returns the layer records podman's store has on disk.
func storedLayers(t *testing.T, p *testenv.Podman) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.Root, "overlay-layers", "layers.json"))
	if err != nil {
		t.Fatalf("layers.json: %v", err)
	}
	var recs []map[string]any
	if err := json.Unmarshal(b, &recs); err != nil {
		t.Fatalf("layers.json: %v", err)
	}
	return recs
}

// inspect returns `podman image inspect --format` of ref.
func inspect(t *testing.T, p *testenv.Podman, ref, format string) string {
	t.Helper()
	out, _, err := p.Run("image", "inspect", "--format", format, ref)
	if err != nil {
		t.Fatalf("podman image inspect: %v", err)
	}
	return strings.TrimSpace(out)
}

// TestStockPodmanReadsLazypullStore shows, rather than assumes, what stock
// podman 4.3.1 (containers/storage 1.43, containers/image 5.23) does with a
// store written by `lazypull pull` (containers/storage 1.59):
//
//   - An ordinary pull (--eager) gets exactly the IDs podman's own pull
//     gives, and podman lists, inspects, runs and removes it.
//   - A lazy pull's (--identity toc) layers and image record load in podman's storage: it
//     mounts the image from the layer store (the tree is exact) and removes
//     it. Listing, inspecting and running it fail in containers/image 5.23,
//     which requires a DiffID for every layer and predates TOC-identified
//     layers (podman >= 5 reads them: TestLazyImageReadableByContainersImage);
//     the expected error is pinned so that a change is noticed.
//   - A lazy pull with the default identity (DiffID, the record a download
//     writes): podman 4.3.1 lists, inspects, runs (exact bytes) and removes
//     it while its layers are served by the store.
func TestStockPodmanReadsLazypullStore(t *testing.T) {
	f := newFixture(t, testImage())
	ref := f.ref(testImage())
	img := f.images[ref]
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{f.proxy.Host, f.reg.Host}, StorageOpts: []string{f.daemon.ALSOption()}})
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("eager", func(t *testing.T) {
		id := lazypullPull(t, f.daemon, p, "--eager", ref)
		if id != img.ConfigDigest.Encoded() {
			t.Errorf("lazypull pull --eager: image %s, want %s", id, img.ConfigDigest.Encoded())
		}
		out, _, err := p.Run("images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}", "--no-trunc")
		if err != nil {
			t.Fatalf("podman images: %v", err)
		}
		if !strings.Contains(out, id) || !strings.Contains(out, ref) {
			t.Errorf("podman images = %q, want %s %s", out, id, ref)
		}
		ours := inspect(t, p, ref, "{{.ID}} {{.Digest}} {{.GraphDriver.Data.UpperDir}}")
		checkContainerFiles(t, p, ref, want)

		// podman's own pull of the same image gives the same IDs.
		other := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{f.reg.Host, f.proxy.Host}})
		if _, err := other.Pull(ref); err != nil {
			t.Fatalf("podman pull: %v", err)
		}
		theirs := strings.ReplaceAll(inspect(t, other, ref, "{{.ID}} {{.Digest}} {{.GraphDriver.Data.UpperDir}}"), other.Root, p.Root)
		if ours != theirs {
			t.Errorf("lazypull pull --eager: image, digest, top layer = %q; podman pull: %q", ours, theirs)
		}
		if _, _, err := p.Run("rmi", ref); err != nil {
			t.Fatalf("podman rmi: %v", err)
		}
		if recs := storedLayers(t, p); len(recs) != 0 {
			t.Errorf("%d layers left after podman rmi, want 0", len(recs))
		}
	})

	t.Run("lazy", func(t *testing.T) {
		lazypullPull(t, f.daemon, p, "--identity", "toc", ref) // the separate namespace this test pins
		recs := storedLayers(t, p)
		toc := 0
		for _, r := range recs {
			if r["toc-digest"] != nil {
				toc++
			}
		}
		if toc != len(lazyLayers(img)) || len(recs) != len(img.Layers) {
			t.Errorf("layers.json has %d records, %d of them TOC-identified; want %d and %d", len(recs), toc, len(img.Layers), len(lazyLayers(img)))
		}
		mnt, err := p.ImageMount(ref)
		if err != nil {
			t.Fatalf("podman image mount: %v", err)
		}
		got, err := testenv.Snapshot(mnt)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.ImageUnmount(ref); err != nil {
			t.Errorf("podman image unmount: %v", err)
		}
		checkTree(t, want, got, "lazily pulled image mounted by podman 4.3.1")
		if _, _, err := p.Run("image", "inspect", ref); err == nil || !strings.Contains(err.Error(), "size for layer") {
			t.Errorf("podman 4.3.1 image inspect of TOC-identified layers: %v; want containers/image 5.23's \"size for layer ... is unknown\"", err)
		}
		if _, _, err := p.Run("rmi", ref); err != nil {
			t.Fatalf("podman rmi: %v", err)
		}
		if recs := storedLayers(t, p); len(recs) != 0 {
			t.Errorf("%d layers left after podman rmi, want 0", len(recs))
		}
		if _, _, err := p.Run("images"); err != nil {
			t.Errorf("podman images after rmi: %v", err)
		}
	})

	// The default identity (DiffID): the record a download writes, so
	// podman 4.3.1 lists, inspects and runs the lazy image as its own.
	t.Run("lazy-diffid", func(t *testing.T) {
		id := lazypullPull(t, f.daemon, p, ref)
		if id != img.ConfigDigest.Encoded() {
			t.Errorf("lazypull pull: image %s, want the config digest %s", id, img.ConfigDigest.Encoded())
		}
		lazy := 0
		for _, r := range storedLayers(t, p) {
			if r["toc-digest"] != nil || r["diff-digest"] == nil || r["compressed-diff-digest"] == nil {
				t.Errorf("layer record %v, want a compressed and an uncompressed digest and no TOC digest", r)
			}
			if target, err := os.Readlink(filepath.Join(p.Root, "overlay", r["id"].(string), "diff")); err == nil && strings.HasPrefix(target, f.daemon.MountPoint+"/") {
				lazy++
			}
		}
		if lazy != len(lazyLayers(img)) {
			t.Errorf("%d layers served by the store, want %d", lazy, len(lazyLayers(img)))
		}
		if out := inspect(t, p, ref, "{{.ID}}"); out != id {
			t.Errorf("podman 4.3.1 image inspect: %q, want %s", out, id)
		}
		checkContainerFiles(t, p, ref, want)
		if _, _, err := p.Run("rmi", ref); err != nil {
			t.Fatalf("podman rmi: %v", err)
		}
		if recs := storedLayers(t, p); len(recs) != 0 {
			t.Errorf("%d layers left after podman rmi, want 0", len(recs))
		}
	})
}

// checkContainerFiles runs sha256sum over a few files of every layer in a
// container of image and compares with want.
func checkContainerFiles(t *testing.T, p *testenv.Podman, image string, want fstree.Tree) {
	t.Helper()
	var paths []string
	for _, dir := range []string{"usr/lib/base", "usr/lib/app", "opt/data", "srv/small", "var/top"} {
		n := 0
		for _, path := range want.Paths() {
			if node := want[path]; node.Type == fstree.TypeFile && strings.HasPrefix(path, dir+"/") && node.Size > 0 && n < 3 {
				paths = append(paths, path)
				n++
			}
		}
	}
	args := []string{"/bin/sha256sum"}
	for _, path := range paths {
		args = append(args, "/"+path)
	}
	out, stderr, err := p.RunContainer(image, args...)
	if err != nil {
		t.Fatalf("podman run sha256sum: %v\n%s", err, stderr)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			got[strings.TrimPrefix(f[1], "/")] = f[0]
		}
	}
	for _, path := range paths {
		if got[path] != want[path].SHA256 {
			t.Errorf("sha256 of %s in the container = %q, want %q", path, got[path], want[path].SHA256)
		}
	}
}

// TestStockPodmanRunsVerifiedLazyImage: `lazypull pull --verify` waits until
// the layer store has fetched and verified every lazy layer, then gives the
// layers their DiffIDs. Stock podman 4.3.1 then lists, inspects, runs and
// removes the image, while its layers are still served by the store.
func TestStockPodmanRunsVerifiedLazyImage(t *testing.T) {
	f := newRegistryFixture(t, testImage())
	cfg := daemonConfig(f.proxy.Host, f.reg.Host)
	cfg["prefetch"] = map[string]any{"enabled": true}
	cfg["verification"] = map[string]any{"enabled": true}
	f.daemon = testenv.StartDaemon(t, testenv.DaemonOptions{Config: cfg})
	ref := f.ref(testImage())
	img := f.images[ref]
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{f.proxy.Host, f.reg.Host}, StorageOpts: []string{f.daemon.ALSOption()}})
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	id := lazypullPull(t, f.daemon, p, "--identity", "toc", "--verify", ref)
	recs := storedLayers(t, p)
	promoted := 0
	for _, r := range recs {
		if r["toc-digest"] != nil && r["diff-digest"] != nil {
			promoted++
		}
	}
	if promoted != len(lazyLayers(img)) {
		t.Errorf("%d layers have a TOC digest and a DiffID after --verify, want %d", promoted, len(lazyLayers(img)))
	}
	links, _ := filepath.Glob(filepath.Join(p.Root, "overlay", "*", "diff"))
	lazy := 0
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, f.daemon.MountPoint+"/") {
			lazy++
		}
	}
	if lazy != len(lazyLayers(img)) {
		t.Errorf("%d layer diffs point into the store, want %d", lazy, len(lazyLayers(img)))
	}
	out, _, err := p.Run("images", "--format", "{{.ID}}", "--no-trunc")
	if err != nil || !strings.Contains(out, id) {
		t.Fatalf("podman 4.3.1 images = %q, %v; want %s listed", out, err, id)
	}
	if got := inspect(t, p, ref, "{{.ID}}"); !strings.HasPrefix(id, got) && got != id {
		t.Errorf("podman 4.3.1 image inspect ID %q, lazypull pull said %q", got, id)
	}
	checkContainerFiles(t, p, ref, want)
	if _, _, err := p.Run("rmi", ref); err != nil {
		t.Fatalf("podman rmi: %v", err)
	}
	if recs := storedLayers(t, p); len(recs) != 0 {
		t.Errorf("%d layers left after podman rmi, want 0", len(recs))
	}
}
