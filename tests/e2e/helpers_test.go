// Package e2e runs lazypull end to end with the real parts: `lazypull serve`
// (FUSE), stock podman 4.3.1 with runc, docker-registry on 127.0.0.1, and
// generated test images. Run as root (make test-e2e sets LAZYPULL_BIN).
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// cachedImage returns a generated image from the shared image cache.
func cachedImage(t testing.TB, o imagegen.Options) *imagegen.Image {
	t.Helper()
	img, err := imagegen.Cached(imagegen.CacheDir(), o)
	if err != nil {
		t.Fatalf("generate %s image: %v", o.Name, err)
	}
	return img
}

// push pushes img into reg as repo:tag and returns the reference.
func push(t testing.TB, reg *testenv.Registry, img *imagegen.Image, repo, tag string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := testenv.Push(ctx, reg.URL, repo, tag, img.Dir); err != nil {
		t.Fatalf("push %s: %v", img.Options.Name, err)
	}
	return reg.Ref(repo, tag)
}

// indexedLayers returns the layers of img that lazypull serves with the
// given minimum size (gzip or tar, at least min bytes).
func indexedLayers(img *imagegen.Image, min int64) []imagegen.Layer {
	var out []imagegen.Layer
	for _, l := range img.Layers {
		if l.Size >= min && l.Compression != imagegen.Zstd {
			out = append(out, l)
		}
	}
	return out
}

// runLazypull runs the lazypull binary with a configuration of its own
// (e.g. `lazypull index` from another "machine").
func runLazypull(t testing.TB, cfg map[string]any, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, ok := cfg["root_dir"]; !ok {
		cfg["root_dir"] = filepath.Join(dir, "root")
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testenv.LazypullBinary(t), append([]string{"--config", path}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("lazypull %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// alsDiffLinks returns, for podman's store under root, the layer diff
// directories that are symlinks into the lazypull mount.
func alsDiffLinks(t testing.TB, root, mount string) []string {
	t.Helper()
	diffs, err := filepath.Glob(filepath.Join(root, "overlay", "*", "diff"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range diffs {
		target, err := os.Readlink(d)
		if err == nil && strings.HasPrefix(target, mount+"/") {
			out = append(out, target)
		}
	}
	sort.Strings(out)
	return out
}

// regularFiles returns up to n regular files of tree whose path starts with
// prefix, largest first when big, smallest first otherwise.
func regularFiles(tree fstree.Tree, prefix string, n int, big bool) []string {
	var paths []string
	for _, p := range tree.Paths() {
		if tree[p].Type == fstree.TypeFile && strings.HasPrefix(p, prefix) && tree[p].Size > 0 {
			paths = append(paths, p)
		}
	}
	sort.SliceStable(paths, func(i, j int) bool {
		if big {
			return tree[paths[i]].Size > tree[paths[j]].Size
		}
		return tree[paths[i]].Size < tree[paths[j]].Size
	})
	if len(paths) > n {
		paths = paths[:n]
	}
	return paths
}

// checkFilesInContainer runs sha256sum over paths in a container of image
// and compares with the expected tree.
func checkFilesInContainer(t testing.TB, p *testenv.Podman, image string, want fstree.Tree, paths []string) {
	t.Helper()
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
		if sum, path, ok := strings.Cut(line, "  "); ok {
			got[strings.TrimPrefix(path, "/")] = sum
		}
	}
	for _, path := range paths {
		if got[path] != want[path].SHA256 {
			t.Errorf("sha256 of %s in the container = %q, want %q", path, got[path], want[path].SHA256)
		}
	}
}

// compareTrees snapshots the lazily pulled image's rootfs and compares it
// with want (every path, type, mode, owner, size, mtime, xattr, link target
// and file sha256).
func compareTrees(t testing.TB, p *testenv.Podman, image string, want fstree.Tree, what string) {
	t.Helper()
	mnt, err := p.ImageMount(image)
	if err != nil {
		t.Fatalf("podman image mount: %v", err)
	}
	defer p.ImageUnmount(image)
	got, err := testenv.Snapshot(mnt)
	if err != nil {
		t.Fatalf("snapshot %s: %v", what, err)
	}
	if diffs := testenv.Diff(want, got, fstree.IgnoreXattrs("trusted.overlay.", "security.selinux")); len(diffs) > 0 {
		if len(diffs) > 20 {
			diffs = append(diffs[:20], fmt.Sprintf("... and %d more", len(diffs)-20))
		}
		t.Errorf("%s differs in %d places:\n%s", what, len(diffs), strings.Join(diffs, "\n"))
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
