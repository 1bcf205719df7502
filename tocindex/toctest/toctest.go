// Package toctest holds what the tests of the TOC formats share: a tar
// stream with every kind of entry, and reading an Index the way the layer
// store does (span by span, through Verify and Inflate).
package toctest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/lazypull/lazypull/tocindex"
	"github.com/lazypull/lazypull/ztoc"
)

// File is one tar entry of a test layer.
type File struct {
	Name, Link string
	Type       byte
	Mode       int64
	UID, GID   int
	Data       []byte
	Xattrs     map[string]string
	ModTime    time.Time
	Dev        [2]int64
}

// Files returns a layer's entries: directories, small and large files
// (random, compressible, with runs of zeros), an empty file, symlinks, a hard
// link, a device, a fifo, xattrs, a whiteout and an opaque marker. big is
// the size of the largest file.
func Files(seed uint64, big int) []File {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	text := func(n int) []byte {
		var buf bytes.Buffer
		for buf.Len() < n {
			fmt.Fprintf(&buf, "line %d of some text %x\n", rng.IntN(1000), rng.Uint32()%7)
		}
		return buf.Bytes()[:n]
	}
	holes := func(n int) []byte {
		b := random(n)
		for off := 4096; off+8192 < n; off += 32768 {
			clear(b[off : off+8192])
		}
		return b
	}
	t0 := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	files := []File{
		{Name: "etc/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "etc/hostname", Type: tar.TypeReg, Mode: 0o644, Data: []byte("lazy\n")},
		{Name: "etc/empty", Type: tar.TypeReg, Mode: 0o600},
		{Name: "etc/config.txt", Type: tar.TypeReg, Mode: 0o644, Data: text(40 << 10), Xattrs: map[string]string{"user.note": "hello"}},
		{Name: "usr/", Type: tar.TypeDir, Mode: 0o755, UID: 1, GID: 2},
		{Name: "usr/bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/tool", Type: tar.TypeReg, Mode: 0o4755, Data: random(big)},
		{Name: "usr/bin/alias", Type: tar.TypeSymlink, Link: "tool", Mode: 0o777},
		{Name: "usr/bin/hard", Type: tar.TypeLink, Link: "usr/bin/tool", Mode: 0o4755},
		{Name: "usr/share/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/share/sparse.bin", Type: tar.TypeReg, Mode: 0o644, Data: holes(big / 2)},
		{Name: "usr/share/doc.txt", Type: tar.TypeReg, Mode: 0o644, Data: text(big / 3)},
		{Name: "dev/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666, Dev: [2]int64{1, 3}},
		{Name: "dev/pipe", Type: tar.TypeFifo, Mode: 0o600},
		{Name: "var/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "var/.wh.old", Type: tar.TypeReg, Mode: 0o600},
		{Name: "var/cache/", Type: tar.TypeDir, Mode: 0o700},
		{Name: "var/cache/.wh..wh..opq", Type: tar.TypeReg, Mode: 0o600},
	}
	for i := range 20 {
		files = append(files, File{Name: fmt.Sprintf("usr/share/small-%02d", i), Type: tar.TypeReg, Mode: 0o644, Data: text(100 + rng.IntN(3000))})
	}
	for i := range files {
		files[i].ModTime = t0.Add(time.Duration(i) * time.Minute)
	}
	return files
}

// Tar writes files as a tar stream (PAX where needed).
func Tar(files []File) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{
			Typeflag: f.Type, Name: f.Name, Linkname: f.Link, Mode: f.Mode,
			Uid: f.UID, Gid: f.GID, Size: int64(len(f.Data)), ModTime: f.ModTime,
			Devmajor: f.Dev[0], Devminor: f.Dev[1],
		}
		for k, v := range f.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			panic(err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			panic(err)
		}
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// ReadVirtual reads n bytes at off of x's virtual stream from blob, span by
// span, through Verify and Inflate, as the layer store does.
func ReadVirtual(x *tocindex.Index, blob []byte, off, n int64) ([]byte, error) {
	out := make([]byte, 0, n)
	if n == 0 {
		return out, nil
	}
	for id := x.SpanOf(off); id < x.NumSpans() && int64(len(out)) < n; id++ {
		c0, c1 := x.CompressedRange(id)
		u0, u1 := x.UncompressedRange(id)
		if u0 == u1 {
			continue
		}
		comp := blob[c0:c1]
		if err := x.Verify(id, comp); err != nil {
			return nil, err
		}
		data, err := x.Inflate(id, comp, nil)
		if err != nil {
			return nil, err
		}
		lo := max(off+int64(len(out)), u0) - u0
		hi := min(off+n, u1) - u0
		out = append(out, data[lo:hi]...)
	}
	if int64(len(out)) != n {
		return nil, fmt.Errorf("read %d of %d bytes at %d", len(out), n, off)
	}
	return out, nil
}

// Contents reads every regular file of x from blob.
func Contents(x *tocindex.Index, blob []byte) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, e := range x.Entries() {
		if e.Type != ztoc.TypeReg {
			continue
		}
		data, err := ReadVirtual(x, blob, e.UncompressedOffset, e.UncompressedSize)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.Name, err)
		}
		out[e.Name] = data
	}
	return out, nil
}

// CheckTampered flips a byte in the middle of the span holding byte at of
// file name and reports what x let through: Verify or Inflate of that span
// must fail with tocindex.ErrCorrupt, VerifyLayer of the blob with
// tocindex.ErrVerify. Nil when both refused it.
func CheckTampered(x *tocindex.Index, blob []byte, want tocindex.Want, name string, at int64) error {
	var file *ztoc.FileMetadata
	for _, e := range x.Entries() {
		if e.Name == name {
			file = &e
		}
	}
	if file == nil {
		return fmt.Errorf("no entry %s", name)
	}
	id := x.SpanOf(file.UncompressedOffset + at)
	c0, c1 := x.CompressedRange(id)
	blob = bytes.Clone(blob)
	blob[c0+(c1-c0)/2] ^= 0x40
	err := x.Verify(id, blob[c0:c1])
	if err == nil {
		_, err = x.Inflate(id, blob[c0:c1], nil)
	}
	if !errors.Is(err, tocindex.ErrCorrupt) {
		return fmt.Errorf("Verify/Inflate of a tampered span = %v, want ErrCorrupt", err)
	}
	if _, err := x.VerifyLayer(context.Background(), bytes.NewReader(blob), want); !errors.Is(err, tocindex.ErrVerify) {
		return fmt.Errorf("VerifyLayer of a tampered blob = %v, want ErrVerify", err)
	}
	return nil
}
