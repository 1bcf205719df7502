package alsfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// panickyContent panics when the file "small" is read (a bug, or input
// no check stopped).
type panickyContent struct{ synthContent }

func (c *panickyContent) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	if c.entries[i].Name == "small" {
		panic("crafted index slipped through")
	}
	return c.synthContent.ReadFile(ctx, i, p, off)
}

// TestPanicInHandlerIsLoud: a read whose handler panics fails with EIO on a
// real mount, the panic is logged at Error level with its stack and
// counted (go-fuse alone would log it nowhere), and the mount goes on
// serving: other files read, the same file fails again, not hangs.
func TestPanicInHandlerIsLoud(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	d := layerDigest("panicky")
	r := newTestResolver()
	r.add(testRef, d, panickyLayer{&panickyContent{synthContent{synthEntries()}}})
	_, mnt := mountTest(t, r, Options{Log: logrus.NewEntry(logger)})
	dir := filepath.Join(mnt, encodeRef(testRef), d.String(), "diff")
	before := Panics()
	for range 2 {
		_, err := os.ReadFile(filepath.Join(dir, "small"))
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("read of a file whose handler panics = %v, want EIO", err)
		}
	}
	// The kernel may retry a failed read once more (read-ahead).
	got := Panics() - before
	if got < 2 {
		t.Errorf("Panics() grew by %d, want at least 2", got)
	}
	loud := 0
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.ErrorLevel && strings.Contains(e.Message, "Panic in a FUSE request handler") &&
			strings.Contains(e.Data["stack"].(string), "panickyContent") && e.Data["panic"] == "crafted index slipped through" {
			loud++
		}
	}
	if int64(loud) != got {
		t.Errorf("%d Error entries with the panic and its stack, want %d", loud, got)
	}
	f, err := os.Open(filepath.Join(dir, "huge"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if n, err := f.ReadAt(buf, 1<<32); err != nil || n != len(buf) || buf[7] != synthByte(1<<32+7) {
		t.Errorf("read of another file after the panics = %d, %v", n, err)
	}
}

type panickyLayer struct{ content *panickyContent }

func (l panickyLayer) Info() ([]byte, error)          { return []byte(`{}`), nil }
func (l panickyLayer) Blob() (io.ReaderAt, int64)     { return bytes.NewReader(nil), 0 }
func (l panickyLayer) Content() (LayerContent, error) { return l.content, nil }
func (l panickyLayer) Release()                       {}
