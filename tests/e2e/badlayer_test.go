package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

// TestBadLayerLeavesTheMount: the registry's copy of the image's layers is
// damaged (as on a broken storage backend) while podman has the image
// pulled lazily: the container's reads fail with EIO, never wrong bytes,
// and the store takes the layers out of its mount. Once the registry has
// the right bytes again, removing the image and pulling it anew through
// the same daemon is a fresh lazy pull whose containers read exact bytes.
func TestBadLayerLeavesTheMount(t *testing.T) {
	img := cachedImage(t, imagegen.E2E())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ref := push(t, reg, img, "lazypull/bad", "v1")
	runLazypull(t, map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}}}, "index", "--push", ref)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{reg.Host}},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}})
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}, StorageOpts: []string{d.ALSOption()}})
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("lazy pull: %v\n%s", err, d.LogTail(30))
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	paths := regularFiles(want, "opt/data", 2, true)

	// Damage every lazily served layer in the registry's storage past its
	// first 64 KiB, keeping the good bytes.
	indexed := indexedLayers(img, 10<<20)
	saved := map[string][]byte{}
	for _, l := range indexed {
		p := filepath.Join(reg.Dir, "storage", "docker", "registry", "v2", "blobs", "sha256", l.Digest.Encoded()[:2], l.Digest.Encoded(), "data")
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("registry blob of %s: %v", l.Digest, err)
		}
		saved[p] = data
		bad := append([]byte(nil), data...)
		for i := 64 << 10; i < len(bad); i++ {
			bad[i] ^= 0xff
		}
		if err := os.WriteFile(p, bad, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := append([]string{"/bin/sha256sum"}, "/"+paths[0], "/"+paths[1])
	out, stderr, err := p.RunContainer(ref, args...)
	// (podman itself may be the first to read a damaged span: /etc/passwd.)
	if msg := strings.ToLower(stderr + out); err == nil || !strings.Contains(msg, "input/output error") && !strings.Contains(msg, "i/o error") {
		t.Fatalf("container reading damaged layers: err %v, stdout %q, stderr %q; want an I/O error", err, out, stderr)
	}
	for _, path := range paths {
		if strings.Contains(out, want[path].SHA256) {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasSuffix(line, "/"+path) {
				t.Errorf("a damaged layer served %q", line)
			}
		}
	}
	bad := 0
	for _, l := range d.Status(t).Layers {
		if l.Bad != "" {
			bad++
		}
	}
	if bad == 0 {
		t.Fatal("no layer marked bad after reads of damaged spans")
	}

	// The registry is repaired; the image pulled anew is served afresh.
	for p, data := range saved {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := p.Run("rmi", "-f", ref); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("pull after repair: %v\n%s", err, d.LogTail(30))
	}
	if links := alsDiffLinks(t, p.Root, d.MountPoint); len(links) != len(indexed) {
		t.Errorf("after the new pull %d layer diffs point into the store, want %d", len(links), len(indexed))
	}
	checkFilesInContainer(t, p, ref, want, paths)
	for _, l := range d.Status(t).Layers {
		if l.Bad != "" {
			t.Errorf("layer %s still bad after the new pull: %s", l.Digest, l.Bad)
		}
	}
}
