package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
)

func TestEHLOExtensions(t *testing.T) {
	tests := []struct {
		name     string
		cert     bool
		remote   bool // the client is not on loopback
		insecure bool // allow_insecure_auth
		noUsers  bool
		how      string // "plain", "starttls", "implicit"
		wantTLS  bool   // STARTTLS advertised
		wantAuth bool
	}{
		{name: "loopback without certificate", how: "plain", wantAuth: true},
		{name: "remote without TLS", remote: true, how: "plain"},
		{name: "remote with allow_insecure_auth", remote: true, insecure: true, how: "plain", wantAuth: true},
		{name: "remote, certificate, before STARTTLS", cert: true, remote: true, how: "plain", wantTLS: true},
		{name: "remote after STARTTLS", cert: true, remote: true, how: "starttls", wantAuth: true},
		{name: "remote over implicit TLS", cert: true, remote: true, how: "implicit", wantAuth: true},
		{name: "no users: no AUTH even on loopback", noUsers: true, how: "plain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.SMTP.AllowInsecureAuth = tt.insecure
			if tt.noUsers {
				cfg.Users = nil
			}
			var clientTLS *tls.Config
			if tt.cert {
				clientTLS = withCert(t, cfg)
			}
			var opts []option
			if tt.remote {
				opts = append(opts, notLoopback)
			}
			f := start(t, cfg, opts...)

			var c *smtp.Client
			var err error
			switch tt.how {
			case "plain":
				c, err = smtp.Dial(f.addr)
			case "starttls":
				c, err = smtp.DialStartTLS(f.addr, clientTLS)
			case "implicit":
				c, err = smtp.DialTLS(f.tlsAddr, clientTLS)
			}
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.Hello("client.test"))

			for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"} {
				ok, _ := c.Extension(ext)
				require.True(t, ok, ext)
			}
			ok, size := c.Extension("SIZE")
			require.True(t, ok)
			require.Equal(t, "65536", size)
			ok, _ = c.Extension("STARTTLS")
			require.Equal(t, tt.wantTLS, ok, "STARTTLS")
			ok, mechs := c.Extension("AUTH")
			require.Equal(t, tt.wantAuth, ok, "AUTH")
			if tt.wantAuth {
				require.Equal(t, "PLAIN LOGIN", mechs)
			}
		})
	}
}

func TestNotAnOpenRelay(t *testing.T) {
	cfg := testConfig()
	cfg.SMTP.Networks = nil // AUTH always required
	f := start(t, cfg)
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd("MAIL FROM:<a@example.com>", 530, "5.7.0 Authentication required")
	r.cmd("MAIL FROM:<>", 530, "5.7.0")
	r.cmd("RCPT TO:<b@example.net>", 502, "5.5.1") // no transaction was opened

	// The same client, authenticated, may send.
	c := dial(t, f.addr)
	require.NoError(t, c.Auth(sasl.NewPlainClient("", "crm", testPassword)))
	_, err := sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
	require.NoError(t, err)
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, "crm", msgs[0].User)
	require.Equal(t, "sales", msgs[0].UserUnit)
	require.False(t, msgs[0].NetworkAllowed)
}

