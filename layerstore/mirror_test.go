package layerstore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lazypull/lazypull/layerstore/config"
)

// TestTamperingMirrorLeftOut: a registries.conf mirror serves a span of a
// layer with a flipped byte; the span fails verification, the mirror is left
// out for the blob and the refetch comes from the origin: the read returns
// exact bytes and the layer stays good.
func TestTamperingMirrorLeftOut(t *testing.T) {
	origin, mirror := newTestRegistry(t), newTestRegistry(t)
	l := stdLayer(t, 53, 600, 200)
	mirror.pushImage(t, "app/data", "v1", []*testLayer{l}, imageOptions{})
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "[[registry]]\nlocation = %q\ninsecure = true\n[[registry.mirror]]\nlocation = %q\ninsecure = true\n",
		origin.host, mirror.host), 0o644); err != nil {
		t.Fatal(err)
	}
	s, img, z := servedFromLocal(t, origin, l, func(c *config.Config) { c.Registry.RegistriesConf = conf }, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	c, err := lv.Content()
	if err != nil {
		t.Fatal(err)
	}
	i := entryIndex(t, c, "data/random.bin")
	x := z.openIndex(t)
	bad := x.SpanOf(c.Entries()[i].UncompressedOffset) + 2
	s0, s1 := x.SpanCompressedRange(bad)
	mirror.setTamper(l.digest, (s0+s1)/2)

	want, _ := l.content("data/random.bin")
	p := make([]byte, len(want))
	n, err := c.ReadFile(context.Background(), i, p, 0)
	if err != nil || !bytes.Equal(p[:n], want) {
		t.Fatalf("ReadFile past a tampering mirror = %d bytes, %v; want the file's %d bytes", n, err, len(want))
	}
	_, ls := s.status(t, l.digest)
	if ls == nil || ls.Bad != "" || ls.Endpoint != origin.host+"/app/data" {
		t.Errorf("layer status %+v, want a good layer last served by the origin", ls)
	}
}
