package spool

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/deliver"
)

// sink is a real go-smtp server on 127.0.0.1 standing in for the upstream. rcpt decides
// the reply to each RCPT TO (nil: accept).
type sink struct {
	addr string

	mu   sync.Mutex
	rcpt func(to string) error
	got  []delivery
}

type delivery struct {
	From string
	To   []string
	Data []byte
}

func startSink(t testing.TB) *sink {
	t.Helper()
	k := &sink{}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &sinkSession{k: k}, nil
	}))
	srv.Domain = "upstream.test"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	k.addr = l.Addr().String()
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return k
}

// setRcpt replaces the RCPT policy.
func (k *sink) setRcpt(f func(to string) error) {
	k.mu.Lock()
	k.rcpt = f
	k.mu.Unlock()
}

func (k *sink) deliveries() []delivery {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]delivery(nil), k.got...)
}

// rcpts counts the deliveries per recipient.
func (k *sink) rcpts() map[string]int {
	n := map[string]int{}
	for _, d := range k.deliveries() {
		for _, r := range d.To {
			n[r]++
		}
	}
	return n
}

type sinkSession struct {
	k    *sink
	from string
	to   []string
}

func (s *sinkSession) Reset()        { s.from, s.to = "", nil }
func (s *sinkSession) Logout() error { return nil }
func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.k.mu.Lock()
	f := s.k.rcpt
	s.k.mu.Unlock()
	if f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.k.mu.Lock()
	s.k.got = append(s.k.got, delivery{From: s.from, To: s.to, Data: b})
	s.k.mu.Unlock()
	return nil
}

func reply(code int, enh [3]int, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode(enh), Message: msg}
}

// pool is the real delivery pool of the relay, sending to k.
func pool(t testing.TB, k *sink) *deliver.Pool {
	t.Helper()
	cfg := &config.Config{Hostname: "relay.test"}
	cfg.Upstream = config.Upstream{Address: k.addr, TLS: "none", MaxConnections: 4, Timeout: config.Duration{Duration: 10 * time.Second}}
	p, err := deliver.NewPool(cfg, nil)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// bounces records the DSNs the spool hands to Options.Bounce.
type bounces struct {
	mu   sync.Mutex
	err  error // returned by Bounce when set
	sent []bounce
}

type bounce struct {
	To  string
	DSN []byte
}

func (b *bounces) Bounce(_ context.Context, to string, dsn []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	b.sent = append(b.sent, bounce{to, dsn})
	return nil
}

func (b *bounces) setErr(err error) {
	b.mu.Lock()
	b.err = err
	b.mu.Unlock()
}

func (b *bounces) all() []bounce {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]bounce(nil), b.sent...)
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

// env is a spool under test with its upstream, bounce recorder and clock.
type env struct {
	t       *testing.T
	dir     string
	sink    *sink
	bounces *bounces
	clock   *clock
	opts    Options
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, dir: t.TempDir(), sink: startSink(t), bounces: &bounces{}, clock: &clock{}}
	e.opts = Options{
		Dir: e.dir, MaxAge: time.Hour, RetryMin: 10 * time.Millisecond, RetryMax: 40 * time.Millisecond,
		Workers: 4, Sender: pool(t, e.sink), Bounce: e.bounces.Bounce, Now: e.clock.Now,
		Hostname: "relay.test", PollInterval: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	return e
}

// open opens the spool; the returned stop function ends Run, waits for it and closes.
func (e *env) open() *Spool {
	e.t.Helper()
	s, err := Open(e.opts)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { s.Close() })
	return s
}

// run starts Run and returns a function that stops it and waits.
func run(t *testing.T, s *Spool) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.Run(ctx)
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