// TestReplies runs one raw conversation per reply the front end gives on its own.
func TestReplies(t *testing.T) {
	type step struct {
		send   string // "" reads without sending
		code   int
		prefix string
	}
	big := strings.Repeat("x", 998) + "\r\n"
	tests := []struct {
		name  string
		steps []step
		msgs  int
	}{
		{name: "NUL in MAIL FROM", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<a\x00b@example.com>", 501, "5.1.7"},
			{"MAIL FROM:<ab@exa\x00mple.com>", 501, "5.1.7"},
		}},
		{name: "control characters in RCPT TO", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<a@example.com>", 250, "2.0.0"},
			{"RCPT TO:<b\x01@example.net>", 501, "5.1.3"},
			{"RCPT TO:<b@example.net\r>", 501, "5.1.3"},
			{"RCPT TO:<b@exa\x7fmple.net>", 501, "5.1.3"},
		}},
		{name: "quoted local part", steps: []step{
			{"EHLO c.test", 250, ""},
			{`MAIL FROM:<"a b"@example.com>`, 501, "5.1.7"},
		}},
		{name: "NUL in EHLO", steps: []step{
			{"EHLO c\x00.test", 501, "5.5.2"},
		}},
		{name: "NUL in a repeated EHLO", steps: []step{
			{"EHLO c.test", 250, ""},
			{"EHLO c\x00.test", 250, ""}, // go-smtp keeps the session; the name is checked at MAIL
			{"MAIL FROM:<a@example.com>", 501, "5.5.2"},
		}},
		{name: "malformed MAIL", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:a", 501, "5.5.2"},
			{"MAIL TO:<a@example.com>", 501, "5.5.2"},
		}},
		{name: "nested MAIL", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<a@example.com>", 250, "2.0.0"},
			{"MAIL FROM:<c@example.com>", 503, "5.5.1"},
		}},
		{name: "SIZE over the limit", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<a@example.com> SIZE=65537", 552, "5.3.4"},
			{"MAIL FROM:<a@example.com> SIZE=65000", 250, "2.0.0"},
		}},
		{name: "too many recipients", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<a@example.com>", 250, "2.0.0"},
			{"RCPT TO:<b1@example.net>", 250, "2.0.0"},
			{"RCPT TO:<b2@example.net>", 250, "2.0.0"},
			{"RCPT TO:<b3@example.net>", 250, "2.0.0"},
			{"RCPT TO:<b4@example.net>", 452, "4.5.3"},
			{"DATA", 354, ""},
			{"Subject: x\r\n\r\nbody\r\n.", 250, "2.0.0"},
		}, msgs: 1},
		{name: "message too large", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<a@example.com>", 250, "2.0.0"},
			{"RCPT TO:<b@example.net>", 250, "2.0.0"},
			{"DATA", 354, ""},
			{strings.Repeat(big, 70) + ".", 552, "5.3.4"},
			{"NOOP", 250, "2.0.0"}, // the connection goes on
		}},
		{name: "DATA without recipients", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<a@example.com>", 250, "2.0.0"},
			{"DATA", 502, "5.5.1"},
		}},
		{name: "AUTH during a transaction", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<a@example.com>", 250, "2.0.0"},
			{"AUTH PLAIN AGNybQBzM2NyZXQgcGFzcw==", 503, "5.5.1"},
		}},
		{name: "null sender and RSET", steps: []step{
			{"EHLO c.test", 250, ""},
			{"MAIL FROM:<>", 250, "2.0.0"},
			{"RSET", 250, "2.0.0"},
			{"MAIL FROM:<a@example.com>", 250, "2.0.0"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, testConfig())
			r := dialRaw(t, f.addr)
			for _, s := range tt.steps {
				r.cmd(s.send, s.code, s.prefix)
			}
			require.Len(t, f.h.all(), tt.msgs)
		})
	}
}

type replyError struct {
	code int
	enh  [3]int
	msg  string
}

func (e *replyError) Error() string                    { return "policy says no" }
func (e *replyError) SMTPReply() (int, [3]int, string) { return e.code, e.enh, e.msg }

func TestHandlerReplies(t *testing.T) {
	tests := []struct {
		name  string
		reply string
		err   error
		code  int
		text  string // the reply text after the code, enhanced code included
	}{
		{name: "queued", reply: "Ok: queued as 0123", code: 250, text: "2.0.0 Ok: queued as 0123"},
		{name: "dry run", reply: "dry run: would send as <sales@example.com> (fallback-unit)", code: 250,
			text: "2.0.0 dry run: would send as <sales@example.com> (fallback-unit)"},
		{name: "reply with a newline stays one line", reply: "Ok\r\nMAIL FROM:<x@y>", code: 250, text: "2.0.0 Ok  MAIL FROM:<x@y>"},
		{name: "plain error is an internal fault", err: errors.New("spool: disk full"), code: 451, text: "4.3.0 Temporary internal error"},
		{name: "context error", err: fmt.Errorf("spf: %w", context.DeadlineExceeded), code: 451, text: "4.3.0"},
		{name: "SMTPReply error, wrapped", err: fmt.Errorf("pipeline: %w", &replyError{550, [3]int{5, 7, 1}, `unknown business unit "marketing"`}),
			code: 550, text: `5.7.1 unknown business unit "marketing"`},
		{name: "SMTPReply deferral", err: &replyError{451, [3]int{4, 7, 0}, "SPF temporary error, try later"}, code: 451, text: "4.7.0 SPF temporary"},
		{name: "SMTPReply with a 2xx is an internal fault", err: &replyError{250, [3]int{2, 0, 0}, "fine"}, code: 451, text: "4.3.0"},
		{name: "SMTPReply with a mismatched enhanced code", err: &replyError{550, [3]int{4, 1, 1}, "no"}, code: 550, text: "5.0.0 no"},
		{name: "smtp.SMTPError as it is", err: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "two From headers"},
			code: 550, text: "5.6.0 two From headers"},
		{name: "smtp.SMTPError wrapped", err: fmt.Errorf("x: %w", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "spool full"}),
			code: 452, text: "4.3.1 spool full"},
	}
	f := start(t, testConfig())
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.h.set(tt.reply, tt.err)
			r.t = t
			r.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
			r.cmd("RCPT TO:<b@example.net>", 250, "2.0.0")
			r.cmd("DATA", 354, "")
			r.cmd(testBody+".", tt.code, tt.text)
		})
	}
}

