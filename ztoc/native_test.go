package ztoc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestNativeLayoutRoundTrip: a zTOC in the native layout (meta + windows)
// serves every file exactly like the SOCI zTOC, its meta is a small part
// of the SOCI zTOC, it converts back to the very same SOCI bytes, passes
// Verify, and refuses to serve without (or with damaged) windows.
func TestNativeLayoutRoundTrip(t *testing.T) {
	es := genEntries(7, 40, 3<<20)
	raw := tarBytes(t, es)
	blob := gzipMembers(t, raw, 6, 0)
	res, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{SpanSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	soci, err := Marshal(res.Ztoc)
	if err != nil {
		t.Fatal(err)
	}
	meta, windows, err := MarshalNative(res.Ztoc)
	if err != nil {
		t.Fatal(err)
	}
	spans := int(res.Ztoc.CompressionInfo.MaxSpanID) + 1
	if len(windows) != spans*WindowSize || int64(len(meta)) >= int64(len(soci))-int64(spans-1)*WindowSize {
		t.Errorf("native: meta %d bytes, windows %d; SOCI zTOC %d bytes with %d spans", len(meta), len(windows), len(soci), spans)
	}
	t.Logf("%d spans: SOCI zTOC %d bytes, native meta %d bytes (%.1f %%)", spans, len(soci), len(meta), 100*float64(len(meta))/float64(len(soci)))

	x, err := OpenLayerIndex(bytes.NewReader(meta), int64(len(meta)), WithWindows(bytes.NewReader(windows)))
	if err != nil {
		t.Fatalf("open native: %v", err)
	}
	if d, n, ok := x.NativeWindows(); !ok || d != sha(windows) || n != int64(len(windows)) {
		t.Errorf("NativeWindows = %s, %d, %v; want the windows blob", d, n, ok)
	}
	r := NewReader(x, ReaderAtSource(x, bytes.NewReader(blob)), nil)
	for _, e := range es {
		if e.hdr.Typeflag != 0 && e.hdr.Typeflag != '0' {
			continue
		}
		f, err := r.Open(e.hdr.Name)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(e.data))
		if n, err := f.ReadAt(got, 0); n != len(e.data) || (err != nil && err != io.EOF) || !bytes.Equal(got, e.data) {
			t.Fatalf("read %q through the native zTOC: %d, %v", e.hdr.Name, n, err)
		}
	}
	if _, err := x.Verify(context.Background(), bytes.NewReader(blob), VerifyOptions{Digest: sha(blob), DiffID: sha(raw)}); err != nil {
		t.Errorf("Verify through the native zTOC: %v", err)
	}
	back, err := x.MarshalSOCI()
	if err != nil || !bytes.Equal(back, soci) {
		t.Errorf("MarshalSOCI = %d bytes, %v; want the %d bytes of the SOCI zTOC", len(back), err, len(soci))
	}

	// No windows: reads fail, nothing is made up.
	nx, err := OpenLayerIndex(bytes.NewReader(meta), int64(len(meta)))
	if err != nil {
		t.Fatal(err)
	}
	c0, c1 := nx.SpanCompressedRange(1)
	comp := blob[c0:c1]
	if _, err := nx.InflateSpan(1, comp, nil); !errors.Is(err, ErrNoWindows) {
		t.Errorf("inflate without windows = %v, want ErrNoWindows", err)
	}
	// A damaged window is refused.
	bad := append([]byte(nil), windows...)
	bad[WindowSize+100] ^= 1
	bx, _ := OpenLayerIndex(bytes.NewReader(meta), int64(len(meta)), WithWindows(bytes.NewReader(bad)))
	if _, err := bx.InflateSpan(1, comp, nil); !errors.Is(err, ErrSpanDigest) {
		t.Errorf("inflate with a damaged window = %v, want ErrSpanDigest", err)
	}
}

// TestNativeVerifyProvesWindows: Verify of a native zTOC needs no windows
// blob: it checks the stream's own window at each checkpoint against the
// zTOC's digest of it and hands it over (OnWindow, before OnCheckpoint
// announces the checkpoint), so a verifying reader never fetches windows;
// a window digest that does not fit the stream fails the verification at
// that checkpoint.
func TestNativeVerifyProvesWindows(t *testing.T) {
	es := genEntries(11, 30, 2<<20)
	raw := tarBytes(t, es)
	blob := gzipMembers(t, raw, 6, 0)
	res, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{SpanSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	meta, windows, err := MarshalNative(res.Ztoc)
	if err != nil {
		t.Fatal(err)
	}
	x, err := OpenLayerIndex(bytes.NewReader(meta), int64(len(meta))) // no windows
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(windows))
	delivered, announced := 0, 0
	opts := VerifyOptions{Digest: sha(blob), DiffID: sha(raw),
		OnWindow: func(id int, w []byte) {
			if id != delivered || announced != id {
				t.Errorf("OnWindow(%d) after %d windows and %d checkpoints", id, delivered, announced)
			}
			copy(got[id*WindowSize:], w)
			delivered++
		},
		OnCheckpoint: func(n int) { announced = n },
	}
	if _, err := x.Verify(context.Background(), bytes.NewReader(blob), opts); err != nil {
		t.Fatalf("Verify of a native zTOC without its windows: %v", err)
	}
	if spans := len(windows) / WindowSize; delivered != spans || announced != spans || !bytes.Equal(got, windows) {
		t.Errorf("%d windows handed over, %d checkpoints announced, equal to the windows blob: %v; want %d", delivered, announced, bytes.Equal(got, windows), spans)
	}

	const victim = 2
	x.cps.windowDigests[victim][0] ^= 1
	announced = 0
	_, err = x.Verify(context.Background(), bytes.NewReader(blob), VerifyOptions{Digest: sha(blob), OnCheckpoint: func(n int) { announced = n }})
	if want := fmt.Sprintf("checkpoint %d ", victim); !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), want) || announced != victim {
		t.Errorf("Verify with a wrong window digest = %v after %d checkpoints; want ErrVerify naming %q after %d", err, announced, want, victim)
	}
}
