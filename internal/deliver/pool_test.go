package deliver

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/smtptest"
)

func testConfig(addr string) *config.Config {
	return &config.Config{
		Hostname: "relay.test",
		Upstream: config.Upstream{
			Address: addr, TLS: "none", MaxConnections: 2,
			Timeout: config.Duration{Duration: 10 * time.Second},
		},
	}
}

// newPool returns a Pool for u that trusts u's certificate.
func newPool(t testing.TB, u *smtptest.Sink, edit func(*config.Upstream)) *Pool {
	cfg := testConfig(u.Addr)
	if edit != nil {
		edit(&cfg.Upstream)
	}
	p, err := NewPool(cfg, nil)
	require.NoError(t, err)
	p.tlsConfig = &tls.Config{RootCAs: u.RootCAs()}
	t.Cleanup(func() { p.Close() })
	return p
}

func testMessage(i int) []byte {
	return fmt.Appendf(nil, "From: app@customer.example\r\nTo: rcpt@dest.example\r\nSubject: test %d\r\n\r\n"+
		"Hello %d\r\n.a line that starts with a dot\r\n", i, i)
}

func TestPoolSendsMessage(t *testing.T) {
	u := startUpstream(t)
	p := newPool(t, u, nil)
	data := testMessage(1)

	res, err := p.Send(t.Context(), "app@customer.example", []string{"a@dest.example", "b@dest.example"}, data)
	require.NoError(t, err)
	require.Equal(t, []RcptResult{{Rcpt: "a@dest.example", Code: 250}, {Rcpt: "b@dest.example", Code: 250}}, res)

	msgs := u.Messages()
	require.Len(t, msgs, 1)
	require.Equal(t, "app@customer.example", msgs[0].From)
	require.Equal(t, []string{"a@dest.example", "b@dest.example"}, msgs[0].To)
	require.Equal(t, string(data), string(msgs[0].Data), "content must arrive byte for byte, dot-stuffing undone")
	require.Equal(t, int64(len(data)), msgs[0].Size, "SIZE declared")
	require.False(t, msgs[0].UTF8)
	require.Equal(t, []string{"relay.test"}, u.Helos(), "EHLO with cfg.Hostname")
}

func TestPoolNullSender(t *testing.T) {
	u := startUpstream(t)
	p := newPool(t, u, nil)
	_, err := p.Send(t.Context(), "", []string{"a@dest.example"}, testMessage(1))
	require.NoError(t, err)
	require.Equal(t, "", u.Messages()[0].From, "bounces go out with MAIL FROM:<>")
}

func TestPoolReusesConnections(t *testing.T) {
	for _, tc := range []struct {
		name    string
		workers int
		tls     string
		opts    []smtptest.Option
		want    int // connections at most
	}{
		{name: "sequential", workers: 1, tls: "none", want: 1},
		{name: "concurrent", workers: 8, tls: "none", want: 2},
		{name: "starttls", workers: 8, tls: "starttls", opts: []smtptest.Option{withSTARTTLS}, want: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := startUpstream(t, tc.opts...)
			p := newPool(t, u, func(c *config.Upstream) { c.TLS = tc.tls })
			const n = 50
			var wg sync.WaitGroup
			errs := make(chan error, n)
			next := make(chan int, n)
			for i := range n {
				next <- i
			}
			close(next)
			for range tc.workers {
				wg.Go(func() {
					for i := range next {
						_, err := p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(i))
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			require.Len(t, u.Messages(), n)
			st := u.Stats()
			accepted, maxOpen := st.Conns, st.MaxOpen
			require.LessOrEqual(t, accepted, tc.want, "connections must be reused")
			require.LessOrEqual(t, maxOpen, 2)
		})
	}
}

func TestPoolRespectsMaxConnections(t *testing.T) {
	u := startUpstream(t)
	// Every DATA waits until three are in progress: the pool must reach three connections
	// at once (else the barrier never opens) and never open a fourth.
	b := newBarrier(3)
	u.OnData(b.hold)
	p := newPool(t, u, func(c *config.Upstream) { c.MaxConnections = 3 })

	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			_, err := p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(i))
			require.NoError(t, err)
		})
	}
	wg.Wait()
	require.True(t, b.reached(), "three sends never ran at once")
	require.Len(t, u.Messages(), 12)
	st := u.Stats()
	accepted, maxOpen := st.Conns, st.MaxOpen
	require.Equal(t, 3, maxOpen)
	require.LessOrEqual(t, accepted, 3)
}

