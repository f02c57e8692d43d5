package queue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/deliver"
	"relay/internal/dsn"
	"relay/internal/pipeline"
	"relay/internal/spool"
)

func TestSubmitDeliver(t *testing.T) {
	e := newEnv(t)
	q, _ := e.open()
	run(t, q)

	for i := range 3 {
		id := fmt.Sprintf("msg%d", i)
		require.NoError(t, q.Submit(context.Background(), id, "alice@example.com",
			[]string{"bob@example.net", "carol@example.org", "bob@example.net"}, msg(id)))
	}
	waitFor(t, "spool empty", func() bool { return q.Stats().Depth == 0 })

	got := e.sink.Messages()
	require.Len(t, got, 3)
	for _, d := range got {
		require.Equal(t, "alice@example.com", d.From)
		require.Equal(t, []string{"bob@example.net", "carol@example.org"}, d.To, "duplicates are sent once")
		require.Contains(t, string(d.Data), "Subject: msg")
	}
	require.Empty(t, files(t, e.dir))
	require.Empty(t, e.bounces.all())
	st := q.Stats()
	require.EqualValues(t, 6, st.Delivered)
	require.Zero(t, st.Deferred)
}

func TestSubmitLargeMessageReadBack(t *testing.T) {
	// Above memMessage the message is not kept in memory: delivery reads it from the spool.
	e := newEnv(t)
	q, _ := e.open()
	big := append(msg("big"), []byte(strings.Repeat("0123456789abcdef\r\n", memMessage/18+10))...)
	require.NoError(t, q.Submit(context.Background(), "big", "alice@example.com", []string{"bob@example.net"}, big))
	q.mu.Lock()
	require.Nil(t, q.msgs["big"].data)
	q.mu.Unlock()
	run(t, q)
	waitFor(t, "delivered", func() bool { return q.Stats().Depth == 0 })
	require.Equal(t, big, e.sink.Messages()[0].Data)
}

func TestTemporaryFailureThenRecovery(t *testing.T) {
	e := newEnv(t)
	e.sink.OnRcpt(func(string) error { return reply(451, [3]int{4, 3, 0}, "try later") })
	q, _ := e.open()
	run(t, q)

	for i := range 5 {
		require.NoError(t, q.Submit(context.Background(), fmt.Sprintf("m%d", i), "alice@example.com",
			[]string{"bob@example.net", "carol@example.org"}, msg("retry")))
	}
	// Every message is retried at least twice, and the state of each attempt is on disk.
	waitFor(t, "retried", func() bool {
		l, err := spool.List(e.dir)
		require.NoError(t, err)
		for _, ent := range l {
			if ent.Attempts < 2 {
				return false
			}
		}
		return len(l) == 5
	})
	l, err := spool.List(e.dir)
	require.NoError(t, err)
	require.Contains(t, l[0].LastError, "451 4.3.0 try later")
	require.Equal(t, []string{"bob@example.net", "carol@example.org"}, l[0].To)
	require.Empty(t, e.sink.Messages())

	e.sink.OnRcpt(nil)
	waitFor(t, "delivered", func() bool { return q.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 5, "carol@example.org": 5}, sentTo(e.sink))
	require.Empty(t, files(t, e.dir), "state files go with their message")
	require.Empty(t, e.bounces.all())
}

