package authbridge

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/containers/image/v5/docker/reference"
	dockerconfig "github.com/containers/image/v5/pkg/docker/config"
)

// CredentialID identifies the credential ref is read with right now,
// without revealing it: where it comes from (handed over for exactly ref,
// or the auth files and helpers, read now) and a hash of it. It changes when
// podman logs out, or in as another user, and when a handed-over credential
// expires or is withdrawn (handed over as anonymous). A caller that
// remembers the ID under which the registry granted access can tell, for
// the cost of reading the auth files, whether that grant still speaks for
// the credentials as they are now.
//
// A handed-over credential that equaled the auth files' when podman handed
// it over (podman and the daemon read the same auth.json) follows the
// files: once they no longer hold it (`podman logout`), the handed-over copy
// is deleted as well, with the tokens obtained with it.
func (m *Manager) CredentialID(ref reference.Named) (string, error) {
	name := ref.String()
	source := m.credentialSource(name)
	if source != filesSource && m.followsFiles(name) {
		handed, _ := m.handover.Get(name)
		files, err := m.filesCredential(ref)
		if err != nil {
			return "", err
		}
		if files != handed {
			m.log.WithField("ref", name).Info("The auth files no longer hold the credentials podman handed over (podman logout): deleting them")
			if err := m.HandoverAll(map[string]Credential{name: {}}); err != nil {
				return "", err
			}
			source = m.credentialSource(name)
		}
	}
	c, err := m.credential(ref, source)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, s := range []string{source, c.Username, c.Password, c.IdentityToken} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	kind := "files"
	if source != filesSource {
		kind = "handover"
	}
	if c.IsZero() {
		kind += "-anonymous"
	}
	return kind + ":" + hex.EncodeToString(h.Sum(nil)[:12]), nil
}

// filesCredential reads the credential of ref from the auth files and
// helpers only.
func (m *Manager) filesCredential(ref reference.Named) (Credential, error) {
	m.credLookups.Add(1)
	ac, err := dockerconfig.GetCredentialsForRef(m.sys, ref)
	if err != nil {
		return Credential{}, fmt.Errorf("%w for %s: %w", ErrCredentials, ref.Name(), err)
	}
	return Credential{Username: ac.Username, Password: ac.Password, IdentityToken: ac.IdentityToken}, nil
}

// noteFilesMirror records, for every credential handed over, whether the
// auth files held the same one then (see CredentialID).
func (m *Manager) noteFilesMirror(creds map[string]Credential) {
	for name, c := range creds {
		norm, err := normalizeRef(name)
		if err != nil {
			continue
		}
		same := false
		if !c.IsZero() {
			if ref, err := reference.ParseNormalizedNamed(norm); err == nil {
				files, err := m.filesCredential(ref)
				same = err == nil && files == c
			}
		}
		m.mu.Lock()
		if same {
			m.mirrorsFiles[norm] = true
		} else {
			delete(m.mirrorsFiles, norm)
		}
		if len(m.mirrorsFiles) > MaxHandoverEntries {
			for k := range m.mirrorsFiles {
				if _, ok := m.handover.Get(k); !ok {
					delete(m.mirrorsFiles, k)
				}
			}
		}
		m.mu.Unlock()
	}
}

// followsFiles reports whether the credential handed over for ref equaled
// the auth files' when it was handed over.
func (m *Manager) followsFiles(ref string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mirrorsFiles[ref]
}