func TestQueuedReplyAndInbound(t *testing.T) {
	f := start(t, testConfig())
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	// One write with two whole transactions: PIPELINING (RFC 2920) puts every reply in order.
	r.write("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n" +
		testBody + ".\r\n" +
		"MAIL FROM:<>\r\nRCPT TO:<d@example.net>\r\nDATA\r\nSubject: 2\r\n\r\n..dot-stuffed\r\n.\r\nQUIT\r\n")
	r.expect(250, "2.0.0")
	r.expect(250, "2.0.0")
	r.expect(250, "2.0.0")
	r.expect(354, "")
	first := r.expect(250, "2.0.0 Ok: queued as ")
	r.expect(250, "2.0.0")
	r.expect(250, "2.0.0")
	r.expect(354, "")
	second := r.expect(250, "2.0.0 Ok: queued as ")
	r.expect(221, "2.0.0")

	msgs := f.h.all()
	require.Len(t, msgs, 2)
	m := msgs[0]
	require.Equal(t, "2.0.0 Ok: queued as "+m.ID, first)
	require.Equal(t, "2.0.0 Ok: queued as "+msgs[1].ID, second)
	require.Len(t, m.ID, 16)
	require.NotEqual(t, m.ID, msgs[1].ID)
	require.Equal(t, netip.MustParseAddr("127.0.0.1"), m.ClientIP)
	require.Equal(t, "client.test", m.Helo)
	require.False(t, m.TLS)
	require.True(t, m.NetworkAllowed)
	require.Empty(t, m.User)
	require.Equal(t, "a@example.com", m.From)
	require.Equal(t, []string{"b@example.net", "c@example.net"}, m.To)
	require.Equal(t, testBody, string(m.Data))
	require.False(t, m.Received.IsZero())
	require.Equal(t, "", msgs[1].From)
	require.Equal(t, "Subject: 2\r\n\r\n.dot-stuffed\r\n", string(msgs[1].Data))
}

// TestSmuggling sends, inside one DATA, a sequence that some servers take for the end of the
// message, followed by a second transaction. The handler must see one message that holds
// the whole text, and the fake MAIL FROM must never run as a command.
func TestSmuggling(t *testing.T) {
	tests := []struct {
		name string
		seq  string
		kept string // what of seq the message keeps ("" means seq itself)
	}{
		{name: "LF . CRLF", seq: "\n.\r\n"},
		{name: "CR . LF", seq: "\r.\n"},
		{name: "LF . LF", seq: "\n.\n"},
		{name: "CR . CR", seq: "\r.\r"},
		{name: "bare LF before the dot", seq: "line\n.\r\nMAIL"},
		{name: "CRLF . LF", seq: "\r\n.\n", kept: "\r\n\n"},           // the dot at a line start is unstuffed
		{name: "CRLF . CR LF-less", seq: "\r\n.\rX", kept: "\r\n\rX"}, // the dot is unstuffed, the CR kept (patched go-smtp)
		{name: "CR CR LF . CR X", seq: "\r\r\n.\rX", kept: "\r\r\n\rX"},
		{name: "CR . CR LF", seq: "\r.\r\n"},
	}
	const smuggled = "MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, testConfig())
			r := dialRaw(t, f.addr)
			r.envelope()
			r.cmd("DATA", 354, "")
			r.write("Subject: hi\r\n\r\nhello" + tt.seq + smuggled + ".\r\nQUIT\r\n")
			r.expect(250, "2.0.0 Ok: queued as")
			r.expect(221, "")
			r.closed()

			msgs := f.h.all()
			require.Len(t, msgs, 1)
			kept := tt.seq
			if tt.kept != "" {
				kept = tt.kept
			}
			require.Equal(t, "Subject: hi\r\n\r\nhello"+kept+smuggled, string(msgs[0].Data))
			require.Equal(t, "a@example.com", msgs[0].From)
		})
	}
}