// The recipients refused with 5xx in one attempt go into one report, with the upstream's
// replies, to the envelope sender, with the original message; the others are delivered.
// (internal/dsn's TestBuildQueueReports renders this report.)
func TestPermanentFailureDSN(t *testing.T) {
	e := newEnv(t)
	e.sink.OnRcpt(func(to string) error {
		switch to {
		case "gone@example.net":
			return reply(550, [3]int{5, 1, 1}, "no such user")
		case "full@example.net":
			return reply(552, [3]int{5, 2, 2}, "mailbox full")
		}
		return nil
	})
	q, _ := e.open()
	run(t, q)
	before := e.clock.Now()
	require.NoError(t, q.Submit(context.Background(), "q1", "alice@example.com",
		[]string{"bob@example.net", "gone@example.net", "carol@example.org", "full@example.net"}, msg("perm")))
	waitFor(t, "done", func() bool { return q.Stats().Depth == 0 })

	require.Equal(t, map[string]int{"bob@example.net": 1, "carol@example.org": 1}, sentTo(e.sink))
	b := e.bounces.all()
	require.Len(t, b, 1, "one DSN per attempt, for all its failures")
	require.Equal(t, "alice@example.com", b[0].Sender)
	require.Equal(t, "q1", b[0].ID)
	require.False(t, b[0].Arrival.Before(before))
	require.False(t, b[0].Date.Before(b[0].Arrival))
	require.Equal(t, []dsn.Recipient{
		{Addr: "gone@example.net", Status: [3]int{5, 1, 1}, Diag: "550 5.1.1 no such user", Reply: true},
		{Addr: "full@example.net", Status: [3]int{5, 2, 2}, Diag: "552 5.2.2 mailbox full", Reply: true},
	}, b[0].Failed)
	require.Equal(t, msg("perm"), b[0].Message, "the original, for its header")
	require.EqualValues(t, 2, q.Stats().Bounced)
}

func TestTransactionRefusedBouncesAll(t *testing.T) {
	// A 5xx to MAIL FROM (a transaction-level error) fails every recipient.
	e := newEnv(t)
	e.opts.Sender = senderFunc(func(context.Context, string, []string, []byte) ([]deliver.RcptResult, error) {
		return nil, &deliver.Error{Code: 550, Enhanced: [3]int{5, 7, 1}, Msg: "sender rejected"}
	})
	q, _ := e.open()
	run(t, q)
	require.NoError(t, q.Submit(context.Background(), "tx", "alice@example.com", []string{"a@example.net", "b@example.net"}, msg("tx")))
	waitFor(t, "done", func() bool { return q.Stats().Depth == 0 })
	b := e.bounces.all()
	require.Len(t, b, 1)
	require.Len(t, b[0].Failed, 2)
	require.Equal(t, dsn.Recipient{Addr: "b@example.net", Status: [3]int{5, 7, 1}, Diag: "550 5.7.1 sender rejected", Reply: true}, b[0].Failed[1])
}

func TestNullSenderGetsNoDSN(t *testing.T) {
	e := newEnv(t)
	e.sink.OnRcpt(func(to string) error { return reply(550, [3]int{5, 1, 1}, "no such user") })
	q, _ := e.open()
	run(t, q)
	require.NoError(t, q.Submit(context.Background(), "null", "", []string{"gone@example.net"}, msg("null")))
	// The DSN would be sent before the message leaves the spool.
	waitFor(t, "done", func() bool { return q.Stats().Depth == 0 })
	require.Empty(t, e.bounces.all())
	require.EqualValues(t, 1, q.Stats().Bounced)
	require.Empty(t, files(t, e.dir))
}

func TestMaxAgeDSN(t *testing.T) {
	e := newEnv(t)
	e.sink.OnRcpt(func(to string) error {
		if to == "slow@example.net" {
			return reply(451, [3]int{4, 7, 0}, "greylisted")
		}
		return nil
	})
	q, _ := e.open()
	run(t, q)
	require.NoError(t, q.Submit(context.Background(), "old", "alice@example.com",
		[]string{"bob@example.net", "slow@example.net"}, msg("old")))
	waitFor(t, "deferred", func() bool { return q.Stats().Deferred >= 1 })
	require.Empty(t, e.bounces.all(), "not expired yet")

	e.clock.advance(e.opts.MaxAge)
	waitFor(t, "expired", func() bool { return q.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 1}, sentTo(e.sink))
	b := e.bounces.all()
	require.Len(t, b, 1)
	// RFC 3463 4.4.7, with the last reply as the diagnostic.
	require.Equal(t, []dsn.Recipient{{Addr: "slow@example.net", Status: [3]int{4, 4, 7}, Diag: "451 4.7.0 greylisted", Reply: true}}, b[0].Failed)
}

