package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/tests/testenv"
)

// recipe is how the real-distribution image is made: debootstrap of a
// Debian suite (minbase), then apt-get install of packages, from the host's
// Debian mirror, files timestamped no later than Epoch (SOURCE_DATE_EPOCH).
// The package versions installed are recorded beside the image
// (packages.txt): the mirror moves, the record says what was measured.
type recipe struct {
	Suite    string   `json:"suite"`
	Mirror   string   `json:"mirror"`
	Packages []string `json:"packages"`
	Epoch    int64    `json:"source_date_epoch"`
}

var defaultRecipe = recipe{
	Suite:    "bookworm",
	Packages: []string{"python3", "python3-numpy", "python3-pandas", "python3-scipy", "gcc"},
	Epoch:    1716163200, // 2024-05-20T00:00:00Z
}

// workload is what the benchmark runs in the image: python importing
// numpy, pandas and scipy.stats (thousands of small files, opened one after
// another) and printing one line.
var workload = []string{"python3", "-c", `import numpy, pandas, scipy.stats; print("ok")`}

const workloadOutput = "ok"

// key names a recipe in the cache.
func (r recipe) key() string {
	b, _ := json.Marshal(r)
	s := sha256.Sum256(b)
	return r.Suite + "-" + hex.EncodeToString(s[:6])
}

// hostMirror returns the Debian mirror apt uses on this machine (deb822 or
// one-line sources), as contrib/dev/trixie-chroot.sh finds it.
func hostMirror() string {
	re := regexp.MustCompile(`(?m)^URIs:\s*(\S*/debian)/?\s*$`)
	if files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources"); len(files) > 0 {
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if m := re.FindSubmatch(b); m != nil {
				return string(m[1])
			}
		}
	}
	re = regexp.MustCompile(`(?m)^deb\s+(http\S*/debian)/?\s`)
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		if m := re.FindSubmatch(b); m != nil {
			return string(m[1])
		}
	}
	return "http://deb.debian.org/debian"
}

// image is the built image: an OCI layout with gzip layers and its eStargz
// copy.
type image struct {
	Dir        string // cache directory of the recipe
	Layout     string // OCI layout, gzip layers
	Estargz    string // OCI layout, the same image as eStargz
	Compressed int64  // bytes of the gzip layers
	Estargzed  int64  // bytes of the eStargz layers
	Tar        int64  // bytes of the uncompressed layers
	Files      int    // regular files
	Layers     []layerInfo
}

type layerInfo struct {
	Name       string `json:"name"`
	Digest     string `json:"digest"`
	Compressed int64  `json:"compressed"`
	Tar        int64  `json:"tar"`
	Files      int    `json:"files"`
}

// buildImage returns the image of r, building what the cache (dir/<key>)
// does not hold yet: the root file system, the layers, the eStargz copy.
func buildImage(cache string, r recipe) (*image, error) {
	dir := filepath.Join(cache, r.key())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := buildRootfs(rootfs, r); err != nil {
		return nil, fmt.Errorf("root file system: %w", err)
	}
	img := &image{Dir: dir, Layout: filepath.Join(dir, "oci"), Estargz: filepath.Join(dir, "estargz")}
	meta := filepath.Join(dir, "image.json")
	if b, err := os.ReadFile(meta); err == nil && json.Unmarshal(b, img) == nil {
		return img, nil
	}
	logf("image: writing the layers (deterministic tar, gzip) into %s", img.Layout)
	if err := writeLayout(rootfs, img, r); err != nil {
		return nil, fmt.Errorf("layers: %w", err)
	}
	logf("image: converting to eStargz into %s", img.Estargz)
	os.RemoveAll(img.Estargz)
	if err := testenv.ConvertEstargz(img.Layout, img.Estargz, 0); err != nil {
		return nil, fmt.Errorf("estargz: %w", err)
	}
	n, err := layerBytes(img.Estargz)
	if err != nil {
		return nil, err
	}
	img.Estargzed = n
	b, _ := json.MarshalIndent(img, "", "  ")
	return img, os.WriteFile(meta, b, 0o644)
}

