package authbridge

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// buildCredHelper builds testdata/credhelper as docker-credential-<name> into
// a fresh directory put first on PATH, with the answers in db (server ->
// user, secret). It returns the path of the log of servers asked for.
func buildCredHelper(t *testing.T, name string, db map[string][2]string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir := t.TempDir()
	out, err := exec.Command(goBin, "build", "-o", filepath.Join(dir, "docker-credential-"+name), "./testdata/credhelper/main.go").CombinedOutput()
	if err != nil {
		t.Fatalf("building the credential helper: %v\n%s", err, out)
	}
	entries := map[string]map[string]string{}
	for server, c := range db {
		entries[server] = map[string]string{"Username": c[0], "Secret": c[1]}
	}
	raw, _ := json.Marshal(entries)
	writeFile(t, filepath.Join(dir, name+".json"), string(raw))
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return filepath.Join(dir, name+".log")
}

// TestCredentialSearchOrder checks podman's order of auth files: each case
// writes credentials for the same registry into several places and expects
// the first in containers-auth.json(5) order to win.
func TestCredentialSearchOrder(t *testing.T) {
	const reg = "reg.example:5000"
	type place int
	const (
		explicit place = iota
		runtimeDir
		configHome
		homeConfig // $HOME/.config when XDG_CONFIG_HOME is unset
		dockerConfigEnv
		homeDocker // $HOME/.docker/config.json when DOCKER_CONFIG is unset
		homeDockercfg
		runContainers // /run/containers/<uid> when XDG_RUNTIME_DIR is unset
	)
	names := map[place]string{explicit: "explicit", runtimeDir: "runtime", configHome: "xdgconfig", homeConfig: "homeconfig",
		dockerConfigEnv: "dockerconfig", homeDocker: "homedocker", homeDockercfg: "dockercfg", runContainers: "runcontainers"}
	tests := []struct {
		name   string
		places []place // where credentials are written (user = place name)
		unset  []string
		want   string // user found ("" = none)
		// otherAuthFile makes the explicit file hold credentials for another
		// registry only.
		otherAuthFile bool
	}{
		{name: "explicit file wins", places: []place{explicit, runtimeDir, configHome, dockerConfigEnv, homeDockercfg}, want: "explicit"},
		{name: "explicit file is the only one read", places: []place{runtimeDir, configHome, dockerConfigEnv}, otherAuthFile: true, want: ""},
		{name: "XDG_RUNTIME_DIR first", places: []place{runtimeDir, configHome, dockerConfigEnv, homeDockercfg}, want: "runtime"},
		{name: "XDG_CONFIG_HOME next", places: []place{configHome, dockerConfigEnv, homeDockercfg}, want: "xdgconfig"},
		{name: "HOME/.config without XDG_CONFIG_HOME", places: []place{homeConfig, dockerConfigEnv}, unset: []string{"XDG_CONFIG_HOME"}, want: "homeconfig"},
		{name: "DOCKER_CONFIG next", places: []place{dockerConfigEnv, homeDocker, homeDockercfg}, want: "dockerconfig"},
		{name: "HOME/.docker without DOCKER_CONFIG", places: []place{homeDocker, homeDockercfg}, unset: []string{"DOCKER_CONFIG"}, want: "homedocker"},
		{name: "legacy .dockercfg last", places: []place{homeDockercfg}, want: "dockercfg"},
		{name: "/run/containers/UID without XDG_RUNTIME_DIR", places: []place{runContainers, configHome}, unset: []string{"XDG_RUNTIME_DIR"}, want: "runcontainers"},
		{name: "nothing", want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newUserEnv(t)
			o := e.options()
			root := filepath.Join(e.dir, "root")
			o.AuthFile = filepath.Join(e.dir, "explicit.json")
			for _, v := range tc.unset {
				t.Setenv(v, "") // registers restoration
				os.Unsetenv(v)
			}
			if tc.unset != nil && tc.unset[0] == "XDG_RUNTIME_DIR" {
				o.RootForImplicitAbsolutePaths = root
			}
			paths := map[place]string{
				explicit:        o.AuthFile,
				runtimeDir:      filepath.Join(e.runtimeDir, "containers", "auth.json"),
				configHome:      filepath.Join(e.configHome, "containers", "auth.json"),
				homeConfig:      filepath.Join(testHome, ".config", "containers", "auth.json"),
				dockerConfigEnv: filepath.Join(e.dockerCfg, "config.json"),
				homeDocker:      filepath.Join(testHome, ".docker", "config.json"),
				runContainers:   filepath.Join(root, fmt.Sprintf("run/containers/%d/auth.json", os.Getuid())),
			}
			hasExplicit := tc.otherAuthFile
			for _, p := range tc.places {
				user := names[p]
				pw := secret(user, "s3cr3t-"+user)
				if p == homeDockercfg {
					writeFile(t, filepath.Join(testHome, ".dockercfg"),
						strings.TrimSuffix(strings.TrimPrefix(authJSON(map[string]authEntry{reg: {user, pw, ""}}, nil), `{"auths":`), "}"))
					continue
				}
				writeFile(t, paths[p], authJSON(map[string]authEntry{reg: {user, pw, ""}}, nil))
				hasExplicit = hasExplicit || p == explicit
			}
			if tc.otherAuthFile {
				writeFile(t, o.AuthFile, authJSON(map[string]authEntry{"other.example": {"x", secret("x", "s3cr3t-x"), ""}}, nil))
			}
			if !hasExplicit {
				o.AuthFile = ""
			}
			m := newManager(t, o)
			c, err := m.credential(mustRef(t, reg+"/ns/img:1"), filesSource)
			if err != nil {
				t.Fatalf("credential: %v", noteErr(err))
			}
			if c.Username != tc.want {
				t.Errorf("credential user = %q, want %q", c.Username, tc.want)
			}
			if tc.want != "" && c.Password != "s3cr3t-"+tc.want {
				t.Errorf("credential password of %q does not match", c.Username)
			}
		})
	}
}

