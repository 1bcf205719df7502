package storagedriver

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/types"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/control"
)

// recordingService is a control.Service that records hand-overs (the real
// daemon stores them in authbridge, where a zero credential deletes).
type recordingService struct {
	mu    sync.Mutex
	calls []map[string]control.Credential
}

func (s *recordingService) Status(context.Context) (*control.Status, error) {
	return &control.Status{}, nil
}

func (s *recordingService) Prune(context.Context, control.PruneRequest) (*control.PruneResult, error) {
	return &control.PruneResult{}, nil
}

func (s *recordingService) Handover(_ context.Context, creds map[string]control.Credential) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, creds)
	return nil
}

// TestHandOver: a pull with credentials hands them to the daemon; an
// anonymous pull of the same image hands over the zero credential, which
// deletes what was handed over before (fails on 064ea42, which sent
// nothing for anonymous pulls, so the daemon kept reading the image with
// the old credentials).
func TestHandOver(t *testing.T) {
	dir := t.TempDir()
	svc := &recordingService{}
	srv, err := control.Listen(filepath.Join(dir, "control.sock"), svc)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ref, err := reference.ParseNormalizedNamed("registry.example.com/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	withCreds := filepath.Join(dir, "auth.json")
	auth := base64.StdEncoding.EncodeToString([]byte("alice:secret"))
	if err := os.WriteFile(withCreds, []byte(fmt.Sprintf(`{"auths":{"registry.example.com":{"auth":%q}}}`, auth)), 0o600); err != nil {
		t.Fatal(err)
	}
	anonymous := filepath.Join(dir, "empty.json")
	if err := os.WriteFile(anonymous, []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	silent := logrus.New()
	silent.SetOutput(io.Discard)
	for _, tc := range []struct {
		name, authFile string
		want           control.Credential
	}{
		{"credentials", withCreds, control.Credential{Username: "alice", Password: "secret"}},
		{"anonymous", anonymous, control.Credential{}},
	} {
		svc.mu.Lock()
		svc.calls = nil
		svc.mu.Unlock()
		o := Options{DaemonSocket: filepath.Join(dir, "control.sock"), SystemContext: &types.SystemContext{AuthFilePath: tc.authFile}}
		handOver(context.Background(), o, ref, logrus.NewEntry(silent))
		svc.mu.Lock()
		calls := svc.calls
		svc.mu.Unlock()
		if len(calls) != 1 {
			t.Fatalf("%s: %d hand-overs, want 1", tc.name, len(calls))
		}
		got, ok := calls[0][ref.String()]
		if !ok || got != tc.want || len(calls[0]) != 1 {
			t.Errorf("%s: handed over %+v, want {%s: %+v}", tc.name, calls[0], ref, tc.want)
		}
	}
}
