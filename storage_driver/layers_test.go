package storagedriver

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/containers/storage"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore"
)

func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCopyAndDigest(t *testing.T) {
	plain := bytes.Repeat([]byte("a tar stream, or close enough "), 5000)
	gz := gzipped(t, plain)
	tests := []struct {
		name     string
		in       []byte
		wantDiff digest.Digest
	}{
		{"gzip", gz, digest.FromBytes(plain)},
		{"uncompressed", plain, digest.FromBytes(plain)},
		{"two gzip members", append(gzipped(t, plain[:1000]), gzipped(t, plain[1000:])...), digest.FromBytes(plain)},
		{"empty", nil, digest.FromBytes(nil)},
	}
	for _, tc := range tests {
		var out bytes.Buffer
		n, blob, diff, err := copyAndDigest(&out, bytes.NewReader(tc.in))
		if err != nil {
			t.Errorf("%s: copyAndDigest error %v", tc.name, err)
			continue
		}
		if n != int64(len(tc.in)) || !bytes.Equal(out.Bytes(), tc.in) {
			t.Errorf("%s: copied %d bytes (%d written), want %d", tc.name, n, out.Len(), len(tc.in))
		}
		if want := digest.FromBytes(tc.in); blob != want {
			t.Errorf("%s: blob digest = %s, want %s", tc.name, blob, want)
		}
		if diff != tc.wantDiff {
			t.Errorf("%s: DiffID = %s, want %s", tc.name, diff, tc.wantDiff)
		}
	}
}

func TestCopyAndDigestErrors(t *testing.T) {
	gz := gzipped(t, bytes.Repeat([]byte("x"), 100000))
	corrupt := append([]byte{}, gz...)
	for i := 20; i < len(corrupt)-8; i++ {
		corrupt[i] ^= 0x55
	}
	readErr := errors.New("connection reset")
	tests := []struct {
		name string
		r    io.Reader
	}{
		{"truncated gzip", bytes.NewReader(gz[:len(gz)/2])},
		{"corrupt gzip", bytes.NewReader(corrupt)},
		// Like containers/storage's decompressor: after a member, only
		// another member may follow.
		{"gzip with trailing zeros", bytes.NewReader(append(append([]byte{}, gz...), make([]byte, 1000)...))},
		{"read error", io.MultiReader(bytes.NewReader(gz[:10]), iotest.ErrReader(readErr))},
	}
	for _, tc := range tests {
		_, _, _, err := copyAndDigest(io.Discard, tc.r)
		if err == nil {
			t.Errorf("%s: copyAndDigest succeeded, want an error", tc.name)
		}
	}
}

func TestCheckLazyIdentity(t *testing.T) {
	blob, diffID := digest.FromString("blob"), digest.FromString("diff")
	flags := map[string]any{layerstore.ExpectedLayerDiffIDFlag: diffID.String()}
	tests := []struct {
		name string
		l    storage.Layer
		ok   bool
	}{
		{"pseudo TOC identity", storage.Layer{TOCDigest: blob, Flags: flags}, true},
		{"with compressed digest", storage.Layer{TOCDigest: blob, CompressedDigest: blob, Flags: flags}, false},
		{"with uncompressed digest", storage.Layer{TOCDigest: blob, UncompressedDigest: diffID, Flags: flags}, false},
		{"other TOC digest", storage.Layer{TOCDigest: diffID, Flags: flags}, false},
		{"no TOC digest", storage.Layer{Flags: flags}, false},
		{"no expected DiffID", storage.Layer{TOCDigest: blob}, false},
		{"other expected DiffID", storage.Layer{TOCDigest: blob, Flags: map[string]any{layerstore.ExpectedLayerDiffIDFlag: blob.String()}}, false},
	}
	for _, tc := range tests {
		err := checkLazyIdentity(&tc.l, blob, diffID)
		if (err == nil) != tc.ok {
			t.Errorf("%s: checkLazyIdentity = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrUnsafeIdentity) {
			t.Errorf("%s: error %v is not ErrUnsafeIdentity", tc.name, err)
		}
	}
}

func TestImageOptions(t *testing.T) {
	list, man, config := []byte(`{"manifests":[]}`), []byte(`{"layers":[]}`), []byte(`{"rootfs":{}}`)
	md := digest.FromBytes(man)
	base := plan{topManifest: man, manifest: man, manifestDigest: md, configDigest: digest.FromBytes(config), config: config}
	withList := base
	withList.topManifest = list
	signed := base
	signed.signatures = [][]byte{[]byte("sig-one"), []byte("sig-2")}
	tests := []struct {
		name     string
		p        plan
		keys     []string
		metadata string
	}{
		{"single image", base, []string{base.configDigest.String(), "manifest-" + md.String(), "manifest"}, `{}`},
		{"from a manifest list", withList, []string{base.configDigest.String(), "manifest-" + digest.FromBytes(list).String(),
			"manifest-" + md.String(), "manifest"}, `{}`},
		{"signed", signed, []string{base.configDigest.String(), "manifest-" + md.String(), "manifest", "signatures", "signature-" + md.Encoded()},
			`{"signature-sizes":[7,5],"signatures-sizes":{"` + md.String() + `":[7,5]}}`},
	}
	for _, tc := range tests {
		o, err := imageOptions(&tc.p)
		if err != nil {
			t.Errorf("%s: imageOptions error %v", tc.name, err)
			continue
		}
		var keys []string
		for _, bd := range o.BigData {
			keys = append(keys, bd.Key)
			if bd.Digest == "" {
				t.Errorf("%s: BigData %s has no digest", tc.name, bd.Key)
			}
		}
		if strings.Join(keys, " ") != strings.Join(tc.keys, " ") {
			t.Errorf("%s: BigData keys = %q, want %q", tc.name, keys, tc.keys)
		}
		var got, want any
		if err := json.Unmarshal([]byte(o.Metadata), &got); err != nil {
			t.Errorf("%s: metadata %q: %v", tc.name, o.Metadata, err)
		}
		_ = json.Unmarshal([]byte(tc.metadata), &want)
		if gb, _ := json.Marshal(got); string(gb) != mustJSON(want) {
			t.Errorf("%s: metadata = %s, want %s", tc.name, o.Metadata, tc.metadata)
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