// TestCredentialKeys checks repository-scoped keys (most specific wins),
// URL-style keys, docker.io normalization and identity tokens.
func TestCredentialKeys(t *testing.T) {
	auths := map[string]authEntry{
		"reg.example":                 {"registry", secret("registry", "s3cr3t-reg"), ""},
		"reg.example/ns":              {"namespace", secret("namespace", "s3cr3t-ns"), ""},
		"reg.example/ns/sub":          {"sub", secret("sub", "s3cr3t-sub"), ""},
		"reg.example/ns/sub/image":    {"image", secret("image", "s3cr3t-image"), ""},
		"https://url.example/v1/":     {"url", secret("url", "s3cr3t-url"), ""},
		"https://index.docker.io/v1/": {"hub", secret("hub", "s3cr3t-hub"), ""},
		"oauth.example":               {"oauthuser", "", secret("oauthuser", "s3cr3t-identity")},
	}
	tests := []struct {
		ref      string
		wantUser string
		wantID   bool
	}{
		{"reg.example/ns/sub/image:tag", "image", false},
		{"reg.example/ns/sub/other@sha256:" + strings.Repeat("a", 64), "sub", false},
		{"reg.example/ns/x/y", "namespace", false},
		{"reg.example/elsewhere", "registry", false},
		{"url.example/a/b", "url", false},
		{"alpine", "hub", false},
		{"oauth.example/a", "oauthuser", true},
		{"unknown.example/a", "", false},
	}
	e := newUserEnv(t)
	writeFile(t, filepath.Join(e.configHome, "containers", "auth.json"), authJSON(auths, nil))
	m := newManager(t, e.options())
	for _, tc := range tests {
		c, err := m.credential(mustRef(t, tc.ref), filesSource)
		if err != nil {
			t.Fatalf("credential(%s): %v", tc.ref, noteErr(err))
		}
		if c.Username != tc.wantUser || (c.IdentityToken != "") != tc.wantID {
			t.Errorf("credential(%s) = %v, want user %q, identity token %v", tc.ref, c, tc.wantUser, tc.wantID)
		}
	}
}

