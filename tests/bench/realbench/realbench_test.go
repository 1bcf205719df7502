package main

import (
	"archive/tar"
	"bytes"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWriteTarDeterministic checks that a layer's tar is sorted, has the
// directories above its files, clamps times, drops owners' names, keeps
// hard links within the layer, and is the same bytes twice.
func TestWriteTarDeterministic(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "usr/lib/b"), 0o755))
	must(os.WriteFile(filepath.Join(root, "usr/lib/b/z"), []byte("zz"), 0o644))
	must(os.WriteFile(filepath.Join(root, "usr/lib/a"), []byte("a"), 0o755))
	must(os.Link(filepath.Join(root, "usr/lib/a"), filepath.Join(root, "usr/lib/c")))
	must(os.Symlink("a", filepath.Join(root, "usr/lib/d")))
	epoch := time.Unix(1716163200, 0)
	var one, two bytes.Buffer
	n, err := writeTar(&one, root, []string{"usr/lib/d", "usr/lib/b/z", "usr/lib/c", "usr/lib/a"}, epoch)
	must(err)
	if n != 2 {
		t.Errorf("writeTar counted %d regular files, want 2 (a, z; c is a link)", n)
	}
	_, err = writeTar(&two, root, []string{"usr/lib/a", "usr/lib/c", "usr/lib/b/z", "usr/lib/d"}, epoch)
	must(err)
	if !bytes.Equal(one.Bytes(), two.Bytes()) {
		t.Error("the same files in another order gave another tar")
	}
	var names []string
	tr := tar.NewReader(&one)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(err)
		names = append(names, h.Name)
		if h.ModTime.After(epoch) || h.Uname != "" || h.Gname != "" || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: mtime %v uname %q gname %q atime %v ctime %v, want clamped times and no names", h.Name, h.ModTime, h.Uname, h.Gname, h.AccessTime, h.ChangeTime)
		}
		if h.Name == "usr/lib/c" && (h.Typeflag != tar.TypeLink || h.Linkname != "usr/lib/a") {
			t.Errorf("usr/lib/c: type %c link %q, want a hard link to usr/lib/a", h.Typeflag, h.Linkname)
		}
	}
	want := "usr/ usr/lib/ usr/lib/a usr/lib/b/ usr/lib/b/z usr/lib/c usr/lib/d"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("entries %q, want %q", got, want)
	}
}

func TestAssign(t *testing.T) {
	base := map[string]bool{"usr": true, "usr/lib": true, "usr/lib/x86_64-linux-gnu/libc.so.6": true}
	for _, c := range []struct {
		rel  string
		want int
	}{
		{"usr/lib/x86_64-linux-gnu/libc.so.6", 0},
		{"usr/lib/python3/dist-packages/numpy/__init__.py", 1},
		{"usr/lib/python3/dist-packages", 3},
		{"usr/lib/x86_64-linux-gnu/libopenblas.so.0", 2},
		{"usr/lib/python3.11/os.py", 3},
	} {
		if got := assign(c.rel, base); got != c.want {
			t.Errorf("assign(%q) = %d, want %d", c.rel, got, c.want)
		}
	}
}

// TestReport renders a results set: the goals are computed and the SVG is
// well-formed XML.
func TestReport(t *testing.T) {
	r := &results{Image: &image{Compressed: 340e6, Estargzed: 365e6, Tar: 1.17e9, Files: 43000, Layers: make([]layerInfo, 4)}, Recipe: defaultRecipe}
	for _, x := range []row{
		{Case: caseStock, Pull: 25, Run: 1.4, PullBytes: 340e6},
		{Case: caseStockCold, Run: 1.8},
		{Case: caseFirst, Pull: 1.5, Run: 3, PullBytes: 2e6, RunBytes: 40e6, PeakRSS: 80e6},
		{Case: caseSecond, Pull: 1.5, Run: 2, PullBytes: 2e6, RunBytes: 40e6, PeakRSS: 90e6},
		{Case: casePrefetch, Pull: 1.5, Run: 3.2, PeakRSS: 95e6},
		{Case: caseCached, Run: 2},
		{Case: caseStargz, Pull: 0.8, Run: 12, PullBytes: 2e6, RunBytes: 45e6, PeakRSS: 60e6},
	} {
		x.Link, x.Round = "200mbit-20ms", 1
		r.Rows = append(r.Rows, x)
	}
	md := r.markdown()
	for _, want := range []string{
		"first machine pull + first run 4.50 s vs stock 26.40 s: 5.9x faster (goal >= 6x) **missed**",
		"first run with prefetch on 3.20 s vs off 3.00 s: 1.07x (goal <= 1.1x) **met**",
		"pull bytes, index built here: 2.0 MB = 0.59 % of the image (goal < 1 %) **met**",
		"peak RSS (VmHWM, all cases) 95 MB (goal < 100 MB) **met**",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	d := xml.NewDecoder(strings.NewReader(r.svg()))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("svg: %v", err)
		}
	}
}
