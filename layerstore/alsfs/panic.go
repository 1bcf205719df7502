package alsfs

import (
	"runtime"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

// panics counts FUSE requests whose handler panicked, over all mounts of
// the process (Panics).
var panics atomic.Int64

// Panics returns how many FUSE requests panicked in this process.
func Panics() int64 { return panics.Load() }

// panicHandler is go-fuse's PanicHandler: go-fuse recovers a panicking
// request handler and answers EIO, but logs it only to its own logger
// (silent here). A panic is a bug, or input no check stopped: it is logged
// at Error level with its stack, counted, and the request fails with EIO;
// the daemon goes on serving. (The span manager completes every fetch and
// inflation it starts, panic or not: no reader waits for a span forever.)
func panicHandler(log *logrus.Entry) func(any) fuse.Status {
	return func(r any) fuse.Status {
		panics.Add(1)
		if log != nil {
			buf := make([]byte, 64<<10)
			buf = buf[:runtime.Stack(buf, false)]
			log.WithField("panic", r).WithField("stack", string(buf)).Error("Panic in a FUSE request handler: the request fails with EIO (a bug: please report it)")
		}
		return fuse.EIO
	}
}
