package spans

import (
	"context"
	"errors"
	"testing"
	"time"
)

// granted reports whether t was granted within d.
func granted(t *Ticket, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return t.Wait(ctx) == nil
}

func TestForegroundUpToMaxActive(t *testing.T) {
	s := NewScheduler(SchedulerOptions{MaxActive: 2, MaxBackground: 1})
	defer s.Close()
	ctx := context.Background()
	a, b, c := s.Ticket(ctx, Demand, 1), s.Ticket(ctx, ReadAhead, 1), s.Ticket(ctx, Demand, 1)
	if !granted(a, time.Second) || !granted(b, time.Second) {
		t.Fatal("foreground tickets within MaxActive not granted")
	}
	if granted(c, 50*time.Millisecond) {
		t.Fatal("third foreground ticket granted beyond MaxActive")
	}
	a.Done()
	if !granted(c, time.Second) {
		t.Fatal("waiting ticket not granted when a slot freed")
	}
	b.Done()
	c.Done()
	if st := s.Stats(); st.Running != 0 || st.Waiting != 0 || st.Granted[Demand] != 2 || st.Granted[ReadAhead] != 1 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestBackgroundWaitsForIdleLink(t *testing.T) {
	s := NewScheduler(SchedulerOptions{MaxActive: 4, MaxBackground: 2, Quiet: 100 * time.Millisecond})
	defer s.Close()
	ctx := context.Background()
	fg := s.Ticket(ctx, Demand, 1)
	if !granted(fg, time.Second) {
		t.Fatal("demand not granted")
	}
	bg := s.Ticket(ctx, Prefetch, 1)
	if granted(bg, 50*time.Millisecond) {
		t.Fatal("background granted while a demand fetch runs")
	}
	start := time.Now()
	fg.Done()
	if !granted(bg, 2*time.Second) {
		t.Fatal("background never granted after the demand fetch ended")
	}
	if waited := time.Since(start); waited < 90*time.Millisecond {
		t.Errorf("background granted %v after the demand fetch, want the quiet time (100ms) first", waited)
	}
	bg.Done()
}

func TestMaxBackground(t *testing.T) {
	s := NewScheduler(SchedulerOptions{MaxActive: 8, MaxBackground: 2, Quiet: time.Millisecond})
	defer s.Close()
	ctx := context.Background()
	var ts []*Ticket
	for i := 0; i < 3; i++ {
		ts = append(ts, s.Ticket(ctx, Verify, 1))
	}
	if !granted(ts[0], time.Second) || !granted(ts[1], time.Second) {
		t.Fatal("background tickets within MaxBackground not granted")
	}
	if granted(ts[2], 50*time.Millisecond) {
		t.Fatal("background ticket granted beyond MaxBackground")
	}
	ts[0].Done()
	if !granted(ts[2], time.Second) {
		t.Fatal("background ticket not granted when a background slot freed")
	}
}

func TestDemandPreemptsBackground(t *testing.T) {
	s := NewScheduler(SchedulerOptions{MaxActive: 1, MaxBackground: 1, Quiet: time.Millisecond})
	defer s.Close()
	ctx := context.Background()
	bg := s.Ticket(ctx, Prefetch, 1)
	if !granted(bg, time.Second) {
		t.Fatal("background not granted on an idle link")
	}
	fg := s.Ticket(ctx, Demand, 1)
	if !granted(fg, time.Second) {
		t.Fatal("demand not granted while only a background fetch runs")
	}
	select {
	case <-bg.Context().Done():
		if !errors.Is(context.Cause(bg.Context()), ErrPreempted) {
			t.Errorf("preempted ticket's cause = %v, want ErrPreempted", context.Cause(bg.Context()))
		}
	case <-time.After(time.Second):
		t.Fatal("background fetch not preempted")
	}
	bg.Done()
	fg.Done()
	if s.Stats().Preempted != 1 {
		t.Errorf("Preempted = %d, want 1", s.Stats().Preempted)
	}
}

func TestRaiseQueuedBackground(t *testing.T) {
	s := NewScheduler(SchedulerOptions{MaxActive: 2, Quiet: time.Hour})
	defer s.Close()
	ctx := context.Background()
	fg := s.Ticket(ctx, Demand, 1)
	granted(fg, time.Second)
	fg.Done() // the quiet hour starts
	bg := s.Ticket(ctx, Prefetch, 1)
	if granted(bg, 30*time.Millisecond) {
		t.Fatal("background granted in the quiet time")
	}
	bg.Raise(Demand) // a reader waits for these spans now
	if !granted(bg, time.Second) {
		t.Fatal("raised ticket not granted")
	}
	// A raised running ticket is not preempted.
	s2 := NewScheduler(SchedulerOptions{MaxActive: 1, Quiet: time.Millisecond})
	defer s2.Close()
	b2 := s2.Ticket(ctx, Prefetch, 1)
	granted(b2, time.Second)
	b2.Raise(Demand)
	f2 := s2.Ticket(ctx, Demand, 1)
	if granted(f2, 50*time.Millisecond) || b2.Context().Err() != nil {
		t.Error("a fetch raised to demand was preempted")
	}
}

func TestBandwidthCap(t *testing.T) {
	s := NewScheduler(SchedulerOptions{Bandwidth: 1 << 20, Burst: 1 << 20, Quiet: time.Millisecond})
	defer s.Close()
	ctx := context.Background()
	start := time.Now()
	for i := 0; i < 3; i++ {
		tk := s.Ticket(ctx, Prefetch, 512<<10)
		if err := tk.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		tk.Done()
	}
	// 1.5 MiB at 1 MiB/s with a 1 MiB burst: at least ~0.5 s.
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Errorf("1.5 MiB of background fetches took %v under a 1 MiB/s cap", took)
	}
	// Demand is never throttled.
	start = time.Now()
	tk := s.Ticket(ctx, Demand, 64<<20)
	if err := tk.Wait(ctx); err != nil || time.Since(start) > 300*time.Millisecond {
		t.Errorf("demand ticket waited %v (%v) for the bandwidth cap", time.Since(start), err)
	}
	tk.Done()
}

