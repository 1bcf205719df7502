package alsfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/ztoc"
	"golang.org/x/sys/unix"
)

// synthContent is a LayerContent whose regular files hold synthByte(off):
// large files without large buffers.
type synthContent struct {
	entries []ztoc.FileMetadata
}

func synthByte(off int64) byte { return byte(uint64(off) * 0x9E3779B97F4A7C15 >> 56) }

func (c *synthContent) Entries() []ztoc.FileMetadata { return c.entries }

func (c *synthContent) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	size := c.entries[i].UncompressedSize
	if off >= size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	for j := range n {
		p[j] = synthByte(off + int64(j))
	}
	if off+int64(n) == size {
		return n, io.EOF
	}
	return n, nil
}

type synthLayer struct{ content *synthContent }

func (l synthLayer) Info() ([]byte, error)          { return []byte(`{}`), nil }
func (l synthLayer) Blob() (io.ReaderAt, int64)     { return bytes.NewReader(nil), 0 }
func (l synthLayer) Content() (LayerContent, error) { return l.content, nil }
func (l synthLayer) Release()                       {}

const hugeSize = 5<<30 + 123 // > 4 GiB

const manyFiles = 5000

func synthEntries() []ztoc.FileMetadata {
	entries := []ztoc.FileMetadata{
		{Name: "huge", Type: ztoc.TypeReg, UncompressedSize: hugeSize, Mode: 0o644, ModTime: testTime},
		{Name: "small", Type: ztoc.TypeReg, UncompressedSize: 10, Mode: 0o644, ModTime: testTime},
		{Name: "empty", Type: ztoc.TypeReg, Mode: 0o644, ModTime: testTime},
		{Name: "many/", Type: ztoc.TypeDir, Mode: 0o755, ModTime: testTime},
	}
	for i := range manyFiles {
		entries = append(entries, ztoc.FileMetadata{Name: fmt.Sprintf("many/file-%05d", manyFiles-i), Type: ztoc.TypeReg, Mode: 0o644})
	}
	return entries
}

func mountSynth(t *testing.T) string {
	d := layerDigest("synth")
	r := newTestResolver()
	r.add(testRef, d, synthLayer{&synthContent{synthEntries()}})
	_, mnt := mountTest(t, r, Options{})
	return filepath.Join(mnt, encodeRef(testRef), d.String(), "diff")
}