func TestPoolRecipientResults(t *testing.T) {
	u := startUpstream(t)
	u.RejectRcpts(map[string]*smtp.SMTPError{
		"bad@dest.example":  {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
		"full@dest.example": {Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"},
	})
	p := newPool(t, u, nil)

	res, err := p.Send(t.Context(), "app@customer.example",
		[]string{"a@dest.example", "bad@dest.example", "full@dest.example", "b@dest.example"}, testMessage(1))
	require.NoError(t, err)
	require.Equal(t, []RcptResult{
		{Rcpt: "a@dest.example", Code: 250},
		{Rcpt: "bad@dest.example", Code: 550, Enhanced: [3]int{5, 1, 1}, Msg: "no such user"},
		{Rcpt: "full@dest.example", Code: 452, Enhanced: [3]int{4, 2, 2}, Msg: "mailbox full"},
		{Rcpt: "b@dest.example", Code: 250},
	}, res)
	msgs := u.Messages()
	require.Len(t, msgs, 1)
	require.Equal(t, []string{"a@dest.example", "b@dest.example"}, msgs[0].To, "delivered to exactly the accepted ones")

	// Every recipient refused: no DATA, no error, and the connection stays usable (RSET).
	res, err = p.Send(t.Context(), "app@customer.example", []string{"bad@dest.example"}, testMessage(2))
	require.NoError(t, err)
	require.Equal(t, 550, res[0].Code)
	require.Len(t, u.Messages(), 1)
	require.Equal(t, 1, u.Stats().Bodies, "DATA must not be sent when no recipient was accepted")

	_, err = p.Send(t.Context(), "app@customer.example", []string{"a@dest.example"}, testMessage(3))
	require.NoError(t, err)
	require.Len(t, u.Messages(), 2)
	accepted := u.Stats().Conns
	require.Equal(t, 1, accepted, "one connection throughout")
}

func TestPoolTransactionErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		set       func(u *smtptest.Sink)
		code      int
		temporary bool
		reply     string
	}{
		{
			name: "4xx at MAIL",
			set: func(u *smtptest.Sink) {
				u.OnMail(refuse[string](&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}))
			},
			code: 451, temporary: true, reply: "upstream: try later",
		},
		{
			name: "5xx at MAIL",
			set: func(u *smtptest.Sink) {
				u.OnMail(refuse[string](&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender refused"}))
			},
			code: 550, temporary: false, reply: "upstream: sender refused",
		},
		{
			name: "5xx at DATA",
			set: func(u *smtptest.Sink) {
				u.OnData(refuse[smtptest.Message](&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "content rejected"}))
			},
			code: 554, temporary: false, reply: "upstream: content rejected",
		},
		{
			name: "4xx at DATA",
			set: func(u *smtptest.Sink) {
				u.OnData(refuse[smtptest.Message](&smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "disk full"}))
			},
			code: 452, temporary: true, reply: "upstream: disk full",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := startUpstream(t)
			p := newPool(t, u, nil)
			tc.set(u)

			res, err := p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(1))
			require.Nil(t, res)
			var e *Error
			require.ErrorAs(t, err, &e)
			require.Equal(t, tc.code, e.Code)
			require.Equal(t, tc.temporary, e.Temporary())
			code, _, msg := e.SMTPReply()
			require.Equal(t, tc.code, code)
			require.Equal(t, tc.reply, msg)
			require.Empty(t, u.Messages())

			// The connection survives a refusal and serves the next message.
			u.OnMail(nil)
			u.OnData(nil)
			_, err = p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(2))
			require.NoError(t, err)
			require.Len(t, u.Messages(), 1)
			accepted := u.Stats().Conns
			require.Equal(t, 1, accepted)
		})
	}
}

