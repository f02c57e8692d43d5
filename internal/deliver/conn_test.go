package deliver

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// readErr reads from c in the background and returns the error, or fails the test when the
// read is still blocked after a generous while.
func readErr(t *testing.T, c net.Conn) error {
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second): // a safety net, not a measure
		t.Fatal("read still blocked")
		return nil
	}
}

func TestDeadlineConnCancelHolds(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := &deadlineConn{Conn: a}
	ctx, cancel := context.WithCancel(t.Context())
	disarm := c.arm(ctx, time.Hour)

	cancel()
	require.ErrorIs(t, readErr(t, c), os.ErrDeadlineExceeded, "cancel interrupts a pending read")
	// go-smtp sets a fresh deadline before each command: the cancellation must outlive it.
	require.NoError(t, c.SetDeadline(time.Now().Add(time.Hour)))
	require.ErrorIs(t, readErr(t, c), os.ErrDeadlineExceeded)
	require.False(t, disarm(), "an interrupted connection is not reusable")
}

func TestDeadlineConnBound(t *testing.T) {
	now := time.Now()
	limit := now.Add(time.Minute)
	c := &deadlineConn{armed: true, timeout: time.Second, limit: limit}
	require.Equal(t, limit, c.bound(now.Add(time.Hour)), "never past the context's deadline")
	in := now.Add(time.Second)
	require.Equal(t, in, c.bound(in), "an earlier deadline stands")
	got := c.bound(time.Time{})
	require.False(t, got.IsZero(), "no deadline becomes now+timeout")
	require.True(t, got.Before(limit))

	c.limit = time.Time{}
	require.Equal(t, now.Add(time.Hour), c.bound(now.Add(time.Hour)), "no context deadline: the client's stands")

	c.armed = false
	require.True(t, c.bound(time.Time{}).IsZero(), "idle in the pool: no deadline")
}