func TestBounceFailureKeepsRecipient(t *testing.T) {
	e := newEnv(t)
	e.sink.OnRcpt(func(string) error { return reply(550, [3]int{5, 1, 1}, "no such user") })
	e.bounces.setErr(errTest)
	q, _ := e.open()
	run(t, q)
	require.NoError(t, q.Submit(context.Background(), "b1", "alice@example.com", []string{"gone@example.net"}, msg("b1")))
	waitFor(t, "failed twice", func() bool {
		l, err := spool.List(e.dir)
		return err == nil && len(l) == 1 && l[0].Attempts >= 2
	})
	l, _ := spool.List(e.dir)
	require.Equal(t, []string{"gone@example.net"}, l[0].To, "no DSN, so not done")
	require.Contains(t, l[0].LastError, "DSN failed")

	e.bounces.setErr(nil)
	waitFor(t, "bounced", func() bool { return q.Stats().Depth == 0 })
	require.Len(t, e.bounces.all(), 1)
}

// processor records what the queue's bounces hand to the pipeline.
type processor struct {
	mu  sync.Mutex
	got []pipeline.Input
}

func (p *processor) Process(_ context.Context, in pipeline.Input) (pipeline.Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, in)
	return pipeline.Result{}, nil
}

func (p *processor) inputs() []pipeline.Input {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pipeline.Input(nil), p.got...)
}

// The relay's wiring: a bounce goes from the queue to dsn.Sender, which hands the report to
// the pipeline for the original sender, from <>.
func TestBounceThroughDSNSender(t *testing.T) {
	e := newEnv(t)
	e.sink.OnRcpt(func(to string) error {
		if to == "gone@example.net" {
			return reply(550, [3]int{5, 1, 1}, "no such user")
		}
		return nil
	})
	p := &processor{}
	e.opts.Bouncer = &dsn.Sender{Hostname: "relay.test", Pipeline: p}
	q, _ := e.open()
	run(t, q)
	require.NoError(t, q.Submit(context.Background(), "w1", "alice@example.com", []string{"gone@example.net", "ok@example.net"}, msg("w1")))
	waitFor(t, "done", func() bool { return q.Stats().Depth == 0 })
	in := p.inputs()
	require.Len(t, in, 1)
	require.Equal(t, []string{"alice@example.com"}, in[0].To)
	require.Equal(t, "", in[0].Envelope, "from the null sender")
	require.Equal(t, "dsn", in[0].Client)
	require.Contains(t, string(in[0].Data), "Final-Recipient: rfc822; gone@example.net")
	require.Contains(t, string(in[0].Data), "Status: 5.1.1")
	require.NotContains(t, string(in[0].Data), "Final-Recipient: rfc822; ok@example.net")
}

func TestDoneRecipientsSurviveRestart(t *testing.T) {
	// bob is delivered in the first attempt, carol deferred; after a restart only carol
	// is sent: a recipient marked done is never pending again.
	e := newEnv(t)
	e.opts.RetryMin, e.opts.RetryMax = time.Hour, time.Hour
	e.sink.OnRcpt(func(to string) error {
		if to == "carol@example.org" {
			return reply(452, [3]int{4, 2, 2}, "over quota")
		}
		return nil
	})
	q1, sp1 := e.open()
	stop := run(t, q1)
	require.NoError(t, q1.Submit(context.Background(), "part", "alice@example.com", []string{"bob@example.net", "carol@example.org"}, msg("part")))
	waitFor(t, "deferred", func() bool { return q1.Stats().Deferred == 1 })
	stop()
	q1.Close()
	sp1.Close()

	ent, _, err := spool.Show(e.dir, "part")
	require.NoError(t, err)
	require.Equal(t, []string{"carol@example.org"}, ent.To)
	require.Equal(t, []string{"bob@example.net"}, ent.Done)
	require.Equal(t, 1, ent.Attempts)
	require.True(t, ent.NextTry.After(time.Now().Add(30*time.Minute)))

	e.sink.OnRcpt(nil)
	e.opts.RetryMin = 10 * time.Millisecond
	q2, _ := e.open()
	require.NoError(t, spool.Retry(e.dir, "part")) // the next try is an hour away
	run(t, q2)
	waitFor(t, "delivered", func() bool { return q2.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 1, "carol@example.org": 1}, sentTo(e.sink))
}