func TestPoolConnectionDrop(t *testing.T) {
	send := func(p *Pool, i int) error {
		_, err := p.Send(context.Background(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(i))
		return err
	}

	t.Run("before DATA: sent again once on a new connection", func(t *testing.T) {
		u := startUpstream(t)
		p := newPool(t, u, nil)
		require.NoError(t, send(p, 1))
		u.OnMail(dropTimes[string](1)) // the reused connection dies
		require.NoError(t, send(p, 2))
		require.Len(t, u.Messages(), 2)
		accepted := u.Stats().Conns
		require.Equal(t, 2, accepted)
	})

	t.Run("before DATA, every time: one retry, then a temporary fault", func(t *testing.T) {
		u := startUpstream(t)
		p := newPool(t, u, nil)
		u.OnMail(dropTimes[string](-1))
		err := send(p, 1)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.Zero(t, e.Code)
		require.True(t, e.Temporary())
		code, enh, msg := e.SMTPReply()
		require.Equal(t, 451, code)
		require.Equal(t, [3]int{4, 4, 1}, enh)
		require.Equal(t, "upstream unavailable", msg)
		require.Equal(t, 2, u.Stats().Mails, "exactly one retry")

		u.OnMail(nil)
		require.NoError(t, send(p, 2), "the pool recovers")
		require.Len(t, u.Messages(), 1)
	})

	t.Run("after the body: no retry, the upstream may have it", func(t *testing.T) {
		u := startUpstream(t)
		p := newPool(t, u, nil)
		u.OnData(dropTimes[smtptest.Message](1))
		err := send(p, 1)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.True(t, e.Temporary())
		require.Equal(t, 1, u.Stats().Bodies, "the body must not be sent twice")

		require.NoError(t, send(p, 2), "the pool recovers")
		require.Len(t, u.Messages(), 1)
		accepted := u.Stats().Conns
		require.Equal(t, 2, accepted)
	})

	t.Run("421 closing: a new connection", func(t *testing.T) {
		u := startUpstream(t)
		p := newPool(t, u, nil)
		require.NoError(t, send(p, 1))
		u.OnMail(refuse[string](&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "idle too long"}))
		err := send(p, 2)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.Equal(t, 421, e.Code)
		accepted := u.Stats().Conns
		require.Equal(t, 2, accepted, "a 421 connection is not reused; the retry used a new one")
	})
}

func TestPoolUpstreamRestart(t *testing.T) {
	const conns = 4
	u := startUpstream(t)
	p := newPool(t, u, func(c *config.Upstream) { c.MaxConnections = conns })
	sendAll := func(first, n int) {
		t.Helper()
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, err := p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(first+i))
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
	}
	idle := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.idle)
	}

	// Every DATA waits until all are in progress, so the pool ends up with conns idle
	// connections, all opened to the upstream that is about to restart.
	b := newBarrier(conns)
	u.OnData(b.hold)
	sendAll(0, conns)
	require.True(t, b.reached(), "the sends never ran at once")
	u.OnData(nil)
	require.Equal(t, conns, idle())

	u.Restart(t)

	_, err := p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(100))
	require.NoError(t, err, "the first message after the restart goes out on the first Send: the retry dials")
	require.Equal(t, 1, idle(), "the idle connections from before the restart went with the broken one")

	sendAll(200, 2*conns)
	require.Len(t, u.Messages(), conns+1+2*conns)
	maxOpen := u.Stats().MaxOpen
	require.LessOrEqual(t, maxOpen, conns, "upstream.max_connections holds across the retries")
}

func TestPoolTLS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    string
		opts    []smtptest.Option
		trust   bool
		wantTLS bool
		wantErr string
	}{
		{name: "starttls", mode: "starttls", opts: []smtptest.Option{withSTARTTLS}, trust: true, wantTLS: true},
		{name: "starttls not offered", mode: "starttls", trust: true, wantErr: "STARTTLS required"},
		{name: "starttls untrusted certificate", mode: "starttls", opts: []smtptest.Option{withSTARTTLS}, wantErr: "certificate"},
		{name: "opportunistic offered", mode: "opportunistic", opts: []smtptest.Option{withSTARTTLS}, trust: true, wantTLS: true},
		{name: "opportunistic not offered", mode: "opportunistic", trust: true, wantTLS: false},
		{name: "implicit", mode: "implicit", opts: []smtptest.Option{withImplicitTLS}, trust: true, wantTLS: true},
		{name: "implicit untrusted certificate", mode: "implicit", opts: []smtptest.Option{withImplicitTLS}, wantErr: "certificate"},
		{name: "none ignores STARTTLS", mode: "none", opts: []smtptest.Option{withSTARTTLS}, trust: true, wantTLS: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := startUpstream(t, tc.opts...)
			p := newPool(t, u, func(c *config.Upstream) { c.TLS = tc.mode })
			if !tc.trust {
				p.tlsConfig = nil // the system roots do not know the test certificate
			}
			_, err := p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(1))
			if tc.wantErr != "" {
				var e *Error
				require.ErrorAs(t, err, &e)
				require.Zero(t, e.Code)
				require.True(t, e.Temporary())
				require.ErrorContains(t, err, tc.wantErr)
				require.Empty(t, u.Messages())
				return
			}
			require.NoError(t, err)
			msgs := u.Messages()
			require.Len(t, msgs, 1)
			require.Equal(t, tc.wantTLS, msgs[0].TLS)
			require.Equal(t, string(testMessage(1)), string(msgs[0].Data))
			for _, h := range u.Helos() {
				require.Equal(t, "relay.test", h, "every EHLO, before and after TLS, names us")
			}
		})
	}
}