func TestCloseFailsWaiting(t *testing.T) {
	s := NewScheduler(SchedulerOptions{MaxActive: 1})
	ctx := context.Background()
	a := s.Ticket(ctx, Demand, 1)
	granted(a, time.Second)
	b := s.Ticket(ctx, Demand, 1)
	s.Close()
	if err := b.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("waiting ticket after Close: %v, want context.Canceled", err)
	}
	if err := s.Ticket(ctx, Demand, 1).Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("new ticket after Close: %v, want context.Canceled", err)
	}
}

// TestBackgroundBudgetFollowsTheLink: before the link rate is known, one
// MiB of background data may be in flight; once fetches delivered bytes
// over busy time, the budget is what the link carries in BackgroundDelay.
func TestBackgroundBudgetFollowsTheLink(t *testing.T) {
	s := NewScheduler(SchedulerOptions{MaxBackground: 8, Quiet: time.Millisecond, BackgroundDelay: 100 * time.Millisecond})
	defer s.Close()
	if got := s.BackgroundBudget(64 << 20); got != minBackgroundBudget {
		t.Fatalf("budget before any fetch = %d, want %d", got, minBackgroundBudget)
	}
	ctx := context.Background()
	// Two background fetches of 1 MiB each: the second waits for the first
	// (budget 1 MiB).
	a, b := s.Ticket(ctx, Prefetch, 1<<20), s.Ticket(ctx, Prefetch, 1<<20)
	if !granted(a, time.Second) || granted(b, 50*time.Millisecond) {
		t.Fatal("two background fetches in flight within a 1 MiB budget")
	}
	// 1 MiB delivered in ~250 ms of busy time: about 4 MiB/s.
	time.Sleep(250 * time.Millisecond)
	a.Delivered()
	a.Done()
	if !granted(b, time.Second) {
		t.Fatal("the second fetch not granted after the first")
	}
	b.Done()
	rate := s.Stats().LinkRate
	if rate < 2<<20 || rate > 8<<20 {
		t.Fatalf("link rate %.0f B/s, want about 4 MiB/s", rate)
	}
	if got := s.BackgroundBudget(64 << 20); got != minBackgroundBudget {
		t.Errorf("budget at %.0f B/s and 100 ms = %d, want the 1 MiB floor", rate, got)
	}
}
