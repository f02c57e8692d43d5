package deliver

import (
	"bytes"
	"context"
	"io"
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

// countConn counts the writes that reach the socket.
type countConn struct {
	net.Conn
	writes int
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes++
	return c.Conn.Write(p)
}

// Between hold and release writes are held back: a body written in pieces leaves in one
// write at release, a large one in maxPending pieces; outside a hold every write goes at once.
func TestDeadlineConnHold(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	got := make(chan []byte, 1)
	go func() {
		s, err := l.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		var all []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := s.Read(buf)
			all = append(all, buf[:n]...)
			if bytes.HasSuffix(all, []byte(".\r\n")) {
				s.Write([]byte("250 ok\r\n"))
				got <- all
				all = nil
			}
			if err != nil {
				return
			}
		}
	}()
	tc, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	cc := &countConn{Conn: tc}
	c := &deadlineConn{Conn: cc}
	defer c.Close()

	_, err = c.Write([]byte("DATA\r\n"))
	require.NoError(t, err)
	require.Equal(t, 1, cc.writes, "a command goes at once")
	c.hold()
	for _, p := range []string{"Subject: x\r\n", "\r\n", "body\r\n"} {
		_, err := c.Write([]byte(p))
		require.NoError(t, err)
	}
	require.Equal(t, 1, cc.writes, "the body waits for release")
	require.NoError(t, c.release())
	require.Equal(t, 2, cc.writes)
	_, err = c.Write([]byte(".\r\n"))
	require.NoError(t, err)
	require.Equal(t, 3, cc.writes)
	reply := make([]byte, 8)
	_, err = io.ReadFull(c, reply)
	require.NoError(t, err)
	require.Equal(t, "250 ok\r\n", string(reply))
	require.Equal(t, "DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n", string(<-got))

	big := bytes.Repeat([]byte("x"), 4096)
	c.hold()
	for range 40 { // 160 KiB in 4 KiB pieces, as go-smtp's bufio.Writer sends a body
		_, err := c.Write(big)
		require.NoError(t, err)
	}
	require.Equal(t, 3+2, cc.writes, "two full 64 KiB buffers went during the hold")
	require.NoError(t, c.release())
	_, err = c.Write([]byte("\r\n.\r\n"))
	require.NoError(t, err)
	_, err = io.ReadFull(c, reply)
	require.NoError(t, err)
	require.Equal(t, 3+2+2, cc.writes)
	require.Len(t, <-got, 40*4096+5)
}

// A failed send of held bytes is reported by release.
func TestDeadlineConnReleaseError(t *testing.T) {
	a, b := net.Pipe()
	b.Close()
	c := &deadlineConn{Conn: a}
	c.hold()
	_, err := c.Write([]byte("body\r\n"))
	require.NoError(t, err)
	require.ErrorIs(t, c.release(), io.ErrClosedPipe)
}