// TestPoolAuth covers the mechanisms over a plain connection, which takes tls = "none"; the
// TLS a login needs otherwise is TestPoolAuthNeedsTLS's.
func TestPoolAuth(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     []smtptest.Option
		mode     string // upstream.tls; "": none
		user     string
		password string
		wantMech string
		wantErr  string
		wantCode int // of the upstream's refusal; 0: a fault
	}{
		{name: "PLAIN", opts: []smtptest.Option{withAuth("PLAIN")}, user: "relay", password: "secret", wantMech: "PLAIN"},
		{name: "LOGIN", opts: []smtptest.Option{withAuth("LOGIN")}, user: "relay", password: "secret", wantMech: "LOGIN"},
		{name: "PLAIN preferred", opts: []smtptest.Option{withAuth("LOGIN", "PLAIN")}, user: "relay", password: "secret", wantMech: "PLAIN"},
		{name: "over STARTTLS", opts: []smtptest.Option{withAuth("PLAIN"), withSTARTTLS}, mode: "opportunistic", user: "relay", password: "secret", wantMech: "PLAIN"},
		{name: "wrong password", opts: []smtptest.Option{withAuth("PLAIN")}, user: "relay", password: "wrong", wantErr: "AUTH"},
		{name: "no mechanism we speak", opts: []smtptest.Option{withAuth("CRAM-MD5")}, user: "relay", password: "secret", wantErr: "neither PLAIN nor LOGIN"},
		{name: "no username configured", opts: []smtptest.Option{withAuth("PLAIN")}, mode: "opportunistic", wantErr: "authenticate", wantCode: 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := startUpstream(t, tc.opts...)
			p := newPool(t, u, func(c *config.Upstream) {
				c.TLS = cmp.Or(tc.mode, "none")
				c.Username, c.Password = tc.user, tc.password
			})
			_, err := p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(1))
			if tc.wantErr != "" {
				var e *Error
				require.ErrorAs(t, err, &e)
				require.Equal(t, tc.wantCode, e.Code, "a failed login is a fault: it waits for the operator, it does not bounce")
				require.ErrorContains(t, err, tc.wantErr)
				require.NotContains(t, err.Error(), "secret")
				require.Empty(t, u.Messages())
				return
			}
			require.NoError(t, err)
			msgs := u.Messages()
			require.Len(t, msgs, 1)
			require.Equal(t, "relay", msgs[0].User)
			require.Equal(t, []string{tc.wantMech}, loggedIn(u))
		})
	}
}

