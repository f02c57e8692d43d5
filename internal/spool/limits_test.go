package spool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/deliver"
)

// smtpReply is the reply the SMTP front end gives for err (it finds the same interface
// with errors.As).
func smtpReply(t *testing.T, err error) (int, [3]int) {
	t.Helper()
	var r interface{ SMTPReply() (int, [3]int, string) }
	require.True(t, errors.As(err, &r), "%v has no SMTP reply", err)
	code, enh, _ := r.SMTPReply()
	return code, enh
}

// rcptList returns n distinct addresses of about size octets each.
func rcptList(n, size int) []string {
	to := make([]string, n)
	for i := range to {
		to[i] = fmt.Sprintf("r%04d-%s@example.net", i, strings.Repeat("x", max(0, size-18)))
	}
	return to
}

// escaped returns n distinct addresses with size octets that JSON escapes (6 octets each).
func escaped(n, size int) []string {
	to := make([]string, n)
	for i := range to {
		to[i] = fmt.Sprintf("%d%s@example.net", i, strings.Repeat("&", size))
	}
	return to
}

// An envelope that recovery would not read back is refused by Submit, with the reply the
// client can act on, and nothing of it is written: before, Submit answered nil (250) and
// the next start dropped the message.
func TestSubmitRefusesWhatRecoveryWouldDrop(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		from     string
		to       []string
		code     int
		enh      [3]int
		sentinel error
	}{
		{"too many recipients", "a@example.com", rcptList(MaxRecipients+1, 20), 452, [3]int{4, 5, 3}, ErrTooManyRecipients},
		{"too many after duplicates go", "a@example.com", append(rcptList(MaxRecipients, 20), "extra@example.net", "r0000-xx@example.net"), 452, [3]int{4, 5, 3}, ErrTooManyRecipients},
		{"recipients too long for a header", "a@example.com", rcptList(MaxRecipients, 1100), 552, [3]int{5, 3, 4}, ErrEnvelopeTooLarge},
		{"recipients that JSON escapes", "a@example.com", escaped(MaxRecipients, 200), 552, [3]int{5, 3, 4}, ErrEnvelopeTooLarge},
		{"sender too long for a header", strings.Repeat("s", maxEnvelopeLine) + "@example.com", []string{"b@example.net"}, 552, [3]int{5, 3, 4}, ErrEnvelopeTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Put(ctx, "big", tc.from, tc.to, msg("big"))
			require.ErrorIs(t, err, tc.sentinel)
			var se *Error
			require.ErrorAs(t, err, &se)
			code, enh := smtpReply(t, err)
			require.Equal(t, tc.code, code)
			require.Equal(t, tc.enh, enh)
		})
	}
	require.Zero(t, s.Stats().Depth)
	require.Zero(t, s.Stats().Records, "nothing was written")
	// The id is free: the client sends again to fewer recipients.
	require.NoError(t, put(s, ctx, "big", "a@example.com", rcptList(MaxRecipients, 20), msg("big")))
	s.Close()
	s2 := e.open()
	require.Equal(t, 1, s2.Stats().Depth)
	s2.mu.Lock()
	require.Len(t, s2.msgs["big"].To, MaxRecipients)
	s2.mu.Unlock()
}

// headerLen is the length of env's record header, whether or not Submit takes it.
func headerLen(t *testing.T, env envelope) int {
	env.Seg = noSeg
	b, err := appendEnvelopeJSON(nil, env)
	require.NoError(t, err)
	return len(segMagic) + len(b) + hdrSumLen + 1
}

// randomAddress returns an address of n octets (at least 3) of one of the kinds that cost
// the envelope more than their length: JSON escapes (6 octets for one), invalid UTF-8
// (base64), U+2028 (escaped), or plain.
func randomAddress(r *rand.Rand, i, n int) string {
	var unit string
	switch r.IntN(5) {
	case 0:
		unit = "&"
	case 1:
		unit = "\x01"
	case 2:
		unit = "\xff"
	case 3:
		unit = "\u2028"
	default:
		unit = "p"
	}
	a := fmt.Sprintf("%d@", i) + strings.Repeat(unit, n)
	return a[:max(len(fmt.Sprintf("%d@", i))+1, n)]
}

