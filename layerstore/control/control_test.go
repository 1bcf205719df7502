package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

type fakeService struct {
	got map[string]Credential
}

func (f *fakeService) Status(context.Context) (*Status, error) {
	return &Status{Version: "v-test", Layers: []LayerStatus{{Digest: "sha256:aa", Spans: 3}}}, nil
}

func (f *fakeService) Prune(_ context.Context, req PruneRequest) (*PruneResult, error) {
	if req.SpanTarget < 0 {
		return nil, errors.New("negative target")
	}
	return &PruneResult{SpanBytesFreed: 42}, nil
}

func (f *fakeService) Handover(_ context.Context, c map[string]Credential) error {
	f.got = c
	return nil
}

func TestRoundTrip(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "lp.sock")
	svc := &fakeService{}
	srv, err := Listen(sock, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, %v; want 0600", st.Mode(), err)
	}
	ctx := context.Background()
	c := NewClient(sock)
	st, err := c.Status(ctx)
	if err != nil || st.Version != "v-test" || len(st.Layers) != 1 || st.Layers[0].Spans != 3 {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	res, err := c.Prune(ctx, PruneRequest{})
	if err != nil || res.SpanBytesFreed != 42 {
		t.Fatalf("Prune = %+v, %v", res, err)
	}
	if _, err := c.Prune(ctx, PruneRequest{SpanTarget: -1}); err == nil || err.Error() != "daemon: negative target" {
		t.Errorf("Prune(bad) = %v, want the daemon's error", err)
	}
	creds := map[string]Credential{"reg/img:tag": {Username: "u", Password: "p"}}
	if err := c.Handover(ctx, creds); err != nil {
		t.Fatal(err)
	}
	if svc.got["reg/img:tag"].Password != "p" {
		t.Errorf("handed over %+v", svc.got)
	}
	// A second daemon on the same socket is refused.
	if _, err := Listen(sock, svc); err == nil {
		t.Error("second Listen on a live socket succeeded")
	}
}

func TestNoDaemonAndStaleSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "lp.sock")
	if _, err := NewClient(sock).Status(context.Background()); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Status without daemon = %v, want ErrNoDaemon", err)
	}
	// A socket file left by a killed daemon is replaced.
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := Listen(sock, &fakeService{})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	srv.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Error("socket not removed on Close")
	}
}
