package storagedrivertest

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/containers/image/v5/pkg/sysregistriesv2"
	"github.com/containers/image/v5/types"
	storagetypes "github.com/containers/storage/types"

	"github.com/lazypull/lazypull/layerstore/config"
)

// repoFile returns the path of a file of the repository.
func repoFile(t *testing.T, rel string) string {
	t.Helper()
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(self), "..", "..", rel)
}

// TestContribFilesAreTrue keeps what contrib/ and storage.conf.example say
// true: containers/storage reads the example as overlay with the daemon's
// default mount point as Additional Layer Store; containers/image reads the
// registries.conf drop-in's auth helper, named like the binary's symlink;
// the systemd units start the daemon on the default mount point.
func TestContribFilesAreTrue(t *testing.T) {
	var opts storagetypes.StoreOptions
	if err := storagetypes.ReloadConfigurationFile(repoFile(t, "storage.conf.example"), &opts); err != nil {
		t.Fatalf("storage.conf.example: %v", err)
	}
	rootDefaults := config.DefaultFor(true)
	wantOpt := "overlay.additionallayerstore=" + rootDefaults.MountPoint + ":ref"
	if opts.GraphDriverName != "overlay" || !slices.Contains(opts.GraphDriverOptions, wantOpt) {
		t.Errorf("storage.conf.example: driver %q, options %q; want overlay with %q", opts.GraphDriverName, opts.GraphDriverOptions, wantOpt)
	}

	dir := t.TempDir()
	empty := filepath.Join(dir, "registries.conf")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	helper, err := sysregistriesv2.AdditionalLayerStoreAuthHelper(&types.SystemContext{
		SystemRegistriesConfPath:    empty,
		SystemRegistriesConfDirPath: repoFile(t, "contrib/registries.conf.d"),
	})
	if err != nil || helper != "lazypull-auth-helper" {
		t.Errorf("registries.conf.d/lazypull.conf: auth helper %q (%v), want lazypull-auth-helper", helper, err)
	}

	units := map[string][]string{
		"contrib/systemd/lazypull.service": {"ExecStart=/usr/local/bin/lazypull serve", "UMask=0077",
			"install -d -m 0700 " + rootDefaults.RootDir + " " + rootDefaults.MountPoint},
		"contrib/systemd/user/lazypull.service": {"podman unshare /usr/local/bin/lazypull --config %h/.config/lazypull/config.toml serve",
			"UMask=0077", "install -d -m 0700 %t/lazypull %t/lazypull/store"},
	}
	for file, wants := range units {
		b, err := os.ReadFile(repoFile(t, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range wants {
			if !strings.Contains(string(b), w) {
				t.Errorf("%s does not contain %q", file, w)
			}
		}
	}
}
