package spool

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestGroupSync checks the promise of a group commit: Sync returns only after an fsync
// that started after Sync was called, and concurrent callers share fsyncs.
func TestGroupSync(t *testing.T) {
	var started, finishedStart atomic.Int64 // finishedStart: start number of the last finished fsync
	var running atomic.Int32
	g := newGroupSync(func() error {
		require.Equal(t, int32(1), running.Add(1), "one fsync at a time")
		n := started.Add(1)
		time.Sleep(100 * time.Microsecond) // a real fsync takes time; callers pile up
		finishedStart.Store(n)
		running.Add(-1)
		return nil
	})
	const callers, each = 20, 50
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range each {
				entry := started.Load()
				require.NoError(t, g.Sync())
				require.Greater(t, finishedStart.Load(), entry, "returned before an fsync that began after the call")
			}
		})
	}
	wg.Wait()
	t.Logf("%d calls, %d fsyncs", callers*each, started.Load())
	require.Less(t, started.Load(), int64(callers*each), "no batching")
}

func TestGroupSyncErrorIsSticky(t *testing.T) {
	fail := true
	g := newGroupSync(func() error {
		if fail {
			return errTest
		}
		return nil
	})
	require.ErrorIs(t, g.Sync(), errTest)
	fail = false
	require.ErrorIs(t, g.Sync(), errTest)
	require.True(t, errors.Is(g.Err(), errTest))
}
