package smtpd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"relay/internal/config"
	"relay/internal/queueid"
)

// recorder is the test Handler: it keeps a copy of every message and answers with
// reply/err, by default "Ok: queued as ID" with an ID of its own (the pipeline makes the
// real ones).
type recorder struct {
	mu    sync.Mutex
	msgs  []recorded
	reply string
	err   error
}

type recorded struct {
	Inbound
	ID string
}

func (r *recorder) Handle(ctx context.Context, m *Inbound) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := recorded{Inbound: *m, ID: queueid.New(time.Now())}
	c.Data = bytes.Clone(m.Data)
	c.To = append([]string(nil), m.To...)
	r.msgs = append(r.msgs, c)
	if r.reply == "" && r.err == nil {
		return "Ok: queued as " + c.ID, nil
	}
	return r.reply, r.err
}

func (r *recorder) set(reply string, err error) {
	r.mu.Lock()
	r.reply, r.err = reply, err
	r.mu.Unlock()
}

func (r *recorder) all() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.msgs...)
}

const testPassword = "s3cret pass"

// testHash is a bcrypt hash of testPassword at the minimum cost, so tests stay fast.
var testHash = sync.OnceValue(func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
})

// testConfig is a Config as config.Load would leave it: loopback may send without AUTH, one
// user "crm" in unit "sales".
func testConfig() *config.Config {
	c := config.Defaults()
	c.Hostname = "relay.test"
	c.SMTP.MaxMessageBytes = 64 << 10
	c.SMTP.MaxRecipients = 3
	c.SMTP.Timeout = config.Duration{Duration: time.Minute}
	c.SMTP.Networks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	c.Users = []config.User{{Name: "crm", PasswordHash: testHash(), Unit: "sales"}}
	return c
}

type fixture struct {
	srv     *Server
	h       *recorder
	addr    string // plain SMTP
	tlsAddr string // implicit TLS, when the config has a certificate
	client  *tls.Config
	delays  *[]int // failures counts passed to authDelay
}

type option func(*Server)

// notLoopback makes the server treat 127.0.0.1 as a remote client.
func notLoopback(s *Server) { s.isLoopback = func(netip.Addr) bool { return false } }

// start runs a server for cfg on 127.0.0.1:0 (and a second, implicit-TLS listener when cfg
// has a certificate), stopped at the end of the test.
func start(t testing.TB, cfg *config.Config, opts ...option) *fixture {
	t.Helper()
	f := &fixture{h: &recorder{}, delays: new([]int)}
	srv, err := New(cfg, f.h, nil)
	require.NoError(t, err)
	var mu sync.Mutex
	srv.authDelay = func(n int) time.Duration {
		mu.Lock()
		*f.delays = append(*f.delays, n)
		mu.Unlock()
		return 0
	}
	for _, o := range opts {
		o(srv)
	}
	f.srv = srv

	var wg sync.WaitGroup
	serve := func(tlsOn bool) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if tlsOn {
				err = srv.ServeTLS(ln)
			} else {
				err = srv.Serve(ln)
			}
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		}()
		return ln.Addr().String()
	}
	f.addr = serve(false)
	if cfg.SMTP.TLSCert != "" {
		f.tlsAddr = serve(true)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil && err != ErrServerClosed {
			t.Errorf("shutdown: %v", err)
		}
		wg.Wait()
	})
	return f
}

// withCert adds a self-signed certificate for "localhost" to cfg and returns a client TLS
// config that trusts it.
func withCert(t testing.TB, cfg *config.Config) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600))
	// As config.Load leaves them: the paths resolved, the pair loaded.
	cfg.SMTP.TLSCert, cfg.SMTP.TLSKey = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pair, err := tls.LoadX509KeyPair(cfg.SMTP.TLSCert, cfg.SMTP.TLSKey)
	require.NoError(t, err)
	cfg.SMTP.Certificate = &pair
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{RootCAs: pool, ServerName: "localhost"}
}

// raw is a client that writes exactly the bytes a test gives it.
type raw struct {
	t    testing.TB
	conn net.Conn
	tp   *textproto.Conn
}

func dialRaw(t testing.TB, addr string) *raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	return newRaw(t, c)
}

func newRaw(t testing.TB, c net.Conn) *raw {
	t.Helper()
	r := newRawNoGreeting(t, c)
	r.expect(220, "")
	return r
}

// dialRawNoGreeting connects without reading the greeting.
func dialRawNoGreeting(t testing.TB, addr string) *raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	return newRawNoGreeting(t, c)
}

func newRawNoGreeting(t testing.TB, c net.Conn) *raw {
	// A guard against a hung test, not a measurement.
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &raw{t: t, conn: c, tp: textproto.NewConn(c)}
}

// send writes s as it is plus CRLF.
func (r *raw) send(s string) {
	r.t.Helper()
	_, err := r.conn.Write([]byte(s + "\r\n"))
	require.NoError(r.t, err)
}

// write writes s as it is.
func (r *raw) write(s string) {
	r.t.Helper()
	_, err := r.conn.Write([]byte(s))
	require.NoError(r.t, err)
}

// read returns the next reply: its code and its text (multi-line text joined by "\n").
func (r *raw) read() (int, string) {
	r.t.Helper()
	code, msg, err := r.tp.ReadResponse(0)
	require.NoError(r.t, err)
	return code, msg
}

// expect reads a reply and checks its code and that its text starts with prefix (an
// enhanced code, typically).
func (r *raw) expect(code int, prefix string) string {
	r.t.Helper()
	got, msg := r.read()
	require.Equal(r.t, code, got, "reply %d %s", got, msg)
	require.True(r.t, strings.HasPrefix(msg, prefix), "reply %d %q, want prefix %q", got, msg, prefix)
	return msg
}

func (r *raw) cmd(line string, code int, prefix string) string {
	r.t.Helper()
	r.send(line)
	return r.expect(code, prefix)
}

// closed checks that the server has closed the connection.
func (r *raw) closed() {
	r.t.Helper()
	_, err := r.tp.ReadLine()
	require.Error(r.t, err, "connection still open")
}

// envelope runs EHLO, MAIL and RCPT for a plain message from a@example.com to b@example.net.
func (r *raw) envelope() {
	r.t.Helper()
	r.cmd("EHLO client.test", 250, "")
	r.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
	r.cmd("RCPT TO:<b@example.net>", 250, "2.0.0")
}

// dial returns a go-smtp client that has said EHLO.
func dial(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.Hello("client.test"))
	return c
}

// sendMail sends one message over c and returns the DATA reply text.
func sendMail(t testing.TB, c *smtp.Client, from string, to []string, body string) (string, error) {
	t.Helper()
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

const testBody = "From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"

// smtpCode returns the code and enhanced code of an *smtp.SMTPError.
func smtpCode(t testing.TB, err error) (int, smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	require.ErrorAs(t, err, &se)
	return se.Code, se.EnhancedCode
}
