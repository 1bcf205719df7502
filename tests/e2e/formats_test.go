package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// Layers that carry their own TOC (eStargz, zstd:chunked) are what stock
// podman >= 5.1 asks an additional layer store for, by TOC digest. These
// tests pull such images, pushed by the stock tools, lazily through the
// store: stock podman 5.4.2 (Debian trixie, in testenv.Chroot) for both
// formats, and podman 4.3.1 (by compressed digest) for eStargz.

// formatsImage is the image of these tests: about 45 MB in three layers
// above the daemon's min_layer_size, every entry kind, whiteouts, an
// opaque directory and replacements in the top layer.
func formatsImage() imagegen.Options {
	const mib = 1 << 20
	return imagegen.Options{
		Name: "formats",
		Seed: 14,
		Layers: []imagegen.LayerSpec{
			{Compression: imagegen.Gzip, Dir: "usr/lib/base", Busybox: true, Zoo: true, SmallFiles: 400,
				Random: []int64{10 * mib}, Compressible: []int64{6 * mib}},
			{Compression: imagegen.Gzip, Dir: "opt/data", SmallFiles: 300,
				Random: []int64{16 * mib, 4 * mib}, Compressible: []int64{8 * mib}},
			{Compression: imagegen.Gzip, Dir: "var/top", Zoo: true, SmallFiles: 60,
				Random: []int64{2 * mib}, Whiteouts: 20, Opaque: 3, Replacements: 8},
		},
	}
}

// formatsDaemon starts a daemon in dir that serves layers from 1 MiB on,
// reading from the registries hosts.
func formatsDaemon(t testing.TB, dir string, hosts ...string) *testenv.Daemon {
	t.Helper()
	return testenv.StartDaemon(t, testenv.DaemonOptions{Dir: dir, Config: map[string]any{
		"registry": map[string]any{"insecure": hosts},
		"index":    map[string]any{"min_layer_size": "1MiB", "on_demand": "off"},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}})
}

// podman5 returns stock podman 5 in ch for registries hosts (and the
// store's ALS option, if any).
func podman5(t testing.TB, ch *testenv.Chroot, hosts []string, storageOpts ...string) *testenv.Podman {
	t.Helper()
	p := testenv.NewPodman(t, testenv.PodmanOptions{Chroot: ch, InsecureRegistries: hosts, StorageOpts: storageOpts,
		Env: []string{"PODMAN_IGNORE_CGROUPSV1_WARNING=1"}})
	if out, _, err := p.Run("version", "--format", "{{.Client.Version}}"); err != nil || !strings.HasPrefix(out, "5.") {
		t.Fatalf("podman in the chroot: version %q, %v; want 5.x", out, err)
	}
	return p
}