func TestContentKeepsControlCharacters(t *testing.T) {
	f := start(t, testConfig())
	r := dialRaw(t, f.addr)
	r.envelope()
	r.cmd("DATA", 354, "")
	body := "Subject: nul\r\n\r\na\x00b\x01c\x7f\xffd\r\n"
	r.cmd(body+".", 250, "2.0.0")
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, body, string(msgs[0].Data))
}

func TestBDAT(t *testing.T) {
	// go-smtp always offers CHUNKING; BDAT takes the same way through Data.
	f := start(t, testConfig())
	r := dialRaw(t, f.addr)
	r.envelope()
	r.write("BDAT 10\r\nSubject: x")
	r.expect(250, "2.0.0")
	r.write("BDAT 10 LAST\r\n\r\n\r\nbody\r\n")
	r.expect(250, "2.0.0 Ok: queued as ")
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, "Subject: x\r\n\r\nbody\r\n", string(msgs[0].Data))
}

func TestRateLimits(t *testing.T) {
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := func(s *Server) { s.now = func() time.Time { return clock } }

	t.Run("per network", func(t *testing.T) {
		cfg := testConfig()
		cfg.SMTP.NetworkLimit = config.Rate{N: 2, Per: time.Hour}
		f := start(t, cfg, now)
		r := dialRaw(t, f.addr)
		r.cmd("EHLO client.test", 250, "")
		for range 2 {
			r.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
			r.cmd("RSET", 250, "")
		}
		r.cmd("MAIL FROM:<a@example.com>", 451, "4.7.1")
		// Another connection from the same /24 shares the bucket.
		r2 := dialRaw(t, f.addr)
		r2.cmd("EHLO client.test", 250, "")
		r2.cmd("MAIL FROM:<a@example.com>", 451, "4.7.1")
		// Half an hour refills one message.
		clock = clock.Add(30 * time.Minute)
		r2.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
		r2.cmd("RSET", 250, "")
		r2.cmd("MAIL FROM:<a@example.com>", 451, "4.7.1")
	})

	t.Run("per user", func(t *testing.T) {
		cfg := testConfig()
		cfg.Users[0].Limit = config.Rate{N: 1, Per: time.Minute}
		f := start(t, cfg, now)
		c := dial(t, f.addr)
		require.NoError(t, c.Auth(sasl.NewPlainClient("", "crm", testPassword)))
		_, err := sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
		require.NoError(t, err)
		_, err = sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
		code, enh := smtpCode(t, err)
		require.Equal(t, 451, code)
		require.Equal(t, smtp.EnhancedCode{4, 7, 1}, enh)
		// Without AUTH the same client is only network-limited (none here).
		r := dialRaw(t, f.addr)
		r.cmd("EHLO client.test", 250, "")
		r.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
	})
}

func TestNetworkKey(t *testing.T) {
	for _, tt := range []struct{ ip, want string }{
		{"192.0.2.77", "192.0.2.0/24"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
	} {
		require.Equal(t, netip.MustParsePrefix(tt.want), networkKey(netip.MustParseAddr(tt.ip)), tt.ip)
	}
}

func TestSTARTTLSMessage(t *testing.T) {
	cfg := testConfig()
	cfg.SMTP.Networks = nil
	clientTLS := withCert(t, cfg)
	f := start(t, cfg, notLoopback)

	for _, how := range []string{"starttls", "implicit"} {
		t.Run(how, func(t *testing.T) {
			var c *smtp.Client
			var err error
			if how == "starttls" {
				c, err = smtp.DialStartTLS(f.addr, clientTLS)
			} else {
				c, err = smtp.DialTLS(f.tlsAddr, clientTLS)
			}
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.Auth(sasl.NewLoginClient("crm", testPassword)))
			_, err = sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
			require.NoError(t, err)
		})
	}
	msgs := f.h.all()
	require.Len(t, msgs, 2)
	for _, m := range msgs {
		require.True(t, m.TLS)
		require.Equal(t, "crm", m.User)
	}
}

func TestServeTLSNeedsCertificate(t *testing.T) {
	srv, err := New(testConfig(), &recorder{}, nil)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	require.ErrorContains(t, srv.ServeTLS(ln), "tls_cert")
}

