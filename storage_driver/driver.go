package storagedriver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	graphdriver "github.com/containers/storage/drivers"
	"github.com/containers/storage/drivers/overlay"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/config"
)

// DriverName is the containers/storage graph driver this package registers
// (storage.conf `driver = "lazypull"`, or `--storage-driver lazypull`).
const DriverName = "lazypull"

func init() {
	graphdriver.MustRegister(DriverName, Init)
}

// Driver is the overlay driver with lazypull's layer store configured as its
// Additional Layer Store. Every overlay capability (Additional Layer Store
// lookups, partial pulls, diff getters) is the embedded driver's; only the
// name and the status differ. Layers are kept exactly as overlay keeps
// them, under <graphroot>/lazypull.
type Driver struct {
	*overlay.Driver
	cfg  config.Config
	lazy error // why layers are not served lazily; nil when they are
}

var _ graphdriver.AdditionalLayerStoreDriver = (*Driver)(nil)

// Init is the graph driver's InitFunc: it parses the lazypull.* options
// (strictly), loads the layer store configuration, makes sure the daemon
// runs (starting it when needed) and initializes overlay with the daemon's
// mount as Additional Layer Store. Without a daemon it still works, as plain
// overlay, and says why in Status and in a warning.
func Init(home string, options graphdriver.Options) (graphdriver.Driver, error) {
	o, err := ParseDriverOptions(options.DriverOptions)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", DriverName, err)
	}
	cfg, err := LoadConfig(o.ConfigPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", DriverName, err)
	}
	if o.MountPoint != "" {
		cfg.MountPoint = o.MountPoint
	}
	d := &Driver{cfg: cfg}
	overlayOpts := o.Overlay
	d.lazy = EnsureDaemon(context.Background(), cfg, o)
	switch {
	case d.lazy == nil:
		overlayOpts = append(overlayOpts, "overlay.additionallayerstore="+cfg.MountPoint+":ref")
	case errors.Is(d.lazy, ErrBadOption):
		return nil, fmt.Errorf("%s: %w", DriverName, d.lazy)
	default:
		logrus.WithError(d.lazy).Warnf("%s: layers are pulled the ordinary way (no lazy pulling)", DriverName)
	}
	options.DriverOptions = overlayOpts
	od, err := overlay.Init(home, options)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", DriverName, err)
	}
	ov, ok := od.(*overlay.Driver)
	if !ok {
		return nil, fmt.Errorf("%s: overlay.Init returned %T", DriverName, od)
	}
	d.Driver = ov
	return d, nil
}

// String implements graphdriver.Driver: the name must map back to this
// driver, because containers/storage re-creates the driver by this name.
func (d *Driver) String() string { return DriverName }

// Status implements graphdriver.Driver: overlay's status and the layer
// store's.
func (d *Driver) Status() [][2]string {
	st := d.Driver.Status()
	state := "serving " + d.cfg.MountPoint
	if d.lazy != nil {
		state = "off: " + d.lazy.Error()
	}
	return append(st, [2]string{"Lazy pulling", state})
}

// Config returns the layer store configuration the driver uses.
func (d *Driver) Config() config.Config { return d.cfg }

// Lazy reports nil when the layer store is configured as the driver's
// Additional Layer Store, or why not.
func (d *Driver) Lazy() error { return d.lazy }

// signalContext is canceled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