// blobsOf returns the layer sizes and annotations of ref's manifest.
func layersOf(t testing.TB, reg *testenv.Registry, repo, tag string) []manifestLayer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, reg.URL+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct {
		Layers []manifestLayer `json:"layers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("manifest of %s:%s: %v", repo, tag, err)
	}
	return m.Layers
}

type manifestLayer struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// tocFixture is a registry holding the formats image as gzip (pushed from
// the generator), zstd:chunked (pushed by stock podman 5) and eStargz
// (converted by stargz-snapshotter's estargz package).
type tocFixture struct {
	img  *imagegen.Image
	reg  *testenv.Registry
	want fstree.Tree
	// refs by format ("gzip", "zstd:chunked", "estargz") on reg.
	tags map[string]string
}

const formatsRepo = "lazypull/formats"

func newTOCFixture(t testing.TB, ch *testenv.Chroot) *tocFixture {
	t.Helper()
	f := &tocFixture{img: cachedImage(t, formatsImage()), reg: testenv.StartRegistry(t, testenv.RegistryOptions{}), tags: map[string]string{}}
	var err error
	if f.want, err = f.img.ExpectedTree(); err != nil {
		t.Fatal(err)
	}
	f.tags["gzip"] = "gzip"
	push(t, f.reg, f.img, formatsRepo, "gzip")
	esDir := filepath.Join(t.TempDir(), "estargz")
	if err := testenv.ConvertEstargz(f.img.Dir, esDir, 1<<20); err != nil {
		t.Fatalf("convert to eStargz: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := testenv.Push(ctx, f.reg.URL, formatsRepo, "estargz", esDir); err != nil {
		t.Fatal(err)
	}
	f.tags["estargz"] = "estargz"
	if ch != nil {
		// zstd:chunked as podman 5 writes it: pull, push --compression-format.
		conv := podman5(t, ch, []string{f.reg.Host})
		gz := f.reg.Ref(formatsRepo, "gzip")
		if _, err := conv.Pull(gz); err != nil {
			t.Fatalf("podman 5 pull: %v", err)
		}
		if _, stderr, err := conv.Run("push", "--compression-format", "zstd:chunked", "--force-compression", gz, "docker://"+f.reg.Ref(formatsRepo, "zstd")); err != nil {
			t.Fatalf("podman 5 push --compression-format zstd:chunked: %v\n%s", err, stderr)
		}
		f.tags["zstd:chunked"] = "zstd"
	}
	return f
}

// lazyPull pulls ref through proxy with p (whose storage uses d's store)
// and checks it was lazy: less than 5 % of the image's blobs fetched, every
// layer of at least 1 MiB served by the store in format.
func (f *tocFixture) lazyPull(t testing.TB, p *testenv.Podman, d *testenv.Daemon, proxy *testenv.CountingProxy, ref, tag, format string) {
	t.Helper()
	layers := layersOf(t, f.reg, formatsRepo, tag)
	var total int64
	served := 0
	for _, l := range layers {
		total += l.Size
		if l.Size >= 1<<20 {
			served++
		}
	}
	proxy.Reset()
	start := time.Now()
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("lazy pull of %s: %v\n%s", ref, err, d.LogTail(40))
	}
	pulled := proxy.Stats().BlobBytes()
	t.Logf("%s: lazy pull in %s fetched %s of blobs for a %s image (%.2f %%)", format, time.Since(start).Round(time.Millisecond), mib(pulled), mib(total), 100*float64(pulled)/float64(total))
	if pulled*100 >= total*5 {
		t.Errorf("%s: lazy pull fetched %d bytes, want < 5 %% of %d", format, pulled, total)
	}
	if links := alsDiffLinks(t, p.Root, d.MountPoint); len(links) != served {
		t.Errorf("%s: %d layer diffs point into the store, want %d: %v\n%s", format, len(links), served, links, d.LogTail(30))
	}
	st := d.Status(t)
	n := 0
	for _, l := range st.Layers {
		if l.Format != format || l.IndexSource != "toc" || l.TOCDigest == "" {
			t.Errorf("layer %s served as %s from %q (TOC %q), want %s through its own TOC", l.Digest, l.Format, l.IndexSource, l.TOCDigest, format)
		}
		n++
	}
	if n != served {
		t.Errorf("%s: the store serves %d layers, want %d", format, n, served)
	}
}

// workload reads files of every layer in a container and checks them.
func (f *tocFixture) workload(t testing.TB, p *testenv.Podman, ref string) {
	t.Helper()
	var paths []string
	for _, dir := range []string{"usr/lib/base", "opt/data", "var/top"} {
		paths = append(paths, regularFiles(f.want, dir, 3, false)...)
	}
	paths = append(paths, regularFiles(f.want, "opt/data", 1, true)...)
	checkFilesInContainer(t, p, ref, f.want, paths)
}

// estargzView is want as an eStargz layer stack shows it: the TOC and the
// no-prefetch landmark of the top layer at the root (an extraction writes
// them; they are tar entries), and modification times rounded to the
// second (what the eStargz TOC keeps).
func estargzView(want, eager fstree.Tree) fstree.Tree {
	out := fstree.Tree{}
	for p, n := range want {
		n.MtimeNs = time.Unix(0, n.MtimeNs).Round(time.Second).UnixNano()
		out[p] = n
	}
	for _, p := range []string{"stargz.index.json", ".no.prefetch.landmark"} {
		if n, ok := eager[p]; ok {
			n.MtimeNs = time.Unix(0, n.MtimeNs).Round(time.Second).UnixNano()
			out[p] = n
		}
	}
	return out
}

// eagerTree pulls ref with p (no layer store) and snapshots its rootfs.
func eagerTree(t testing.TB, p *testenv.Podman, ref string) fstree.Tree {
	t.Helper()
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("eager pull of %s: %v", ref, err)
	}
	mnt, err := p.ImageMount(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer p.ImageUnmount(ref)
	tree, err := testenv.Snapshot(mnt)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// TestPodman5LazyPullTOCFormats is the main case: stock podman 5
// pulls zstd:chunked (pushed by podman 5 itself) and eStargz images through
// the store with nothing but --storage-opt overlay.additionallayerstore:
// lazily (< 5 % of the bytes), containers read exact bytes, the lazily
// mounted tree is the one an eager pull of the same image gives, and
// pushing the image (which reads every layer's blob) verifies each layer.
func TestPodman5LazyPullTOCFormats(t *testing.T) {
	ch := testenv.NewChroot(t)
	f := newTOCFixture(t, ch)
	proxy := testenv.StartCountingProxy(t, f.reg.URL)
	for _, format := range []string{"zstd:chunked", "estargz"} {
		t.Run(format, func(t *testing.T) {
			tag := f.tags[format]
			d := formatsDaemon(t, ch.SharedDir(t, "daemon"), proxy.Host)
			lazy := podman5(t, ch, []string{proxy.Host}, d.ALSOption())
			ref := proxy.Host + "/" + formatsRepo + ":" + tag
			f.lazyPull(t, lazy, d, proxy, ref, tag, format)
			f.workload(t, lazy, ref)
			eager := eagerTree(t, podman5(t, ch, []string{f.reg.Host}), f.reg.Ref(formatsRepo, tag))
			want := f.want
			if format == "estargz" {
				want = estargzView(f.want, eager)
				if _, ok := eager["stargz.index.json"]; !ok {
					t.Errorf("the eager pull has no stargz.index.json: is the image eStargz?")
				}
			}
			compareTrees(t, lazy, ref, want, format+": lazily pulled rootfs vs the generator's tree")
			compareTrees(t, lazy, ref, estargzMtimes(eager, format), format+": lazily pulled rootfs vs an eager pull")
			// Pushing the image recompressed reads each layer's `blob`
			// (containers/storage's Diff), which the store serves once the
			// layer is verified in full.
			if _, stderr, err := lazy.Run("push", "--compression-format", "gzip", "--force-compression", ref, "docker://"+proxy.Host+"/lazypull/repushed:"+tag); err != nil {
				t.Errorf("podman push of the lazily pulled image: %v\n%s\n%s", err, stderr, d.LogTail(20))
			}
			st := d.Status(t)
			if st.Reads.Errors != 0 {
				t.Errorf("daemon counted %d read errors", st.Reads.Errors)
			}
			for _, l := range st.Layers {
				if !l.Verified || l.Bad != "" {
					t.Errorf("after the push, layer %s: verified %v, bad %q; want verified", l.Digest, l.Verified, l.Bad)
				}
			}
		})
	}
}

// estargzMtimes rounds an eStargz tree's modification times as the format's
// TOC does (other formats are returned as they are).
func estargzMtimes(tree fstree.Tree, format string) fstree.Tree {
	if format != "estargz" {
		return tree
	}
	out := fstree.Tree{}
	for p, n := range tree {
		n.MtimeNs = time.Unix(0, n.MtimeNs).Round(time.Second).UnixNano()
		out[p] = n
	}
	return out
}

// TestPodman4LazyPullEstargz pulls the eStargz image with podman 4.3.1,
// which asks the store by compressed digest: lazy, exact bytes, the tree
// of an eager pull.
func TestPodman4LazyPullEstargz(t *testing.T) {
	f := newTOCFixture(t, nil)
	proxy := testenv.StartCountingProxy(t, f.reg.URL)
	d := formatsDaemon(t, "", proxy.Host)
	lazy := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{proxy.Host}, StorageOpts: []string{d.ALSOption()}})
	ref := proxy.Host + "/" + formatsRepo + ":estargz"
	f.lazyPull(t, lazy, d, proxy, ref, "estargz", "estargz")
	f.workload(t, lazy, ref)
	eager := eagerTree(t, testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{f.reg.Host}}), f.reg.Ref(formatsRepo, "estargz"))
	compareTrees(t, lazy, ref, estargzView(f.want, eager), "podman 4: lazily pulled eStargz rootfs vs the generator's tree")
	compareTrees(t, lazy, ref, estargzMtimes(eager, "estargz"), "podman 4: lazily pulled eStargz rootfs vs an eager pull")
}