// TestPoolAuthNeedsTLS: upstream AUTH is never sent without TLS unless tls = "none" says so
// (SPEC §7). Every upstream offers AUTH PLAIN and LOGIN before TLS too, as a server that
// allows insecure AUTH does; wire is what reached its socket.
func TestPoolAuthNeedsTLS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    string
		opts    []smtptest.Option
		trust   bool
		wantErr string // "": delivered
		wantLog bool   // the one warning about credentials in clear
		wantTLS bool   // AUTH, and the message, over TLS
	}{
		{name: "opportunistic, no STARTTLS", mode: "opportunistic", trust: true, wantErr: "AUTH not sent", wantLog: true},
		{name: "opportunistic, STARTTLS fails", mode: "opportunistic", opts: []smtptest.Option{withSTARTTLS}, wantErr: "certificate"},
		{name: "opportunistic, STARTTLS", mode: "opportunistic", opts: []smtptest.Option{withSTARTTLS}, trust: true, wantTLS: true},
		{name: "starttls, no STARTTLS", mode: "starttls", trust: true, wantErr: "STARTTLS required"},
		{name: "starttls", mode: "starttls", opts: []smtptest.Option{withSTARTTLS}, trust: true, wantTLS: true},
		{name: "implicit", mode: "implicit", opts: []smtptest.Option{withImplicitTLS}, trust: true, wantTLS: true},
		{name: "none sends AUTH in clear", mode: "none", trust: true},
		{name: "none ignores STARTTLS", mode: "none", opts: []smtptest.Option{withSTARTTLS}, trust: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := startUpstream(t, append([]smtptest.Option{withAuth("PLAIN", "LOGIN"), withWire}, tc.opts...)...)
			p := newPool(t, u, func(c *config.Upstream) {
				c.TLS = tc.mode
				c.Username, c.Password = "relay", "secret"
			})
			if !tc.trust {
				p.tlsConfig = nil // the system roots do not know the test certificate
			}
			var logs bytes.Buffer
			p.log = slog.New(slog.NewTextHandler(&logs, nil))

			err := (&Direct{Sender: p}).Submit(t.Context(), "ID1", "app@customer.example", []string{"rcpt@dest.example"}, testMessage(1))
			wire, tried, mails := string(u.Wire()), u.Auths(), u.Stats().Mails
			plainPW := base64.StdEncoding.EncodeToString([]byte("\x00relay\x00secret"))
			if tc.wantErr != "" {
				var e *Error
				require.ErrorAs(t, err, &e)
				require.True(t, e.Temporary(), "the message waits for TLS or the operator, it does not bounce")
				code, enh, _ := e.SMTPReply()
				require.Equal(t, 4, code/100, "direct mode answers 4xx")
				require.Equal(t, 4, enh[0])
				require.ErrorContains(t, err, tc.wantErr)
				require.NotContains(t, err.Error(), "secret")
				require.Empty(t, tried, "the upstream never received AUTH")
				require.NotContains(t, wire, "AUTH")
				require.NotContains(t, wire, plainPW)
				require.Zero(t, mails, "nothing is sent unauthenticated either")
				require.Empty(t, u.Messages())
			} else {
				require.NoError(t, err)
				require.Equal(t, []smtptest.Auth{{Mech: "PLAIN", User: "relay", TLS: tc.wantTLS, OK: true}}, tried)
				if tc.wantTLS {
					require.NotContains(t, wire, "AUTH", "no AUTH before TLS")
					require.NotContains(t, wire, plainPW)
				} else {
					require.Contains(t, wire, "AUTH PLAIN "+plainPW, "tls = \"none\" sends AUTH as configured")
				}
				msgs := u.Messages()
				require.Len(t, msgs, 1)
				require.Equal(t, "relay", msgs[0].User)
				require.Equal(t, tc.wantTLS, msgs[0].TLS)
			}
			if !tc.wantLog {
				require.NotContains(t, logs.String(), "credentials")
				return
			}
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			require.Len(t, lines, 1, "one log line per refused attempt")
			require.Contains(t, lines[0], "level=WARN")
			require.Contains(t, lines[0], "upstream="+u.Addr)
			require.Contains(t, lines[0], "credentials are never sent over a connection without TLS")
			require.Contains(t, lines[0], `upstream.tls = \"none\"`)
			require.NotContains(t, lines[0], "secret")
		})
	}
}

func TestPoolSMTPUTF8(t *testing.T) {
	utf8Header := []byte("From: Jürgen <app@customer.example>\r\nSubject: Grüße\r\n\r\nbody\r\n")
	utf8Body := []byte("From: app@customer.example\r\nSubject: hi\r\n\r\nGrüße\r\n")
	for _, tc := range []struct {
		name     string
		opts     []smtptest.Option
		from     string
		data     []byte
		wantUTF8 bool
		wantCode int
	}{
		{name: "ascii", opts: []smtptest.Option{withSMTPUTF8}, from: "app@customer.example", data: utf8Body, wantUTF8: false},
		{name: "utf8 address", opts: []smtptest.Option{withSMTPUTF8}, from: "jürgen@customer.example", data: testMessage(1), wantUTF8: true},
		{name: "utf8 header", opts: []smtptest.Option{withSMTPUTF8}, from: "app@customer.example", data: utf8Header, wantUTF8: true},
		{name: "utf8 header, not offered", from: "app@customer.example", data: utf8Header, wantUTF8: false},
		{name: "utf8 address, not offered", from: "jürgen@customer.example", data: testMessage(1), wantCode: 553},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := startUpstream(t, tc.opts...)
			p := newPool(t, u, nil)
			_, err := p.Send(t.Context(), tc.from, []string{"rcpt@dest.example"}, tc.data)
			if tc.wantCode != 0 {
				var e *Error
				require.ErrorAs(t, err, &e)
				require.Equal(t, tc.wantCode, e.Code)
				require.False(t, e.Temporary())
				require.Empty(t, u.Messages())
				return
			}
			require.NoError(t, err)
			msgs := u.Messages()
			require.Len(t, msgs, 1)
			require.Equal(t, tc.wantUTF8, msgs[0].UTF8)
			require.Equal(t, tc.from, msgs[0].From)
			require.Equal(t, string(tc.data), string(msgs[0].Data))
		})
	}
}

