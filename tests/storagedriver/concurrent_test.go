package storagedrivertest

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/lazypull/lazypull/storage_driver"
)

// concurrentIterations is how often the two pulls race.
const concurrentIterations = 50

// TestConcurrentPulls pulls two images that share their two base layers
// into one store at the same moment (a barrier releases both pulls, which
// start within 1 ms of each other unless the machine deschedules one), 50
// times, removing both images in between so that every round
// creates the shared layers again: both pulls must succeed with the shared
// layers lazily served and identical, under the race detector (make test
// runs it with -race).
func TestConcurrentPulls(t *testing.T) {
	f := newFixture(t, testImage(), otherImage())
	store := newStore(t, "overlay", f.daemon.ALSOption())
	refs := [2]string{f.ref(testImage()), f.ref(otherImage())}
	imgA, imgB := f.images[refs[0]], f.images[refs[1]]
	for i := range 2 {
		if imgA.Layers[i].Digest != imgB.Layers[i].Digest {
			t.Fatalf("the test images should share layer %d: %s vs %s", i, imgA.Layers[i].Digest, imgB.Layers[i].Digest)
		}
	}
	opts := [2]*storagedriver.Options{pullOptions(t), pullOptions(t)} // a PolicyContext is not for concurrent use

	var gaps []time.Duration
	for iter := range concurrentIterations {
		var (
			wg      sync.WaitGroup
			arrived atomic.Int32
			started [2]time.Time
			results [2]*storagedriver.Result
			errs    [2]error
		)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A barrier without a third party: whoever arrives first spins
				// (on its own core) until the other arrives, then both go.
				arrived.Add(1)
				for arrived.Load() < 2 {
				}
				started[i] = time.Now()
				results[i], errs[i] = storagedriver.Pull(context.Background(), store, mustRef(t, refs[i]), opts[i])
			}()
		}
		wg.Wait()
		gaps = append(gaps, started[0].Sub(started[1]).Abs())
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: pull %s: %v", iter, refs[i], err)
			}
		}
		a, b := results[0], results[1]
		for i := range 2 {
			if a.Layers[i].ID != b.Layers[i].ID {
				t.Errorf("round %d: shared layer %d has IDs %s and %s", iter, i, a.Layers[i].ID, b.Layers[i].ID)
			}
			for _, r := range results {
				if r.Layers[i].Source == storagedriver.SourcePulled {
					t.Errorf("round %d: %s layer %d was pulled, want lazy or reused", iter, r.Name, i)
				}
			}
		}
		for _, r := range results {
			if _, err := store.Image(r.ImageID); err != nil {
				t.Fatalf("round %d: image %s: %v", iter, r.ImageID, err)
			}
			if _, err := store.DeleteImage(r.ImageID, true); err != nil {
				t.Fatalf("round %d: delete image %s: %v", iter, r.ImageID, err)
			}
		}
		if layers, err := store.Layers(); err != nil || len(layers) != 0 {
			t.Fatalf("round %d: %d layers left after removing both images (%v)", iter, len(layers), err)
		}
	}
	slices.Sort(gaps)
	within := 0
	for _, g := range gaps {
		if g < time.Millisecond {
			within++
		}
	}
	t.Logf("%d rounds, %d started within 1 ms of each other; start gap median %s, max %s", len(gaps), within, gaps[len(gaps)/2], gaps[len(gaps)-1])
	// The barrier releases both at once; a loaded machine may still
	// deschedule one of them now and then.
	if within < len(gaps)/5 {
		t.Errorf("only %d of %d rounds started within 1 ms, want at least %d", within, len(gaps), len(gaps)/5)
	}
}
