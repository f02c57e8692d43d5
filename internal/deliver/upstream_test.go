package deliver

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relay/internal/smtptest"
)

// The upstream of these tests is an smtptest.Sink on 127.0.0.1 standing in for the
// smarthost; these are the settings the tests use.
var (
	withSTARTTLS    = smtptest.WithTLS(nil)         // a certificate newPool trusts
	withImplicitTLS = smtptest.WithImplicitTLS(nil) // the same
	withSMTPUTF8    = smtptest.WithServer(func(s *smtp.Server) { s.EnableSMTPUTF8 = true })
	withWire        = smtptest.RecordWire()
)

// withAuth offers mechs and requires a login as user "relay", password "secret".
func withAuth(mechs ...string) smtptest.Option {
	return func(s *smtptest.Sink) {
		smtptest.WithUsers(map[string]string{"relay": "secret"})(s)
		smtptest.WithAuth(mechs...)(s)
		smtptest.RequireAuth()(s)
	}
}

func startUpstream(t testing.TB, opts ...smtptest.Option) *smtptest.Sink {
	return smtptest.Start(t, append([]smtptest.Option{
		smtptest.WithServer(func(s *smtp.Server) { s.Domain = "upstream.test" }),
	}, opts...)...)
}

// refuse is a hook answer: err.
func refuse[T any](err *smtp.SMTPError) func(T) error { return func(T) error { return err } }

// dropTimes is a hook answer that hangs up the first n times (every time when n < 0) and
// accepts after that.
func dropTimes[T any](n int) func(T) error {
	var left atomic.Int64
	left.Store(int64(n))
	return func(T) error {
		if n < 0 || left.Add(-1) >= 0 {
			return smtptest.ErrDrop
		}
		return nil
	}
}

// loggedIn returns the mechanisms of the successful logins u saw.
func loggedIn(u *smtptest.Sink) []string {
	var mechs []string
	for _, a := range u.Auths() {
		if a.OK {
			mechs = append(mechs, a.Mech)
		}
	}
	return mechs
}

// barrier holds each arrival until n have arrived: it proves n sessions run at once.
type barrier struct {
	n    int
	mu   sync.Mutex
	got  int
	done chan struct{}
	ok   bool
}

func newBarrier(n int) *barrier { return &barrier{n: n, done: make(chan struct{})} }

// hold is an OnData hook: each body waits at the barrier, then is accepted.
func (b *barrier) hold(smtptest.Message) error {
	b.arrive()
	return nil
}

func (b *barrier) arrive() {
	b.mu.Lock()
	b.got++
	if b.got == b.n {
		b.ok = true
		close(b.done)
	}
	b.mu.Unlock()
	select {
	case <-b.done:
	case <-time.After(10 * time.Second): // a safety net against a hung test, not a measure
	}
}

func (b *barrier) reached() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ok
}
