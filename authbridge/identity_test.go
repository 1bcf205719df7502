package authbridge

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestCredentialIDFollowsLogout: the ID changes with every change of the
// credential an image is read with (login, logout, another user, a
// handover), never shows the secret, and a handed-over credential that
// equaled the auth file's is deleted once the auth file no longer holds it
// (podman logout), while one the daemon could not read itself stays.
func TestCredentialIDFollowsLogout(t *testing.T) {
	authFile := filepath.Join(t.TempDir(), "auth.json")
	alice := secret("alice", "alice-id-Pw-7c1d")
	bob := secret("bob", "bob-id-Pw-2e9a")
	writeFile(t, authFile, authJSON(map[string]authEntry{"reg.example": {user: "alice", password: alice}}, nil))
	m := newManager(t, Options{AuthFile: authFile})
	ref, other := mustRef(t, "reg.example/app:v1"), mustRef(t, "reg.example/app:v2")
	id := func(r string) string {
		t.Helper()
		got, err := m.CredentialID(mustRef(t, r))
		if err != nil {
			t.Fatalf("CredentialID(%s): %v", r, noteErr(err))
		}
		noteText(got)
		return got
	}
	asAlice := id(ref.String())
	if !strings.HasPrefix(asAlice, "files:") || strings.Contains(asAlice, alice) {
		t.Errorf("CredentialID with alice in the auth file = %q, want files:<hash>", asAlice)
	}
	if again := id(ref.String()); again != asAlice {
		t.Errorf("CredentialID changed without a change of credentials: %q then %q", asAlice, again)
	}

	// Handed over, equal to the file's: the source changes, the ID too.
	if err := m.Handover(ref.String(), Credential{Username: "alice", Password: alice}); err != nil {
		t.Fatal(err)
	}
	// Handed over for another reference, differing from the file's (bob).
	if err := m.Handover(other.String(), Credential{Username: "bob", Password: bob}); err != nil {
		t.Fatal(err)
	}
	handed := id(ref.String())
	if !strings.HasPrefix(handed, "handover:") || handed == asAlice {
		t.Errorf("CredentialID after the handover = %q, want a handover: ID other than %q", handed, asAlice)
	}
	bobs := id(other.String())

	// podman logout: the file no longer holds alice.
	writeFile(t, authFile, authJSON(map[string]authEntry{}, nil))
	loggedOut := id(ref.String())
	if !strings.HasPrefix(loggedOut, "files-anonymous:") {
		t.Errorf("CredentialID after the logout = %q, want files-anonymous:<hash>", loggedOut)
	}
	if _, ok := m.handover.Get(ref.String()); ok {
		t.Errorf("the credential handed over for %s (the same as the auth file's) survived the logout", ref)
	}
	if got := id(other.String()); got != bobs {
		t.Errorf("CredentialID of %s (handed over, not from the file) = %q after the logout, want %q", other, got, bobs)
	}

	// Another user logs in: another ID.
	writeFile(t, authFile, authJSON(map[string]authEntry{"reg.example": {user: "bob", password: bob}}, nil))
	if got := id(ref.String()); got == asAlice || got == loggedOut || !strings.HasPrefix(got, "files:") {
		t.Errorf("CredentialID after bob's login = %q, want a files: ID other than alice's %q and the anonymous %q", got, asAlice, loggedOut)
	}
}