// Every envelope Submit accepts is read back after a restart, from its segment and from
// the file it moves to when deferred, by recovery and by `relay queue list`; every one it
// refuses is over a limit. Envelope sizes go up to the limit and past it, the boundary
// itself included.
func TestSubmitAcceptedIsRecovered(t *testing.T) {
	e := newEnv(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC) // fixed: header lengths are exact
	e.opts.Now = func() time.Time { return now }
	e.sender = senderFunc(func(context.Context, string, []string, []byte) ([]deliver.RcptResult, error) {
		return nil, &deliver.Error{Code: 451, Enhanced: [3]int{4, 3, 0}, Msg: "later"}
	})
	r := rand.New(rand.NewPCG(1, 2))
	type want struct {
		id, from string
		to       []string
		target   int // the header length it was padded to, when it could be
	}
	var cases []want
	add := func(n, addrLen, target int) {
		id := fmt.Sprintf("p%03d", len(cases))
		to := make([]string, n)
		for i := range to {
			to[i] = randomAddress(r, i, 3+r.IntN(addrLen))
		}
		env := envelope{ID: id, To: to, Received: now, Size: len(msg(id)), CRC: checksum(msg(id))}
		env.From = rawString(strings.Repeat("f", max(0, target-headerLen(t, env))))
		cases = append(cases, want{id, string(env.From), to, target})
	}
	for _, target := range []int{maxEnvelopeLine - 1, maxEnvelopeLine, maxEnvelopeLine + 1} {
		add(1, 300, target)
		add(MaxRecipients, 150, target)
	}
	add(MaxRecipients+1, 10, 0)
	for range 12 {
		add(1+r.IntN(MaxRecipients+50), 1+r.IntN(400), r.IntN(maxEnvelopeLine+maxEnvelopeLine/8))
	}

	s := e.open()
	var accepted []want
	atLimit, overByOne := false, false
	for _, c := range cases {
		env := envelope{ID: c.id, From: rawString(c.from), To: c.to, Received: now, Size: len(msg(c.id)), CRC: checksum(msg(c.id))}
		if c.from != "" {
			require.Equal(t, c.target, headerLen(t, env))
		}
		fits := len(c.to) <= MaxRecipients && headerLen(t, env) <= maxEnvelopeLine
		overByOne = overByOne || (!fits && headerLen(t, env) == maxEnvelopeLine+1)
		err := put(s, context.Background(), c.id, c.from, c.to, msg(c.id))
		if !fits {
			require.Error(t, err, "%s: %d recipients, %d octets of header", c.id, len(c.to), headerLen(t, env))
			code, _ := smtpReply(t, err)
			require.Contains(t, []int{452, 552}, code)
			continue
		}
		require.NoError(t, err, "%s: %d recipients, %d octets of header", c.id, len(c.to), headerLen(t, env))
		accepted = append(accepted, c)
		atLimit = atLimit || headerLen(t, env) == maxEnvelopeLine
	}
	require.True(t, atLimit, "a header of exactly maxEnvelopeLine octets is taken")
	require.True(t, overByOne, "one octet more is refused")
	require.GreaterOrEqual(t, len(accepted), 6, "the boundary cases and some random ones fit")
	require.Less(t, len(accepted), len(cases), "some do not")
	s.Close()

	check := func(s *Spool, where string) {
		t.Helper()
		require.Equal(t, len(accepted), s.Stats().Depth, where)
		l, err := List(e.dir)
		require.NoError(t, err)
		require.Len(t, l, len(accepted), where)
		listed := map[string]Entry{}
		for _, ent := range l {
			listed[ent.ID] = ent
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range accepted {
			m := s.msgs[c.id]
			require.NotNil(t, m, "%s %s", where, c.id)
			require.Equal(t, c.from, m.From, "%s %s", where, c.id)
			require.Equal(t, c.to, m.To, "%s %s", where, c.id)
			require.Equal(t, c.to, listed[c.id].To, "%s %s", where, c.id)
		}
	}
	// From the segment.
	s2 := e.open()
	check(s2, "segment")
	// Deferred: moved to files of their own.
	require.Equal(t, len(accepted), e.deliver(s2))
	for _, c := range accepted {
		_, err := os.Stat(msgPath(e.dir, c.id))
		require.NoError(t, err, "moved out")
	}
	s2.Close()
	s3 := e.open()
	check(s3, "message files")
	require.True(t, slices.ContainsFunc(files(t, e.dir), func(n string) bool { return strings.HasSuffix(n, msgSuffix) }))
}
