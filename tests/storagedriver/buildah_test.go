package storagedrivertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/testenv"
)

// buildah runs Debian's buildah (1.28) with a storage, storage.conf,
// registries.conf and containers.conf of its own.
type buildah struct {
	t    *testing.T
	root string
	env  []string
}

// newBuildah sets up buildah whose storage.conf names the daemon's mount as
// Additional Layer Store; its cleanup removes every container and image
// (before the daemon, created earlier, stops).
func newBuildah(t *testing.T, f *fixture) *buildah {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: rootful buildah with its own storage")
	}
	if _, err := exec.LookPath("buildah"); err != nil {
		t.Skipf("needs buildah (apt-get install buildah): %v", err)
	}
	dir := t.TempDir()
	short, err := os.MkdirTemp("", "lzb-") // short run root, as for podman
	if err != nil {
		t.Fatal(err)
	}
	b := &buildah{t: t, root: filepath.Join(dir, "root")}
	files := map[string]string{
		"storage.conf": fmt.Sprintf("[storage]\ndriver = \"overlay\"\ngraphroot = %q\nrunroot = %q\n\n[storage.options]\nadditionallayerstores = [%q]\n",
			b.root, filepath.Join(short, "run"), f.daemon.MountPoint+":ref"),
		"registries.conf": fmt.Sprintf("unqualified-search-registries = []\n\n[[registry]]\nlocation = %q\ninsecure = true\n", f.proxy.Host),
		"containers.conf": "[containers]\ndefault_ulimits = []\nnetns = \"none\"\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b.env = append(os.Environ(),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(dir, "registries.conf"),
		"CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"),
		"TMPDIR="+dir)
	t.Cleanup(func() {
		for _, args := range [][]string{{"rm", "--all"}, {"rmi", "--all", "--force"}} {
			if _, err := b.try(args...); err != nil {
				t.Errorf("buildah cleanup: %v", err)
			}
		}
		os.RemoveAll(short)
	})
	return b
}

func (b *buildah) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "buildah", args...)
	cmd.Env = b.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("buildah %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func (b *buildah) run(args ...string) string {
	b.t.Helper()
	out, err := b.try(args...)
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// TestBuildahStock builds on a lazily pulled image with Debian's buildah
// configured through storage.conf only: `buildah from` and `buildah bud`
// pull the base image through the layer store (its layers' diffs are
// symlinks into the mount), run a step on it, add a layer on top, and the
// result has the base files exact and the new ones.
func TestBuildahStock(t *testing.T) {
	f := newFixture(t, testImage())
	ref := f.ref(testImage())
	img := f.images[ref]
	b := newBuildah(t, f)
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	probe := "usr/lib/app/" // a file of a lazily served layer, read in a build step
	var probeFile string
	for _, p := range want.Paths() {
		if strings.HasPrefix(p, probe) && want[p].Size > 100000 {
			probeFile = p
			break
		}
	}

	ctr := b.run("from", "--quiet", ref)
	links := 0
	entries, _ := filepath.Glob(filepath.Join(b.root, "overlay", "*", "diff"))
	for _, e := range entries {
		if target, err := os.Readlink(e); err == nil && strings.HasPrefix(target, f.daemon.MountPoint+"/") {
			links++
		}
	}
	if links != len(lazyLayers(img)) {
		t.Errorf("%d layer diffs point into the layer store after buildah from, want %d", links, len(lazyLayers(img)))
	}
	out := b.run("run", "--isolation", "chroot", ctr, "--", "/bin/sha256sum", "/"+probeFile)
	if !strings.HasPrefix(out, want[probeFile].SHA256) {
		t.Errorf("buildah run sha256sum %s = %q, want %s", probeFile, out, want[probeFile].SHA256)
	}

	ctxDir := t.TempDir()
	containerfile := fmt.Sprintf("FROM %s\nRUN sha256sum /%s > /probe.sum && echo built > /built.txt\nCOPY hello.txt /hello.txt\n", ref, probeFile)
	for name, content := range map[string]string{"Containerfile": containerfile, "hello.txt": "hello\n"} {
		if err := os.WriteFile(filepath.Join(ctxDir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b.run("bud", "--quiet", "--isolation", "chroot", "-t", "localhost/built:1", ctxDir)
	n, err := strconv.Atoi(b.run("inspect", "--type", "image", "--format", "{{len .OCIv1.RootFS.DiffIDs}}", "localhost/built:1"))
	if err != nil || n != len(img.Layers)+1 {
		t.Errorf("built image has %d layers (%v), want %d (the base's and one more)", n, err, len(img.Layers)+1)
	}
	built := b.run("from", "--quiet", "localhost/built:1")
	mnt := b.run("mount", built)
	got, err := testenv.Snapshot(mnt)
	if err != nil {
		t.Fatal(err)
	}
	b.run("umount", built)
	for path, content := range map[string]string{"built.txt": "built\n", "hello.txt": "hello\n",
		"probe.sum": want[probeFile].SHA256 + "  /" + probeFile + "\n"} {
		if got[path].SHA256 != sha256hex(content) {
			t.Errorf("built image: %s has sha256 %q, want that of %q", path, got[path].SHA256, content)
		}
	}
	if got[probeFile].SHA256 != want[probeFile].SHA256 {
		t.Errorf("built image: %s has sha256 %q, want %q", probeFile, got[probeFile].SHA256, want[probeFile].SHA256)
	}
}