// buildRootfs makes rootfs with debootstrap and apt-get (in a chroot), once:
// a complete one has rootfs/.lazybench-recipe. The files debootstrap made
// are listed in rootfs.base (the base layer).
func buildRootfs(rootfs string, r recipe) error {
	want, _ := json.Marshal(r)
	stamp := filepath.Join(rootfs, ".lazybench-recipe")
	if b, err := os.ReadFile(stamp); err == nil && string(b) == string(want) {
		return nil
	}
	tmp := rootfs + ".tmp"
	logfile := rootfs + ".log"
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", fmt.Sprintf("SOURCE_DATE_EPOCH=%d", r.Epoch), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"}
	run := func(name string, args ...string) error {
		f, err := os.OpenFile(logfile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd := exec.Command(name, args...)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, f, f
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %w (see %s)", name, strings.Join(args, " "), err, logfile)
		}
		return nil
	}
	if _, err := os.Stat(filepath.Join(tmp, ".lazybench-debootstrap")); err != nil {
		os.RemoveAll(tmp)
		logf("image: debootstrap --variant=minbase %s from %s (a few minutes)", r.Suite, r.Mirror)
		if err := run("debootstrap", "--variant=minbase", r.Suite, tmp, r.Mirror); err != nil {
			return err
		}
		if err := listBase(tmp, rootfs+".base"); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tmp, ".lazybench-debootstrap"), nil, 0o644); err != nil {
			return err
		}
	}
	if err := copyFile("/etc/resolv.conf", filepath.Join(tmp, "etc/resolv.conf")); err != nil {
		return err
	}
	logf("image: apt-get install %s", strings.Join(r.Packages, " "))
	script := "apt-get update -qq && apt-get install -y -qq " + strings.Join(r.Packages, " ") +
		" && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/* /var/cache/ldconfig/aux-cache /etc/resolv.conf && : > /etc/machine-id"
	if err := run("chroot", tmp, "/bin/sh", "-c", script); err != nil {
		return err
	}
	cmd := exec.Command("chroot", tmp, "dpkg-query", "-W", "-f", "${Package}=${Version}\n")
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("dpkg-query: %w", err)
	}
	if err := os.WriteFile(rootfs+".packages.txt", out, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".lazybench-recipe"), want, 0o644); err != nil {
		return err
	}
	os.RemoveAll(rootfs)
	return os.Rename(tmp, rootfs)
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// listBase writes the paths under root, one a line.
func listBase(root, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel != "." {
			fmt.Fprintln(w, rel)
		}
		return nil
	})
	if err == nil {
		err = w.Flush()
	}
	return errors.Join(err, f.Close())
}

// layerSpec is one layer of the split: the files debootstrap made, then
// the rest by path prefix (the first match wins), the last layer everything
// left.
type layerSpec struct {
	name     string
	prefixes []string
}

var layerSplit = []layerSpec{
	{name: "debian-base"}, // the files of rootfs.base
	{name: "python-scientific", prefixes: []string{"usr/lib/python3/dist-packages/"}},
	{name: "libraries-toolchain", prefixes: []string{"usr/lib/x86_64-linux-gnu/", "usr/lib/gcc/", "usr/libexec/"}},
	{name: "python-and-rest"},
}

// excluded are paths never put in the image (their directories are).
func excluded(rel string) bool {
	for _, p := range []string{"dev/", "proc/", "sys/", "run/", "tmp/", "var/tmp/", "var/cache/apt/", "var/lib/apt/lists/", "var/log/"} {
		if strings.HasPrefix(rel, p) {
			return true
		}
	}
	return rel == ".lazybench-recipe" || rel == ".lazybench-debootstrap"
}

// assign returns the layer of path rel.
func assign(rel string, base map[string]bool) int {
	if base[rel] {
		return 0
	}
	for i, l := range layerSplit {
		for _, p := range l.prefixes {
			if strings.HasPrefix(rel+"/", p) && rel+"/" != p {
				return i
			}
		}
	}
	return len(layerSplit) - 1
}

