package storagedriver

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseDriverOptions(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want DriverOptions
	}{
		{"defaults", nil, DriverOptions{Start: StartAuto, StartTimeout: 30 * time.Second}},
		{"own keys", []string{"lazypull.config=/etc/l.toml", "lazypull.mount_point=/mnt/x/", "lazypull.start=reexec",
			"lazypull.binary=/usr/bin/lazypull", "lazypull.start_timeout=5s"},
			DriverOptions{ConfigPath: "/etc/l.toml", MountPoint: "/mnt/x", Start: StartReexec, Binary: "/usr/bin/lazypull", StartTimeout: 5 * time.Second}},
		{"keys are case-insensitive", []string{"LAZYPULL.Start=never"}, DriverOptions{Start: StartNever, StartTimeout: 30 * time.Second}},
		{"overlay options pass through", []string{"overlay.mountopt=nodev", "mount_program=/usr/bin/fuse-overlayfs"},
			DriverOptions{Start: StartAuto, StartTimeout: 30 * time.Second, Overlay: []string{"overlay.mountopt=nodev", "mount_program=/usr/bin/fuse-overlayfs"}}},
		{"storage.conf's overlay options under our prefix are renamed", []string{"lazypull.mountopt=nodev,metacopy=on",
			"lazypull.additionallayerstore=/a:ref", "lazypull.additionallayerstore=/b"},
			DriverOptions{Start: StartAuto, StartTimeout: 30 * time.Second, Overlay: []string{"overlay.mountopt=nodev,metacopy=on",
				"overlay.additionallayerstore=/a:ref", "overlay.additionallayerstore=/b"}}},
	}
	for _, tc := range tests {
		got, err := ParseDriverOptions(tc.in)
		if err != nil {
			t.Errorf("%s: ParseDriverOptions(%q) error %v", tc.name, tc.in, err)
			continue
		}
		if got.ConfigPath != tc.want.ConfigPath || got.MountPoint != tc.want.MountPoint || got.Start != tc.want.Start ||
			got.Binary != tc.want.Binary || got.StartTimeout != tc.want.StartTimeout || !slices.Equal(got.Overlay, tc.want.Overlay) {
			t.Errorf("%s: ParseDriverOptions(%q) = %+v, want %+v", tc.name, tc.in, got, tc.want)
		}
	}
}

func TestParseDriverOptionsErrors(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		mention []string // every problem is reported
	}{
		{"unknown key", []string{"lazypull.frobnicate=1"}, []string{"lazypull.frobnicate"}},
		{"repeated key", []string{"lazypull.start=never", "lazypull.start=auto"}, []string{"twice"}},
		{"bad start mode", []string{"lazypull.start=sometimes"}, []string{"sometimes"}},
		{"relative config", []string{"lazypull.config=etc/x.toml"}, []string{"absolute"}},
		{"relative mount point", []string{"lazypull.mount_point=store"}, []string{"absolute"}},
		{"bad timeout", []string{"lazypull.start_timeout=soon"}, []string{"soon"}},
		{"negative timeout", []string{"lazypull.start_timeout=-1s"}, []string{"-1s"}},
		{"empty binary", []string{"lazypull.binary="}, []string{"empty"}},
		{"not key=value", []string{"lazypull.start"}, []string{"KEY=VALUE"}},
		{"all problems at once", []string{"lazypull.a=1", "lazypull.b=2"}, []string{"lazypull.a", "lazypull.b"}},
	}
	for _, tc := range tests {
		_, err := ParseDriverOptions(tc.in)
		if !errors.Is(err, ErrBadOption) {
			t.Errorf("%s: ParseDriverOptions(%q) error = %v, want ErrBadOption", tc.name, tc.in, err)
			continue
		}
		for _, m := range tc.mention {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, m)
			}
		}
	}
}