func TestFileOver4GiB(t *testing.T) {
	diff := mountSynth(t)
	f, err := os.Open(filepath.Join(diff, "huge"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Size != hugeSize || st.Blocks != (hugeSize+511)/512 {
		t.Fatalf("fstat = size %d blocks %d, %v; want %d, %d", st.Size, st.Blocks, err, int64(hugeSize), (hugeSize+511)/512)
	}
	tests := []struct {
		off     int64
		n       int
		wantN   int
		wantEOF bool
	}{
		{0, 4096, 4096, false},
		{1<<32 - 8, 16, 16, false}, // across 4 GiB
		{1<<32 + 12345, 1 << 20, 1 << 20, false},
		{hugeSize - 23, 100, 23, true}, // the last bytes
		{hugeSize, 10, 0, true},
		{hugeSize + 1<<30, 10, 0, true},
	}
	for _, tc := range tests {
		buf := make([]byte, tc.n)
		n, err := f.ReadAt(buf, tc.off)
		if n != tc.wantN || (err == io.EOF) != tc.wantEOF || (err != nil && err != io.EOF) {
			t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d, EOF %v", tc.n, tc.off, n, err, tc.wantN, tc.wantEOF)
			continue
		}
		for j := range n {
			if buf[j] != synthByte(tc.off+int64(j)) {
				t.Errorf("ReadAt(%d bytes at %d): byte %d is %#x, want %#x", tc.n, tc.off, j, buf[j], synthByte(tc.off+int64(j)))
				break
			}
		}
	}
}

// TestConcurrentReads reads one file from several goroutines at once.
func TestConcurrentReads(t *testing.T) {
	diff := mountSynth(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Open(filepath.Join(diff, "huge"))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			buf := make([]byte, 256<<10)
			for i := range 16 {
				off := int64(g)*(hugeSize/8) + int64(i)*int64(len(buf))*3
				if _, err := f.ReadAt(buf, off); err != nil {
					errs <- err
					return
				}
				for j := range buf {
					if buf[j] != synthByte(off+int64(j)) {
						errs <- fmt.Errorf("goroutine %d: byte at %d is %#x, want %#x", g, off+int64(j), buf[j], synthByte(off+int64(j)))
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestLseek(t *testing.T) {
	diff := mountSynth(t)
	tests := []struct {
		file   string
		off    int64
		whence int
		want   int64
		errno  syscall.Errno
	}{
		{"huge", 0, unix.SEEK_DATA, 0, 0},
		{"huge", 1<<32 + 1, unix.SEEK_DATA, 1<<32 + 1, 0},
		{"huge", 0, unix.SEEK_HOLE, hugeSize, 0},
		{"huge", 1 << 32, unix.SEEK_HOLE, hugeSize, 0},
		{"huge", hugeSize - 1, unix.SEEK_DATA, hugeSize - 1, 0},
		{"huge", hugeSize, unix.SEEK_DATA, 0, syscall.ENXIO},
		{"huge", hugeSize, unix.SEEK_HOLE, 0, syscall.ENXIO},
		{"huge", hugeSize + 1, unix.SEEK_DATA, 0, syscall.ENXIO},
		{"small", 9, unix.SEEK_HOLE, 10, 0},
		{"small", 10, unix.SEEK_DATA, 0, syscall.ENXIO},
		{"empty", 0, unix.SEEK_DATA, 0, syscall.ENXIO},
		{"empty", 0, unix.SEEK_HOLE, 0, syscall.ENXIO},
		{"small", 3, unix.SEEK_END, 13, 0},
	}
	for _, tc := range tests {
		f, err := os.Open(filepath.Join(diff, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := unix.Seek(int(f.Fd()), tc.off, tc.whence)
		f.Close()
		if tc.errno != 0 {
			if !errors.Is(err, tc.errno) {
				t.Errorf("lseek(%s, %d, %d) = %d, %v; want %v", tc.file, tc.off, tc.whence, got, err, tc.errno)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("lseek(%s, %d, %d) = %d, %v; want %d", tc.file, tc.off, tc.whence, got, err, tc.want)
		}
	}
}

// rawDirent is one linux_dirent64.
type rawDirent struct {
	ino  uint64
	off  int64
	name string
}

// getdents reads directory entries with a small buffer, so that the
// listing takes many calls.
func getdents(t *testing.T, fd int) []rawDirent {
	t.Helper()
	var ents []rawDirent
	buf := make([]byte, 1024)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatalf("getdents: %v", err)
		}
		if n == 0 {
			return ents
		}
		for b := buf[:n]; len(b) > 0; {
			reclen := binary.LittleEndian.Uint16(b[16:18])
			name := b[19:reclen]
			ents = append(ents, rawDirent{
				ino:  binary.LittleEndian.Uint64(b[0:8]),
				off:  int64(binary.LittleEndian.Uint64(b[8:16])),
				name: string(name[:bytes.IndexByte(name, 0)]),
			})
			b = b[reclen:]
		}
	}
}

// TestReaddirStable lists a large directory repeatedly, also resuming
// from saved offsets (telldir/seekdir).
func TestReaddirStable(t *testing.T) {
	diff := mountSynth(t)
	dir := filepath.Join(diff, "many")
	var listings [][]string
	for range 2 {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		listings = append(listings, names)
	}
	if len(listings[0]) != manyFiles || !slices.Equal(listings[0], listings[1]) {
		t.Fatalf("two listings: %d and %d names, equal %v; want %d equal", len(listings[0]), len(listings[1]),
			slices.Equal(listings[0], listings[1]), manyFiles)
	}

	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	all := getdents(t, fd)
	if len(all) != manyFiles+2 || all[0].name != "." || all[1].name != ".." || all[2].name != "file-00001" {
		t.Fatalf("getdents: %d entries starting %v; want %d starting ., .., file-00001", len(all), all[:min(3, len(all))], manyFiles+2)
	}
	var many syscall.Stat_t
	if err := syscall.Fstat(fd, &many); err != nil || all[0].ino != many.Ino {
		t.Errorf(`"." has inode %d, the directory %d (%v)`, all[0].ino, many.Ino, err)
	}
	for _, k := range []int{0, 1, 2, 777, manyFiles} {
		if _, err := unix.Seek(fd, all[k].off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		rest := getdents(t, fd)
		if !slices.Equal(rest, all[k+1:]) {
			t.Errorf("after seeking to the offset of entry %d: %d entries, want the %d after it", k, len(rest), len(all)-k-1)
		}
	}
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if again := getdents(t, fd); !slices.Equal(again, all) {
		t.Errorf("listing after rewinding differs")
	}
}

// BenchmarkRead measures reading a 256 MiB file through the mount, the
// first time through the filesystem and then from the page cache.
func BenchmarkRead(b *testing.B) {
	canMount(b)
	d := layerDigest("bench")
	r := newTestResolver()
	r.add(testRef, d, synthLayer{&synthContent{[]ztoc.FileMetadata{
		{Name: "f", Type: ztoc.TypeReg, UncompressedSize: 256 << 20, Mode: 0o644},
	}}})
	_, mnt := mountTest(b, r, Options{})
	path := filepath.Join(mnt, encodeRef(testRef), d.String(), "diff/f")
	buf := make([]byte, 1<<20)
	read := func() time.Duration {
		start := time.Now()
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if _, err := io.CopyBuffer(io.Discard, f, buf); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	cold := read()
	b.ResetTimer()
	for range b.N {
		read()
	}
	b.StopTimer()
	b.SetBytes(256 << 20)
	b.ReportMetric(256/cold.Seconds(), "cold-MiB/s")
}