// breakDir makes dir unwritable and returns the function that repairs it. chmod 0500 is
// what an admin's mistake looks like; root ignores it, so as root the directory is
// replaced by a file instead.
func breakDir(t *testing.T, dir string) (repair func()) {
	require.NoError(t, os.Chmod(dir, 0o500))
	f, err := os.Create(filepath.Join(dir, "probe"))
	if err != nil {
		return func() { require.NoError(t, os.Chmod(dir, 0o700)) }
	}
	f.Close()
	require.NoError(t, os.Remove(f.Name()))
	require.NoError(t, os.Chmod(dir, 0o700))
	require.NoError(t, os.Rename(dir, dir+".away"))
	require.NoError(t, os.WriteFile(dir, nil, 0o600))
	return func() {
		require.NoError(t, os.Remove(dir))
		require.NoError(t, os.Rename(dir+".away", dir))
	}
}

func TestUnwritableSpool(t *testing.T) {
	e := newEnv(t)
	q, sp := e.open()
	run(t, q)
	require.NoError(t, q.Submit(context.Background(), "before", "alice@example.com", []string{"bob@example.net"}, msg("before")))
	waitFor(t, "delivered", func() bool { return q.Stats().Depth == 0 })

	// A message already accepted, waiting for a retry while the directory breaks, is
	// not lost: its attempts go on, their state cannot be written, and it is delivered
	// once the directory is back.
	e.sink.OnRcpt(func(to string) error {
		if to == "held@example.net" {
			return reply(451, [3]int{4, 3, 0}, "later")
		}
		return nil
	})
	require.NoError(t, q.Submit(context.Background(), "held", "alice@example.com", []string{"held@example.net"}, msg("held")))
	waitFor(t, "deferred", func() bool { return q.Stats().Deferred == 1 })

	repair := breakDir(t, e.dir)
	waitFor(t, "retried while broken", func() bool { return q.Stats().Deferred >= 3 })
	err := q.Submit(context.Background(), "nope", "alice@example.com", []string{"bob@example.net"}, msg("nope"))
	require.Error(t, err)
	var r interface{ SMTPReply() (int, [3]int, string) }
	require.True(t, errors.As(err, &r))
	code, enh, _ := r.SMTPReply()
	require.Equal(t, 451, code)
	require.Equal(t, [3]int{4, 3, 0}, enh)
	require.Error(t, sp.Writable())
	require.Equal(t, 1, q.Stats().Depth)

	repair()
	e.sink.OnRcpt(nil)
	require.NoError(t, sp.Writable())
	require.NoError(t, q.Submit(context.Background(), "nope", "alice@example.com", []string{"bob@example.net"}, msg("nope")), "the id is free again")
	waitFor(t, "delivered", func() bool { return q.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 2, "held@example.net": 1}, sentTo(e.sink))
}

func TestSubmitAfterClose(t *testing.T) {
	e := newEnv(t)
	q, sp := e.open()
	q.Close()
	err := q.Submit(context.Background(), "late", "a@b", []string{"c@d"}, msg("x"))
	require.ErrorIs(t, err, spool.ErrClosed)
	var se *spool.Error
	require.ErrorAs(t, err, &se)
	require.Zero(t, sp.Stats().Records, "nothing was written")
}

func TestNewRequires(t *testing.T) {
	e := newEnv(t)
	sp, rec, err := spool.Open(spool.Options{Dir: e.dir})
	require.NoError(t, err)
	defer sp.Close()
	o := e.opts
	o.Bouncer = nil
	_, err = New(sp, rec, o)
	require.Error(t, err)
	o = e.opts
	o.Sender = nil
	_, err = New(sp, rec, o)
	require.Error(t, err)
}

