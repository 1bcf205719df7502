package layerstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/layerstore/config"
)

func TestFuseConfAllowsOther(t *testing.T) {
	tests := []struct {
		name, content string
		want          bool
	}{
		{"Debian's default", "# user_allow_other - Using ...\n\n#user_allow_other\n\n#mount_max = 1000\n", false},
		{"enabled", "#mount_max = 1000\nuser_allow_other\n", true},
		{"enabled with spaces", "  user_allow_other  \n", true},
		{"only mentioned", "# set user_allow_other to allow\n", false},
		{"empty", "", false},
	}
	for _, tc := range tests {
		path := filepath.Join(t.TempDir(), "fuse.conf")
		if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := fuseConfAllowsOther(path)
		if err != nil || got != tc.want {
			t.Errorf("%s: fuseConfAllowsOther = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
	if _, err := fuseConfAllowsOther(filepath.Join(t.TempDir(), "missing")); !os.IsNotExist(err) {
		t.Errorf("missing file: error %v, want not-exist", err)
	}
}

func TestPreflight(t *testing.T) {
	cfg := config.DefaultFor(true)
	dir := t.TempDir()
	cfg.RootDir, cfg.MountPoint = filepath.Join(dir, "root"), filepath.Join(dir, "mnt", "store")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	}
	if os.Geteuid() == 0 {
		if err := Preflight(cfg); err != nil {
			t.Errorf("Preflight as root with usable paths: %v", err)
		}
	}
	// A root_dir that cannot be created is named in the error.
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.RootDir = filepath.Join(blocker, "root")
	if err := Preflight(cfg); !errors.Is(err, ErrSetup) || !strings.Contains(err.Error(), cfg.RootDir) {
		t.Errorf("Preflight with root_dir below a file: %v, want ErrSetup naming %s", err, cfg.RootDir)
	}
}
