package spool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/deliver"
	"relay/internal/smtptest"
)

// sender is the upstream side the tests deliver through: deliver.Sender, or a stub.
type sender interface {
	Send(ctx context.Context, from string, to []string, data []byte) ([]deliver.RcptResult, error)
}

type senderFunc func(ctx context.Context, from string, to []string, data []byte) ([]deliver.RcptResult, error)

func (f senderFunc) Send(ctx context.Context, from string, to []string, data []byte) ([]deliver.RcptResult, error) {
	return f(ctx, from, to, data)
}

func reply(code int, enh [3]int, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode(enh), Message: msg}
}

// sentTo counts the messages the sink accepted per recipient.
func sentTo(k *smtptest.Sink) map[string]int {
	n := map[string]int{}
	for _, m := range k.Messages() {
		for _, r := range m.To {
			n[r]++
		}
	}
	return n
}

// pool is the real delivery pool of the relay, sending to k.
func pool(t testing.TB, k *smtptest.Sink) *deliver.Pool {
	t.Helper()
	cfg := &config.Config{Hostname: "relay.test"}
	cfg.Upstream = config.Upstream{Address: k.Addr, TLS: "none", MaxConnections: 4, Timeout: config.Duration{Duration: 10 * time.Second}}
	p, err := deliver.NewPool(cfg, nil)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// env is a spool under test with its upstream: a real go-smtp server on loopback and the
// relay's delivery pool.
type env struct {
	t      *testing.T
	dir    string
	sink   *smtptest.Sink
	sender sender
	opts   Options
	// states are the delivery states deliver keeps between attempts, as the scheduler
	// does, and Open hands back.
	states map[string]State
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, dir: t.TempDir(), sink: smtptest.Start(t), states: map[string]State{}}
	e.sender = pool(t, e.sink)
	e.opts = Options{
		Dir: e.dir,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	return e
}

// open opens the spool, closed at the end of the test, and keeps the states it recovered.
func (e *env) open() *Spool {
	e.t.Helper()
	s, rec, err := Open(e.opts)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { s.Close() })
	clear(e.states)
	for _, r := range rec {
		e.states[r.ID] = r.State
	}
	return s
}

// put is Put for the tests that only need its error.
func put(s *Spool, ctx context.Context, id, from string, to []string, data []byte) error {
	_, err := s.Put(ctx, id, from, to, data)
	return err
}

// deliver stands in for the scheduler (internal/queue, which imports this package): it
// takes the requests of `relay queue` (a retry makes a message due now), then every message
// in the spool that is due, oldest first, gets one attempt through e.sender to its pending
// recipients, and is then Done when none is left, or Deferred for an hour with its new
// state and its content, as the scheduler records an attempt. It returns how many messages
// are left.
func (e *env) deliver(s *Spool) (left int) {
	e.t.Helper()
	s.Requests(func(r Request) {
		for id, st := range e.states {
			if r.Op == OpRetryAll || (r.Op == OpRetry && r.ID == id) {
				st.NextTry = time.Time{}
				e.states[id] = st
			}
		}
	})
	s.mu.Lock()
	var msgs []*Message
	for _, m := range s.msgs {
		msgs = append(msgs, m)
	}
	s.mu.Unlock()
	slices.SortFunc(msgs, func(a, b *Message) int {
		return cmp.Or(a.Received.Compare(b.Received), strings.Compare(a.ID, b.ID))
	})
	for _, m := range msgs {
		st := e.states[m.ID]
		if st.NextTry.After(time.Now()) {
			left++
			continue
		}
		var pending []string
		for _, r := range m.To {
			if !st.Done(r) {
				pending = append(pending, r)
			}
		}
		data, err := s.Read(m)
		require.NoError(e.t, err, m.ID)
		res, err := e.sender.Send(context.Background(), m.From, pending, data)
		st.Attempts++
		st.LastTry = time.Now()
		for _, r := range res {
			if err == nil && r.Accepted() {
				st.Delivered = append(st.Delivered, r.Rcpt)
			} else {
				st.LastError = fmt.Sprintf("<%s>: %d %s", r.Rcpt, r.Code, r.Msg)
			}
		}
		if err != nil {
			st.LastError = err.Error()
		}
		if !slices.ContainsFunc(m.To, func(r string) bool { return !st.Done(r) }) {
			require.NoError(e.t, s.Done(m))
			delete(e.states, m.ID)
			continue
		}
		st.NextTry = time.Now().Add(time.Hour)
		require.NoError(e.t, s.Defer(m, st, data))
		e.states[m.ID] = st
		left++
	}
	return left
}

// files lists the entries of dir, except ctl/, the lock and the segments (see segFiles).
func files(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if e.Name() != ctlDir && e.Name() != lockFile && !strings.HasPrefix(e.Name(), segPrefix) && !strings.HasPrefix(e.Name(), sparePfx) {
			names = append(names, e.Name())
		}
	}
	return names
}

// segFiles lists the segment files of dir (logs and done files) and the spares.
func segFiles(t *testing.T, dir string) (segs, spares []string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		switch {
		case strings.HasPrefix(e.Name(), segPrefix):
			segs = append(segs, e.Name())
		case strings.HasPrefix(e.Name(), sparePfx):
			spares = append(spares, e.Name())
		}
	}
	return segs, spares
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func msg(subject string) []byte {
	return []byte("From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + subject + "@example.com>\r\n\r\nHello.\r\n")
}

var errTest = errors.New("test failure")

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Sys().(*syscall.Stat_t).Ino
}