func TestSetConfig(t *testing.T) {
	cfg := testConfig()
	f := start(t, cfg)
	before := dial(t, f.addr)

	next := testConfig()
	next.SMTP.MaxMessageBytes = 1000
	next.Users = nil
	require.NoError(t, f.srv.SetConfig(next))

	// The open connection keeps its protocol limits (its size limit), but not the users
	// the reload removed (TestReloadRevokesUser).
	code, _ := smtpCode(t, before.Auth(sasl.NewPlainClient("", "crm", testPassword)))
	require.Equal(t, 535, code)
	_, err := sendMail(t, before, "a@example.com", []string{"b@example.net"}, testBody+strings.Repeat(strings.Repeat("x", 98)+"\r\n", 20))
	require.NoError(t, err)

	after := dial(t, f.addr)
	_, size := after.Extension("SIZE")
	require.Equal(t, "1000", size)
	ok, _ := after.Extension("AUTH")
	require.False(t, ok, "no users, no AUTH")
	_, err = sendMail(t, after, "a@example.com", []string{"b@example.net"}, testBody+strings.Repeat(strings.Repeat("x", 98)+"\r\n", 20))
	code, _ = smtpCode(t, err)
	require.Equal(t, 552, code)

	// A bad configuration changes nothing.
	bad := testConfig()
	bad.Users[0].PasswordHash = "plain text"
	require.ErrorContains(t, f.srv.SetConfig(bad), "password_hash")
	again := dial(t, f.addr)
	_, size = again.Extension("SIZE")
	require.Equal(t, "1000", size)
}

func TestSetConfigKeepsCertificateForImplicitTLS(t *testing.T) {
	cfg := testConfig()
	clientTLS := withCert(t, cfg)
	f := start(t, cfg)
	// Once a TLS client is served, the ServeTLS loop is running.
	c, err := smtp.DialTLS(f.tlsAddr, clientTLS)
	require.NoError(t, err)
	require.NoError(t, c.Hello("client.test"))
	c.Close()
	require.ErrorContains(t, f.srv.SetConfig(testConfig()), "implicit TLS")
}

func TestShutdown(t *testing.T) {
	f := start(t, testConfig())
	idle := dialRaw(t, f.addr)
	idle.cmd("EHLO client.test", 250, "")
	busy := dialRaw(t, f.addr)
	busy.envelope()

	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(context.Background()) }()

	// The idle client is told and dropped; the one in a transaction may finish it.
	idle.expect(421, "4.4.2")
	idle.closed()
	busy.cmd("DATA", 354, "")
	busy.cmd(testBody+".", 250, "2.0.0")
	busy.expect(421, "4.4.2")
	busy.closed()
	require.NoError(t, <-done)
	require.Len(t, f.h.all(), 1)

	_, err := net.Dial("tcp", f.addr)
	require.Error(t, err, "listener closed")
	require.ErrorIs(t, f.srv.Shutdown(context.Background()), ErrServerClosed)
}

func TestShutdownDeadline(t *testing.T) {
	f := start(t, testConfig())
	busy := dialRaw(t, f.addr)
	busy.envelope()
	busy.cmd("DATA", 354, "")
	busy.write("Subject: never finished\r\n")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, f.srv.Shutdown(ctx), context.Canceled)
	busy.closed()
	require.Empty(t, f.h.all())
}

func TestToSMTP(t *testing.T) {
	require.Nil(t, toSMTP(nil))
	require.Same(t, errInternal, toSMTP(errors.New("x")))
	got := toSMTP(&replyError{554, [3]int{5, 7, 1}, "a\nb"})
	require.Equal(t, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "a b"}, got)
	require.Same(t, errInternal, toSMTP(&replyError{354, [3]int{}, "go ahead"}))
	require.Same(t, errInternal, toSMTP(&smtp.SMTPError{Code: 250}))
	// The *SMTPError is copied, never handed on with an unsafe text.
	got = toSMTP(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: ""})
	require.Equal(t, "Error", got.Message)
}

func TestValidAddress(t *testing.T) {
	for addr, want := range map[string]bool{
		"a@example.com":         true,
		"first.last+tag@ex.com": true,
		"用户@例子.广告":              true,
		"a@[192.0.2.1]":         true,
		"a@[IPv6:2001:db8::1]":  true,
		"a\x00@example.com":     false,
		"a@exa\tmple.com":       false,
		"a b@example.com":       false,
		`a"b@example.com`:       false,
		"a@b@example.com":       false,
		"@example.com":          false,
		"a@":                    false,
		"a@exa\xffmple.com":     false,
		"a@example.com\u0085":   false,
		"a@[192.0.2.1":          false,
		"noat":                  false,
	} {
		require.Equal(t, want, validAddress(addr), "%q", addr)
	}
}