func TestAdmin(t *testing.T) {
	e := newEnv(t)
	e.opts.RetryMin, e.opts.RetryMax = time.Hour, time.Hour
	var mu sync.Mutex
	tries := map[string]int{}
	e.sink.OnRcpt(func(to string) error {
		mu.Lock()
		tries[to]++
		mu.Unlock()
		return reply(450, [3]int{4, 2, 1}, "busy")
	})
	count := func(to string) int {
		mu.Lock()
		defer mu.Unlock()
		return tries[to]
	}
	q, _ := e.open()
	run(t, q)
	ctx := context.Background()
	require.NoError(t, q.Submit(ctx, "a1", "alice@example.com", []string{"a@example.net"}, msg("a1")))
	waitFor(t, "a1 tried", func() bool { return q.Stats().Deferred == 1 })
	e.clock.advance(time.Second) // orders the arrivals
	require.NoError(t, q.Submit(ctx, "a2", "", []string{"b@example.net"}, msg("a2")))
	waitFor(t, "a2 tried", func() bool { return q.Stats().Deferred == 2 })

	l, err := spool.List(e.dir)
	require.NoError(t, err)
	require.Len(t, l, 2)
	require.Equal(t, "a1", l[0].ID)
	require.Equal(t, "alice@example.com", l[0].From)
	require.Equal(t, []string{"a@example.net"}, l[0].To)
	require.Equal(t, 1, l[0].Attempts)
	require.Contains(t, l[0].LastError, "450 4.2.1 busy")
	require.Equal(t, "a2", l[1].ID)
	require.Equal(t, "", l[1].From)

	ent, data, err := spool.Show(e.dir, "a2")
	require.NoError(t, err)
	require.Equal(t, msg("a2"), data)
	require.Equal(t, len(data), ent.Size)
	_, _, err = spool.Show(e.dir, "nope")
	require.ErrorIs(t, err, spool.ErrNotFound)
	require.ErrorIs(t, spool.Retry(e.dir, "nope"), spool.ErrNotFound)
	require.ErrorIs(t, spool.Delete(e.dir, "nope"), spool.ErrNotFound)

	// Retry one: the server notices the request and tries it again at once.
	require.NoError(t, spool.Retry(e.dir, "a1"))
	waitFor(t, "a1 retried", func() bool { return count("a@example.net") == 2 })
	require.Equal(t, 1, count("b@example.net"))
	waitFor(t, "request consumed", func() bool {
		l, _ := spool.List(e.dir)
		return len(l) == 2 && !l[0].RetryRequested && l[0].Attempts == 2
	})

	// Retry all.
	require.NoError(t, spool.Retry(e.dir, ""))
	waitFor(t, "all retried", func() bool { return count("a@example.net") == 3 && count("b@example.net") == 2 })

	// Delete: gone from the directory at once, and from the server's memory.
	require.NoError(t, spool.Delete(e.dir, "a2"))
	l, err = spool.List(e.dir)
	require.NoError(t, err)
	require.Len(t, l, 1)
	waitFor(t, "forgotten", func() bool { return q.Stats().Depth == 1 })
	require.NoError(t, spool.Retry(e.dir, ""))
	waitFor(t, "a1 retried again", func() bool { return count("a@example.net") == 4 })
	require.Equal(t, 2, count("b@example.net"), "a deleted message is not delivered")
	waitFor(t, "no orphan state", func() bool {
		_, err := os.Stat(filepath.Join(e.dir, "a2.state"))
		return errors.Is(err, os.ErrNotExist)
	})
}

func TestConcurrentSubmit(t *testing.T) {
	e := newEnv(t)
	q, _ := e.open()
	run(t, q)
	const clients, per = 20, 25
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range per {
				id := fmt.Sprintf("c%d-%d", c, i)
				require.NoError(t, q.Submit(context.Background(), id, "alice@example.com", []string{id + "@example.net"}, msg(id)))
			}
		})
	}
	wg.Wait()
	waitFor(t, "all delivered", func() bool { return q.Stats().Depth == 0 })
	got := sentTo(e.sink)
	require.Len(t, got, clients*per)
	for r, n := range got {
		require.Equal(t, 1, n, r)
	}
	require.Empty(t, files(t, e.dir))
}

func TestPermanent(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"5xx reply", &deliver.Error{Code: 550, Enhanced: [3]int{5, 1, 1}}, true},
		{"wrapped 5xx", fmt.Errorf("x: %w", &deliver.Error{Code: 554}), true},
		{"4xx reply", &deliver.Error{Code: 451}, false},
		{"fault", &deliver.Error{Err: errors.New("connection reset")}, false},
		{"net error", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, false},
		{"plain error", errors.New("something"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, permanent(tc.err))
		})
	}
}

// The relay's wiring: the pipeline submits to the queue, the queue bounces through dsn.
var (
	_ pipeline.Submitter = (*Queue)(nil)
	_ Bouncer            = (*dsn.Sender)(nil)
)
