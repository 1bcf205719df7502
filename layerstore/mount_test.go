package layerstore

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/ztoc"
)

// TestMountedStore mounts the store with FUSE and reads a layer the way
// containers/storage and overlayfs do: info, blob, every file under diff,
// and the use file.
func TestMountedStore(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	reg := newTestRegistry(t)
	l := stdLayer(t, 95, 400, 200)
	s, img, _ := servedFromLocal(t, reg, l, nil, Options{})
	mnt := t.TempDir()
	srv, err := alsfs.Mount(mnt, s.Store, alsfs.Options{SingleUser: true, ReadAheadKB: -1})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	refDir := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(img.ref)))
	dir := filepath.Join(refDir, l.digest.String())

	data, err := os.ReadFile(filepath.Join(dir, "info"))
	if err != nil {
		t.Fatalf("read info: %v", err)
	}
	var info map[string]any
	if err := json.Unmarshal(data, &info); err != nil || info["compressed-diff-digest"] != l.digest.String() {
		t.Errorf("info = %s (%v), want the layer's compressed digest", data, err)
	}
	for _, f := range l.files {
		want, ok := l.content(f.name)
		if !ok {
			continue
		}
		got, err := os.ReadFile(filepath.Join(dir, "diff", f.name))
		if err != nil {
			t.Fatalf("read diff/%s: %v", f.name, err)
		}
		if string(got) != string(want) {
			t.Errorf("diff/%s: got %d bytes differing from the %d of the layer", f.name, len(got), len(want))
		}
	}
	blob, err := os.ReadFile(filepath.Join(dir, "blob"))
	if err != nil || string(blob) != string(l.blob) {
		t.Errorf("read blob: %d bytes, %v, want the layer blob", len(blob), err)
	}
	if f, err := os.Create(filepath.Join(dir, "use")); !errors.Is(err, syscall.ENOENT) {
		if f != nil {
			f.Close()
		}
		t.Errorf("create use = %v, want ENOENT (reference counted)", err)
	}
	if _, ls := s.status(t, l.digest); ls == nil || ls.InUse != 1 || ls.ReadsServed == 0 {
		t.Errorf("status after use %+v, want in use 1 and reads served", ls)
	}
	if _, err := os.Stat(filepath.Join(refDir, digest.FromString("other").String())); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("stat of a layer not in the image = %v, want ENOENT", err)
	}
}

// TestInterruptedReaderDoesNotFailOthers: several processes read the same
// part of a file through a real mount while its span is still coming from
// a slow registry, fetched ahead for a reader going through the file in
// order; one of them is killed (the kernel interrupts its FUSE read). The
// others get the exact bytes, and the store counts no failed read.
func TestInterruptedReaderDoesNotFailOthers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	reg := newTestRegistry(t)
	l := stdLayer(t, 96, 1200, 200)
	s, img, z := servedFromLocal(t, reg, l, nil, Options{})
	mnt := t.TempDir()
	srv, err := alsfs.Mount(mnt, s.Store, alsfs.Options{SingleUser: true, ReadAheadKB: -1})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	const name = "data/random.bin"
	file := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(img.ref)), l.digest.String(), "diff", name)
	want, _ := l.content(name)
	x := z.openIndex(t)
	var m ztoc.FileMetadata
	for _, e := range x.Entries() {
		if e.Name == name {
			m = e
		}
	}
	first := x.SpanOf(m.UncompressedOffset)
	spanStart := func(id ztoc.SpanID) int64 { u0, _ := x.SpanUncompressedRange(id); return u0 - m.UncompressedOffset }
	if x.SpanOf(m.UncompressedOffset+m.UncompressedSize-1) < first+3 {
		t.Fatal("the file must cover at least 4 spans")
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	// Read spans first+1 and first+2 in order: the store reads ahead
	// (first+3, ...), slowly.
	for _, id := range []ztoc.SpanID{first + 1, first + 2} {
		if id == first+2 {
			reg.setDelay(time.Second)
		}
		if _, err := f.ReadAt(buf, spanStart(id)); err != nil {
			t.Fatal(err)
		}
	}
	target := (spanStart(first+3)/1000 + 1) * 1000 // dd reads whole blocks
	const readers = 5
	cmds := make([]*exec.Cmd, readers)
	outs := make([]*bytes.Buffer, readers)
	for i := range cmds {
		outs[i] = &bytes.Buffer{}
		cmds[i] = exec.Command("dd", "if="+file, "bs=1000", "skip="+strconv.FormatInt(target/1000, 10), "count=4", "iflag=direct", "status=none") // O_DIRECT: each read is a FUSE request of its own
		cmds[i].Stdout = outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			time.Sleep(50 * time.Millisecond) // the first reader is there first
		}
	}
	time.Sleep(300 * time.Millisecond) // all of them wait for the span now
	if err := cmds[0].Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmds[0].Wait(); err == nil {
		t.Log("the killed reader finished before the signal (nothing was interrupted)")
	}
	for i := 1; i < readers; i++ {
		if err := cmds[i].Wait(); err != nil {
			t.Errorf("reader %d: %v", i, err)
		} else if !bytes.Equal(outs[i].Bytes(), want[target:target+4000]) {
			t.Errorf("reader %d read %d bytes differing from the file's", i, outs[i].Len())
		}
	}
	if _, ls := s.status(t, l.digest); ls.ReadErrors != 0 {
		t.Errorf("the store counted %d failed reads, want 0", ls.ReadErrors)
	}
}

// TestPassthroughReads: once a verified layer's file has all its bytes
// here, it is written out whole, and the next open hands it to the kernel
// (FUSE passthrough): reads of it, page cache dropped, no longer reach the
// daemon, and return the exact bytes.
func TestPassthroughReads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	var uts syscall.Utsname
	syscall.Uname(&uts)
	var major, minor int
	fmt.Sscanf(utsString(uts.Release[:]), "%d.%d", &major, &minor)
	if major < 6 || major == 6 && minor < 9 {
		t.Skipf("FUSE passthrough needs Linux >= 6.9, this is %d.%d", major, minor)
	}
	reg := newTestRegistry(t)
	l := stdLayer(t, 97, 1200, 200)
	s, img, _ := servedFromLocal(t, reg, l, func(c *config.Config) { c.FUSE.Passthrough = true }, Options{})
	mnt := t.TempDir()
	srv, err := alsfs.Mount(mnt, s.Store, alsfs.Options{SingleUser: true, ReadAheadKB: -1})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	file := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(img.ref)), l.digest.String(), "diff", "data/random.bin")
	want, _ := l.content("data/random.bin")
	read := func() {
		t.Helper()
		got, err := os.ReadFile(file)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s: %d bytes, %v; want the file's %d", file, len(got), err, len(want))
		}
	}
	read() // fetches every span
	_, ls := s.status(t, l.digest)
	if !ls.Verified {
		t.Fatal("a layer from a local index is not verified")
	}
	layer := s.anyLayer(l.digest)
	i := entryIndex(t, layer, "data/random.bin")
	waitUntil(t, "the backing file written", func() bool {
		read() // an open asks for it
		return layer.cache.Has(backingKey(layer.group, i))
	})
	read() // this open gets it
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, before := s.status(t, l.digest)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(f, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read through passthrough: %v", err)
	}
	_, after := s.status(t, l.digest)
	if after.ReadsServed != before.ReadsServed {
		t.Errorf("the daemon served %d reads of a file open with passthrough, want 0", after.ReadsServed-before.ReadsServed)
	}
}

func utsString(b []int8) string {
	var out []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