func TestPoolContext(t *testing.T) {
	send := func(ctx context.Context, p *Pool) error {
		_, err := p.Send(ctx, "app@customer.example", []string{"rcpt@dest.example"}, testMessage(1))
		return err
	}

	t.Run("deadline while the upstream is silent", func(t *testing.T) {
		u := startUpstream(t)
		u.Stall(smtptest.StageData)
		p := newPool(t, u, nil)
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		err := send(ctx, p)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.True(t, e.Temporary())
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	})

	t.Run("cancel without a deadline", func(t *testing.T) {
		u := startUpstream(t)
		u.Stall(smtptest.StageMail)
		p := newPool(t, u, nil)
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-u.Stalled()
			cancel()
		}()
		err := send(ctx, p)
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, 1, u.Stats().Mails, "no retry once the context is done")
	})

	t.Run("upstream.timeout per command", func(t *testing.T) {
		u := startUpstream(t)
		u.Stall(smtptest.StageRcpt)
		p := newPool(t, u, func(c *config.Upstream) { c.Timeout.Duration = 200 * time.Millisecond })
		err := send(context.Background(), p)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.True(t, e.Temporary())
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	})

	t.Run("upstream.timeout while the body is written", func(t *testing.T) {
		// go-smtp clears the deadline while the body is written; a stalled upstream must
		// still not hold the sender for ever.
		u := startUpstream(t)
		u.Stall(smtptest.StageBody)
		p := newPool(t, u, func(c *config.Upstream) { c.Timeout.Duration = 300 * time.Millisecond })
		big := append(testMessage(1), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n"), 1<<18)...)
		done := make(chan error, 1)
		go func() {
			_, err := p.Send(context.Background(), "app@customer.example", []string{"rcpt@dest.example"}, big)
			done <- err
		}()
		select {
		case err := <-done:
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
		case <-time.After(20 * time.Second): // a safety net, not a measure
			t.Fatal("Send still blocked writing the body")
		}
	})

	t.Run("deadline while waiting for a connection", func(t *testing.T) {
		u := startUpstream(t)
		u.Stall(smtptest.StageMail)
		p := newPool(t, u, func(c *config.Upstream) { c.MaxConnections = 1 })
		go send(t.Context(), p) // holds the only connection
		<-u.Stalled()
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		err := send(ctx, p)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorContains(t, err, "waiting for a connection")
		accepted := u.Stats().Conns
		require.Equal(t, 1, accepted)
	})

	t.Run("context already done", func(t *testing.T) {
		u := startUpstream(t)
		p := newPool(t, u, nil)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		err := send(ctx, p)
		require.ErrorIs(t, err, context.Canceled)
		require.Empty(t, u.Messages())
	})
}

func TestPoolIdleAndClose(t *testing.T) {
	u := startUpstream(t)
	p := newPool(t, u, nil)
	send := func() error {
		_, err := p.Send(t.Context(), "app@customer.example", []string{"rcpt@dest.example"}, testMessage(1))
		return err
	}
	require.NoError(t, send())
	require.Equal(t, 0, p.closeIdle(time.Now().Add(-time.Minute)), "a fresh connection is not stale")
	require.Equal(t, 1, p.closeIdle(time.Now().Add(time.Minute)))
	require.Eventually(t, func() bool { return u.Stats().Open == 0 }, 5*time.Second, 5*time.Millisecond,
		"the upstream sees the stale connection closed")

	require.NoError(t, send())
	accepted := u.Stats().Conns
	require.Equal(t, 2, accepted, "a new connection after the idle one was closed")

	require.NoError(t, p.Close())
	require.Eventually(t, func() bool { return u.Stats().Open == 0 }, 5*time.Second, 5*time.Millisecond,
		"Close closes the idle connections")
	err := send()
	var e *Error
	require.ErrorAs(t, err, &e)
	require.True(t, e.Temporary())
}

func TestPoolNoRecipients(t *testing.T) {
	u := startUpstream(t)
	p := newPool(t, u, nil)
	_, err := p.Send(t.Context(), "app@customer.example", nil, testMessage(1))
	require.Error(t, err)
	accepted := u.Stats().Conns
	require.Zero(t, accepted)
}
