package storagedriver

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// OptionPrefix starts the storage options (`--storage-opt lazypull.KEY=VALUE`,
// or storage.conf) that the lazypull graph driver reads itself.
const OptionPrefix = DriverName + "."

// StartMode says how the graph driver starts the layer store daemon when it
// is not running.
type StartMode string

// The start modes.
const (
	// StartAuto runs an installed `lazypull serve` (lazypull.binary, or
	// "lazypull" on PATH) when there is one, else re-executes the current
	// binary as the daemon.
	StartAuto StartMode = "auto"
	// StartBinary runs `lazypull serve` of lazypull.binary.
	StartBinary StartMode = "binary"
	// StartReexec re-executes the current binary (podman, buildah: whatever
	// imported this package) as the daemon, through containers/storage's
	// reexec.
	StartReexec StartMode = "reexec"
	// StartNever never starts the daemon; without one, images are pulled
	// the ordinary way.
	StartNever StartMode = "never"
)

// DriverOptions are the graph driver's options.
type DriverOptions struct {
	// ConfigPath is the layer store configuration (lazypull.config); default
	// "": see LoadConfig.
	ConfigPath string
	// MountPoint overrides the configuration's mount_point
	// (lazypull.mount_point); default "".
	MountPoint string
	// Start is how a missing daemon is started (lazypull.start); default
	// StartAuto.
	Start StartMode
	// Binary is the lazypull executable for StartBinary and StartAuto
	// (lazypull.binary); default "": "lazypull" on PATH.
	Binary string
	// StartTimeout bounds the wait for a started daemon's mount
	// (lazypull.start_timeout, e.g. "30s"); default 30 s.
	StartTimeout time.Duration
	// Overlay are the options handed to the overlay driver: every option
	// without the lazypull. prefix as it is, and the overlay options that
	// containers/storage derives from storage.conf for this driver
	// (lazypull.mountopt, lazypull.additionallayerstore, ...) renamed to
	// overlay.KEY.
	Overlay []string
}

// overlayKeys are the overlay options containers/storage writes with the
// driver's name as prefix when storage.conf selects driver = "lazypull".
var overlayKeys = map[string]bool{
	"additionallayerstore": true, "imagestore": true, "additionalimagestore": true,
	"size": true, "inodes": true, "mount_program": true, "mountopt": true,
	"skip_mount_home": true, "ignore_chown_errors": true, "force_mask": true,
	"use_composefs": true,
}

// ParseDriverOptions parses the graph driver's options strictly: an unknown
// lazypull.* key, a repeated one, a malformed value or an option without
// "=" is an error (every problem is reported).
func ParseDriverOptions(opts []string) (DriverOptions, error) {
	o := DriverOptions{Start: StartAuto, StartTimeout: 30 * time.Second}
	seen := map[string]bool{}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrBadOption}, args...)...))
	}
	for _, opt := range opts {
		key, val, ok := strings.Cut(opt, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			bad("%q is not KEY=VALUE", opt)
			continue
		}
		name, ours := strings.CutPrefix(strings.ToLower(key), OptionPrefix)
		if !ours {
			o.Overlay = append(o.Overlay, opt)
			continue
		}
		if overlayKeys[name] {
			o.Overlay = append(o.Overlay, "overlay."+name+"="+val)
			continue
		}
		if seen[name] {
			bad("%s given twice", key)
			continue
		}
		seen[name] = true
		switch name {
		case "config":
			if !filepath.IsAbs(val) {
				bad("%s must be an absolute path, got %q", key, val)
			}
			o.ConfigPath = val
		case "mount_point":
			if !filepath.IsAbs(val) {
				bad("%s must be an absolute path, got %q", key, val)
			}
			o.MountPoint = filepath.Clean(val)
		case "start":
			switch m := StartMode(val); m {
			case StartAuto, StartBinary, StartReexec, StartNever:
				o.Start = m
			default:
				bad("%s must be auto, binary, reexec or never, got %q", key, val)
			}
		case "binary":
			if val == "" {
				bad("%s must not be empty", key)
			}
			o.Binary = val
		case "start_timeout":
			d, err := time.ParseDuration(val)
			if err != nil || d <= 0 {
				bad("%s must be a positive duration such as \"30s\", got %q", key, val)
			}
			o.StartTimeout = d
		default:
			bad("unknown option %s (known: %s.config, mount_point, start, binary, start_timeout, and the overlay options of storage.conf)", key, DriverName)
		}
	}
	return o, errors.Join(errs...)
}