// writeLayout writes the OCI layout of rootfs, split into layerSplit.
func writeLayout(rootfs string, img *image, r recipe) error {
	baseList, err := os.ReadFile(rootfs + ".base")
	if err != nil {
		return err
	}
	base := make(map[string]bool)
	for _, l := range strings.Split(string(baseList), "\n") {
		if l != "" {
			base[l] = true
		}
	}
	// Every path in sorted (walk) order with its layer.
	type entry struct {
		rel   string
		layer int
	}
	var entries []entry
	err = filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rootfs, p)
		if rel == "." || excluded(rel) {
			return nil
		}
		entries = append(entries, entry{rel, assign(rel, base)})
		return nil
	})
	if err != nil {
		return err
	}
	os.RemoveAll(img.Layout)
	blobs := filepath.Join(img.Layout, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return err
	}
	infos := make([]layerInfo, len(layerSplit))
	diffIDs := make([]digest.Digest, len(layerSplit))
	var g errgroup.Group
	g.SetLimit(2)
	for i := range layerSplit {
		var paths []string
		for _, e := range entries {
			if e.layer == i {
				paths = append(paths, e.rel)
			}
		}
		g.Go(func() error {
			info, diffID, err := writeLayer(rootfs, blobs, paths, time.Unix(r.Epoch, 0))
			info.Name = layerSplit[i].name
			infos[i], diffIDs[i] = info, diffID
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	img.Layers, img.Compressed, img.Tar, img.Files = infos, 0, 0, 0
	for _, l := range infos {
		img.Compressed += l.Compressed
		img.Tar += l.Tar
		img.Files += l.Files
	}
	created := time.Unix(r.Epoch, 0).UTC().Format(time.RFC3339)
	config := map[string]any{
		"architecture": "amd64", "os": "linux", "created": created,
		"config": map[string]any{"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, "Cmd": []string{"/bin/bash"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	}
	cfgDesc, err := writeJSONBlob(blobs, "application/vnd.oci.image.config.v1+json", config)
	if err != nil {
		return err
	}
	var layers []map[string]any
	for _, l := range infos {
		layers = append(layers, map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.Digest, "size": l.Compressed})
	}
	manifest := map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfgDesc, "layers": layers}
	mDesc, err := writeJSONBlob(blobs, "application/vnd.oci.image.manifest.v1+json", manifest)
	if err != nil {
		return err
	}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{mDesc}})
	if err := os.WriteFile(filepath.Join(img.Layout, "index.json"), index, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(img.Layout, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

func writeJSONBlob(blobs, mediaType string, v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	d := digest.FromBytes(b)
	if err := os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644); err != nil {
		return nil, err
	}
	return map[string]any{"mediaType": mediaType, "digest": d.String(), "size": len(b)}, nil
}

// countWriter counts bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeLayer writes the gzip tar of paths (sorted, with the directories
// above them) into blobs and returns its description and DiffID.
func writeLayer(rootfs, blobs string, paths []string, epoch time.Time) (layerInfo, digest.Digest, error) {
	tmp, err := os.CreateTemp(blobs, "layer-")
	if err != nil {
		return layerInfo{}, "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	blobHash, diffHash := sha256.New(), sha256.New()
	compressed := &countWriter{w: io.MultiWriter(tmp, blobHash)}
	zw, err := gzip.NewWriterLevel(compressed, gzip.DefaultCompression)
	if err != nil {
		return layerInfo{}, "", err
	}
	plain := &countWriter{w: io.MultiWriter(zw, diffHash)}
	files, err := writeTar(plain, rootfs, paths, epoch)
	if err != nil {
		return layerInfo{}, "", err
	}
	if err := zw.Close(); err != nil {
		return layerInfo{}, "", err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return layerInfo{}, "", err
	}
	if err := tmp.Close(); err != nil {
		return layerInfo{}, "", err
	}
	d := digest.NewDigest(digest.SHA256, blobHash)
	if err := os.Rename(tmp.Name(), filepath.Join(blobs, d.Encoded())); err != nil {
		return layerInfo{}, "", err
	}
	return layerInfo{Digest: d.String(), Compressed: compressed.n, Tar: plain.n, Files: files}, digest.NewDigest(digest.SHA256, diffHash), nil
}

// writeTar writes a deterministic tar of paths under rootfs: sorted, with
// the directories above each path first (once), numeric owners, no user or
// group names, no access or change times, modification times clamped to
// epoch, hard links within the layer as links, extended attributes as PAX
// records. It returns the number of regular files.
func writeTar(w io.Writer, rootfs string, paths []string, epoch time.Time) (int, error) {
	sorted := append([]string(nil), paths...)
	sort.Slice(sorted, func(i, j int) bool { return tarLess(sorted[i], sorted[j]) })
	tw := tar.NewWriter(w)
	written := make(map[string]bool)
	links := make(map[[2]uint64]string)
	files := 0
	var add func(rel string) error
	add = func(rel string) error {
		if written[rel] {
			return nil
		}
		if dir := filepath.Dir(rel); dir != "." {
			if err := add(dir); err != nil {
				return err
			}
		}
		written[rel] = true
		full := filepath.Join(rootfs, rel)
		fi, err := os.Lstat(full)
		if err != nil {
			return err
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(full); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if hdr.ModTime.After(epoch) {
			hdr.ModTime = epoch
		}
		hdr.ModTime = hdr.ModTime.Truncate(time.Second)
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			k := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[k]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[k] = rel
			}
		}
		if err := xattrs(full, hdr); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			files++
			f, err := os.Open(full)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		}
		return nil
	}
	for _, p := range sorted {
		if err := add(p); err != nil {
			return 0, err
		}
	}
	return files, tw.Close()
}

// tarLess orders paths as a walk does: by their components.
func tarLess(a, b string) bool {
	return strings.ReplaceAll(a, "/", "\x00") < strings.ReplaceAll(b, "/", "\x00")
}

// xattrs puts the file's security.capability (the only extended attribute
// a Debian root file system carries that matters) into hdr.
func xattrs(path string, hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(path, "security.capability", buf)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	if err != nil {
		return err
	}
	hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": string(buf[:n])}
	return nil
}

// layerBytes sums the layer sizes of a layout's first manifest.
func layerBytes(layout string) (int64, error) {
	var idx struct {
		Manifests []struct {
			Digest digest.Digest `json:"digest"`
		} `json:"manifests"`
	}
	b, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(b, &idx); err != nil || len(idx.Manifests) == 0 {
		return 0, fmt.Errorf("%s: bad index.json (%v)", layout, err)
	}
	b, err = os.ReadFile(filepath.Join(layout, "blobs", "sha256", idx.Manifests[0].Digest.Encoded()))
	if err != nil {
		return 0, err
	}
	var m struct {
		Layers []struct {
			Size int64 `json:"size"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return 0, err
	}
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}
