package smtpd

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/stretchr/testify/require"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestAuth(t *testing.T) {
	tests := []struct {
		name   string
		client sasl.Client
		ok     bool
	}{
		{name: "PLAIN", client: sasl.NewPlainClient("", "crm", testPassword), ok: true},
		{name: "PLAIN with identity = user", client: sasl.NewPlainClient("crm", "crm", testPassword), ok: true},
		{name: "PLAIN wrong password", client: sasl.NewPlainClient("", "crm", "guess")},
		{name: "PLAIN unknown user", client: sasl.NewPlainClient("", "nobody", testPassword)},
		{name: "PLAIN acting as someone else", client: sasl.NewPlainClient("admin", "crm", testPassword)},
		{name: "PLAIN user name case matters", client: sasl.NewPlainClient("", "CRM", testPassword)},
		{name: "LOGIN", client: sasl.NewLoginClient("crm", testPassword), ok: true},
		{name: "LOGIN wrong password", client: sasl.NewLoginClient("crm", testPassword+"x")},
		{name: "LOGIN unknown user", client: sasl.NewLoginClient("nobody", "x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.SMTP.Networks = nil
			f := start(t, cfg)
			c := dial(t, f.addr)
			err := c.Auth(tt.client)
			if !tt.ok {
				code, enh := smtpCode(t, err)
				require.Equal(t, 535, code)
				require.Equal(t, [3]int{5, 7, 8}, [3]int(enh))
				require.Equal(t, []int{1}, *f.delays)
				return
			}
			require.NoError(t, err)
			_, err = sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
			require.NoError(t, err)
			require.Equal(t, "crm", f.h.all()[0].User)
			require.Empty(t, *f.delays)
		})
	}
}

// TestAuthLoginPrompts checks the wire form of AUTH LOGIN, which no RFC fixes: base64
// "Username:" and "Password:" prompts, with or without the user name as initial response.
func TestAuthLoginPrompts(t *testing.T) {
	f := start(t, testConfig())
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	require.Equal(t, b64("Username:"), r.cmd("AUTH LOGIN", 334, ""))
	require.Equal(t, b64("Password:"), r.cmd(b64("crm"), 334, ""))
	r.cmd(b64(testPassword), 235, "2.0.0")

	r = dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	require.Equal(t, b64("Password:"), r.cmd("AUTH LOGIN "+b64("crm"), 334, ""))
	r.cmd(b64(testPassword), 235, "2.0.0")
	r.cmd("AUTH LOGIN", 503, "5.5.1") // once is enough
}

func TestAuthProtocolErrors(t *testing.T) {
	f := start(t, testConfig())
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd("AUTH PLAIN "+b64("no nuls here"), 501, "5.5.2")
	r.cmd("AUTH PLAIN not-base64!", 454, "4.7.0")
	r.cmd("AUTH CRAM-MD5", 504, "5.7.4")
	r.cmd("AUTH PLAIN", 334, "")
	r.cmd("*", 501, "5.0.0") // RFC 4954 §4: the client cancels
	require.Empty(t, *f.delays, "malformed exchanges are not guesses")
	r.cmd("AUTH PLAIN "+b64("\x00crm\x00"+testPassword), 235, "2.0.0")
}

func TestAuthNeedsTLSOffLoopback(t *testing.T) {
	cfg := testConfig()
	cfg.SMTP.Networks = nil
	f := start(t, cfg, notLoopback)
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd("AUTH PLAIN "+b64("\x00crm\x00"+testPassword), 538, "5.7.11")
	r.cmd("MAIL FROM:<a@example.com>", 530, "5.7.0")

	cfg = testConfig()
	cfg.SMTP.Networks = nil
	cfg.SMTP.AllowInsecureAuth = true
	f = start(t, cfg, notLoopback)
	r = dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd("AUTH PLAIN "+b64("\x00crm\x00"+testPassword), 235, "2.0.0")
	r.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
}

func TestAuthFailuresSlowAndDisconnect(t *testing.T) {
	f := start(t, testConfig())
	wrong := "AUTH PLAIN " + b64("\x00crm\x00wrong")

	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd(wrong, 535, "5.7.8")
	r.cmd(wrong, 535, "5.7.8")
	// The third failure ends the connection; a command pipelined behind it is refused.
	r.write(wrong + "\r\nMAIL FROM:<a@example.com>\r\n")
	r.expect(421, "4.7.0")
	r.expect(421, "4.7.0")
	r.closed()
	require.Equal(t, []int{1, 2, 3}, *f.delays, "each failure waits longer")

	// Reconnecting does not reset the count: one more failure and it is out again.
	r = dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd(wrong, 421, "4.7.0")
	r.closed()
	require.Equal(t, []int{1, 2, 3, 4}, *f.delays)

	// The right password still works: the client is slowed, not locked out.
	r = dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd("AUTH PLAIN "+b64("\x00crm\x00"+testPassword), 235, "2.0.0")
}

func TestAuthFailuresExpire(t *testing.T) {
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := start(t, testConfig(), func(s *Server) { s.now = func() time.Time { return clock } })
	wrong := "AUTH PLAIN " + b64("\x00crm\x00wrong")
	for range 2 {
		r := dialRaw(t, f.addr)
		r.cmd("EHLO client.test", 250, "")
		r.cmd(wrong, 535, "5.7.8")
	}
	clock = clock.Add(failWindow + time.Second)
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd(wrong, 535, "5.7.8")
	require.Equal(t, []int{1, 2, 1}, *f.delays)
}

func TestDefaultAuthDelay(t *testing.T) {
	want := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 16 * time.Second}
	for n, d := range want {
		require.Equal(t, d, defaultAuthDelay(n), "failures=%d", n)
	}
}

// syncBuffer is a log sink that the server's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestAuthFailureLog(t *testing.T) {
	var logs syncBuffer
	f := start(t, testConfig(), func(s *Server) { s.log = slog.New(slog.NewTextHandler(&logs, nil)) })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd("AUTH PLAIN "+b64("\x00crm\x00hunter2-secret"), 535, "5.7.8")
	r.cmd("QUIT", 221, "")
	r.closed()

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.Len(t, lines, 1, "one line per event: %s", logs.String())
	require.Contains(t, lines[0], `msg="smtp auth failed"`)
	require.Contains(t, lines[0], "client=127.0.0.1")
	require.Contains(t, lines[0], "login=crm")
	require.Contains(t, lines[0], "failures=1")
	require.NotContains(t, logs.String(), "hunter2", "no password in the log")
}
