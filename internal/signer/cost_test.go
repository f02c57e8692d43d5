package signer

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Signing costs the same per octet however the header is split: the work signing counts,
// and the memory it allocates, stay within a fixed multiple of the message size from 1,000
// to 30,000 header lines. Neither is a clock, so the test cannot flake on a busy machine,
// and both would fail on the quadratic steps mended before: appending each continuation
// line to the field read so far allocated the field again per line (about 1.8 GB for
// 30,000 lines), and picking each signed field by a scan from the end visited the fields
// once per h= entry.
func TestSignWorkLinear(t *testing.T) {
	s := newSigner(t, dkimConfig(writeKey(t, t.TempDir(), "default.pem", genKeys(t).ed1, false)))
	for _, sh := range headerShapes {
		for _, n := range []int{1_000, 30_000} {
			msg := manyLines(sh.first, sh.line, n)
			m := newMeter(t.Context())
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := s.sign(m, "example.com", msg)
			runtime.ReadMemStats(&after)
			require.NoError(t, err)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%s/%d: %d octets, work %d (%.2f/octet), allocated %d (%.2f/octet)", sh.name, n,
				len(msg), m.work, float64(m.work)/float64(len(msg)), alloc, float64(alloc)/float64(len(msg)))
			// Read once, visited once to match names, picked at most once.
			require.LessOrEqual(t, m.work, 3*len(msg), "%s/%d", sh.name, n)
			require.LessOrEqual(t, alloc, uint64(20*len(msg)+256<<10), "%s/%d", sh.name, n)
		}
	}
}

// looks is a context that ends after its Err has been asked n times: where signing stops
// shows how often it looks.
type looks struct {
	context.Context
	n int
}

func (c *looks) Err() error {
	if c.n--; c.n < 0 {
		return context.Canceled
	}
	return nil
}

// A context that ends stops signing a large message within one interval of ctxEvery,
// whether it ends in the header, in the body, or before signing started, and the error
// says why.
func TestSignCancelled(t *testing.T) {
	s := newSigner(t, dkimConfig(writeKey(t, t.TempDir(), "default.pem", genKeys(t).ed1, false)))
	header := manyLines("Subject: x\r\n", " y\r\n", 1<<20) // 4 MiB of header
	body := message(4 << 20)                               // 4 MiB of body
	expired, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		msg  []byte
		want error
		max  int // work done at most
	}{
		{"before", expired, body, context.DeadlineExceeded, 0},
		{"header", &looks{t.Context(), 10}, header, context.Canceled, 11 * ctxEvery},
		{"body", &looks{t.Context(), 20}, body, context.Canceled, 21 * ctxEvery},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMeter(tc.ctx)
			sig, err := s.sign(m, "example.com", tc.msg)
			require.ErrorIs(t, err, tc.want)
			require.Nil(t, sig)
			require.True(t, strings.HasPrefix(err.Error(), "dkim sign d=example.com: "), err.Error())
			require.LessOrEqual(t, m.work, tc.max+len(tc.msg)/1000) // one line or run past the last look
			require.Less(t, m.work, len(tc.msg)/2)
		})
	}

	// The exported entry point takes the caller's context.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Sign(ctx, "example.com", body)
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
}
