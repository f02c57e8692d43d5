package queue

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/deliver"
	"relay/internal/dsn"
	"relay/internal/smtptest"
	"relay/internal/spool"
)

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

// bounces records the reports the queue hands to its Bouncer.
type bounces struct {
	mu   sync.Mutex
	err  error // returned by Bounce when set
	sent []dsn.Report
}

func (b *bounces) Bounce(_ context.Context, r dsn.Report) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	b.sent = append(b.sent, r)
	return nil
}

func (b *bounces) setErr(err error) {
	b.mu.Lock()
	b.err = err
	b.mu.Unlock()
}

func (b *bounces) all() []dsn.Report {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]dsn.Report(nil), b.sent...)
}

// clock is a real clock that a test can move forward.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// env is a queue under test with its spool, upstream (a real go-smtp server on loopback and
// the relay's delivery pool), bounce recorder and clock.
type env struct {
	t       *testing.T
	dir     string
	sink    *smtptest.Sink
	bounces *bounces
	clock   *clock
	opts    Options
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, dir: t.TempDir(), sink: smtptest.Start(t), bounces: &bounces{}, clock: &clock{}}
	e.opts = Options{
		MaxAge: time.Hour, RetryMin: 10 * time.Millisecond, RetryMax: 40 * time.Millisecond,
		Workers: 4, Sender: pool(t, e.sink), Bouncer: e.bounces, Now: e.clock.Now,
		PollInterval: 10 * time.Millisecond,
		Log:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	return e
}

// open opens the spool and its queue, as the server does; both are closed at the end of
// the test (after Run, whose stop is registered later).
func (e *env) open() (*Queue, *spool.Spool) {
	e.t.Helper()
	sp, rec, err := spool.Open(spool.Options{Dir: e.dir, Log: e.opts.Log, Now: e.opts.Now})
	require.NoError(e.t, err)
	q, err := New(sp, rec, e.opts)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { q.Close(); sp.Close() })
	return q, sp
}

// run starts Run and returns a function that stops it and waits.
func run(t *testing.T, q *Queue) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		q.Run(ctx)
		close(done)
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return stop
}

// waitFor waits until cond holds. The limit only keeps a broken test from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 20*time.Second, 2*time.Millisecond, what)
}

// files lists the message and state files of the spool directory dir: every entry but the
// spool's own (ctl/, the lock, segments and their spares).
func files(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if n := e.Name(); n != "ctl" && n != "lock" && !strings.HasPrefix(n, "seg-") && !strings.HasPrefix(n, ".tmp-spare-") {
			names = append(names, n)
		}
	}
	return names
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