// TestCredentialReRead checks that a changed auth file (podman login) is
// used at the next lookup, without a new Manager.
func TestCredentialReRead(t *testing.T) {
	e := newUserEnv(t)
	path := filepath.Join(e.runtimeDir, "containers", "auth.json")
	m := newManager(t, e.options())
	ref := mustRef(t, "reg.example/a")
	for i, user := range []string{"first", "second", ""} {
		if user == "" {
			writeFile(t, path, `{"auths":{}}`)
		} else {
			writeFile(t, path, authJSON(map[string]authEntry{"reg.example": {user, secret(user, "s3cr3t-"+user), ""}}, nil))
		}
		c, err := m.credential(ref, filesSource)
		if err != nil || c.Username != user {
			t.Errorf("lookup %d: credential = %v, %v; want user %q", i, c, noteErr(err), user)
		}
	}
	writeFile(t, path, `{"auths": `)
	if _, err := m.credential(ref, filesSource); !errors.Is(err, ErrCredentials) {
		t.Errorf("corrupt auth file: err = %v, want ErrCredentials", noteErr(err))
	}
}

// TestCredentialHelpers checks credHelpers in an auth file and the
// credential-helpers list of registries.conf, with a real helper program.
func TestCredentialHelpers(t *testing.T) {
	helperLog := buildCredHelper(t, "lazytest", map[string][2]string{
		"helper.example":    {"helperuser", secret("helperuser", "s3cr3t-helper")},
		"conf.example:5000": {"confuser", secret("confuser", "s3cr3t-conf")},
		"identity.example":  {"<token>", secret("<token>", "s3cr3t-helper-identity")},
		"shadowed.example":  {"fromhelper", secret("fromhelper", "s3cr3t-fromhelper")},
	})
	tests := []struct {
		name     string
		conf     string // registries.conf content
		ref      string
		wantUser string
		wantID   bool
	}{
		{"credHelpers entry in auth file", "", "helper.example/ns/img", "helperuser", false},
		{"identity token from helper", "", "identity.example/img", "", true},
		{"registries.conf helper", `credential-helpers = ["lazytest"]`, "conf.example:5000/img", "confuser", false},
		{"registries.conf helper before files", `credential-helpers = ["lazytest", "containers-auth.json"]`, "shadowed.example/img", "fromhelper", false},
		{"files when helper has nothing", `credential-helpers = ["lazytest", "containers-auth.json"]`, "files.example/img", "fileuser", false},
		{"files are not read without containers-auth.json", `credential-helpers = ["lazytest"]`, "files.example/img", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newUserEnv(t)
			writeFile(t, e.regConf, tc.conf)
			writeFile(t, filepath.Join(e.configHome, "containers", "auth.json"), authJSON(
				map[string]authEntry{
					"files.example":    {"fileuser", secret("fileuser", "s3cr3t-file"), ""},
					"shadowed.example": {"fromfile", secret("fromfile", "s3cr3t-fromfile"), ""},
				},
				map[string]string{"helper.example": "lazytest", "identity.example": "lazytest"}))
			m := newManager(t, e.options())
			c, err := m.credential(mustRef(t, tc.ref), filesSource)
			if err != nil {
				t.Fatalf("credential: %v", noteErr(err))
			}
			if c.Username != tc.wantUser || (c.IdentityToken != "") != tc.wantID {
				t.Errorf("credential(%s) = %v, want user %q, identity token %v", tc.ref, c, tc.wantUser, tc.wantID)
			}
		})
	}
	asked, err := os.ReadFile(helperLog)
	if err != nil {
		t.Fatal(err)
	}
	// The helper is asked for the registry host, never a repository path.
	for _, line := range strings.Fields(string(asked)) {
		if strings.Contains(line, "/") {
			t.Errorf("helper asked for %q, want a registry host", line)
		}
	}
	if !strings.Contains(string(asked), "conf.example:5000") {
		t.Errorf("helper log %q lacks conf.example:5000", asked)
	}
}
