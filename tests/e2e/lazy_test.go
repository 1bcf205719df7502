package e2e

import (
	"testing"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

// TestLazyPullIndexedImage is the product's main job with stock podman: an
// image whose SOCI index was pushed to its registry (`lazypull index
// --push`, from another machine) is pulled through the store lazily — the
// pull transfers less than 5 % of the image, its layers' diffs point into the
// mount — containers read exact bytes, and the lazily mounted root
// filesystem is identical to an eagerly pulled one.
func TestLazyPullIndexedImage(t *testing.T) {
	img := cachedImage(t, imagegen.E2E())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(t, reg.URL)
	directRef := push(t, reg, img, "lazypull/e2e", "v1")
	ref := proxy.Host + "/lazypull/e2e:v1"

	// Index on "another machine" (its own root) and push the SOCI index.
	out := runLazypull(t, map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}}}, "index", "--push", directRef)
	t.Logf("lazypull index: %s", out)

	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{proxy.Host}},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}})
	lazy := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{proxy.Host}, StorageOpts: []string{d.ALSOption()}})

	proxy.Reset()
	if _, err := lazy.Pull(ref); err != nil {
		t.Fatalf("lazy pull: %v\n%s", err, d.LogTail(30))
	}
	pulled := proxy.Stats().BlobBytes()
	total := img.CompressedSize()
	t.Logf("lazy pull fetched %s of blobs for a %s image (%.2f %%)", mib(pulled), mib(total), 100*float64(pulled)/float64(total))
	if pulled*100 >= total*5 {
		t.Errorf("lazy pull fetched %d bytes, want < 5 %% of %d", pulled, total)
	}
	indexed := indexedLayers(img, 10<<20)
	if links := alsDiffLinks(t, lazy.Root, d.MountPoint); len(links) != len(indexed) {
		t.Errorf("%d layer diffs point into the store, want %d (the indexed layers): %v", len(links), len(indexed), links)
	}

	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	// A workload reading a few files of every layer.
	var paths []string
	for _, dir := range []string{"usr/lib/base", "usr/lib/app", "opt/data", "srv/small", "var/top"} {
		paths = append(paths, regularFiles(want, dir, 3, false)...)
	}
	paths = append(paths, regularFiles(want, "opt/data", 1, true)...)
	checkFilesInContainer(t, lazy, ref, want, paths)
	afterRun := proxy.Stats().BlobBytes()
	t.Logf("after the workload: %s fetched in all", mib(afterRun))
	st := d.Status(t)
	if len(st.Layers) != len(indexed) {
		t.Errorf("daemon serves %d layers, want %d", len(st.Layers), len(indexed))
	}
	for _, l := range st.Layers {
		if l.IndexSource != "registry" {
			t.Errorf("layer %s index came from %q, want the registry's SOCI index", l.Digest, l.IndexSource)
		}
	}

	// The whole lazily mounted tree equals an eager pull and the generator's.
	compareTrees(t, lazy, ref, want, "lazily pulled rootfs vs the generator's tree")
	eager := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}})
	if _, err := eager.Pull(directRef); err != nil {
		t.Fatalf("eager pull: %v", err)
	}
	mnt, err := eager.ImageMount(directRef)
	if err != nil {
		t.Fatal(err)
	}
	eagerTree, err := testenv.Snapshot(mnt)
	if err != nil {
		t.Fatal(err)
	}
	eager.ImageUnmount(directRef)
	compareTrees(t, lazy, ref, eagerTree, "lazily pulled rootfs vs an eager pull")
	if st := d.Status(t); st.Reads.Errors != 0 {
		t.Errorf("daemon counted %d read errors", st.Reads.Errors)
	}
}
