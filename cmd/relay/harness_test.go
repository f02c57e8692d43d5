package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/dnstest"
)

// The test keys shipped for config.example.toml.
var (
	keyDefault    = abs("../../testdata/keys/default.pem")
	keyExampleEd  = abs("../../testdata/keys/example.com.ed25519.pem")
	keyExampleRSA = abs("../../testdata/keys/example.com.rsa.pem")
)

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

// sinkMsg is one message the upstream sink accepted.
type sinkMsg struct {
	From string
	To   []string
	Data []byte
}

// sink is a real go-smtp server on loopback standing in for the upstream smarthost.
type sink struct {
	Addr string
	mu   sync.Mutex
	msgs []sinkMsg
	// reject, when set, answers RCPT for that address with the error.
	reject map[string]*smtp.SMTPError
	// failAll, when set, answers every MAIL with it.
	failAll *smtp.SMTPError
	got     chan struct{}
}

func newSink(t *testing.T) *sink {
	t.Helper()
	s := &sink{reject: map[string]*smtp.SMTPError{}, got: make(chan struct{}, 10000)}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s}, nil
	}))
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true
	srv.MaxMessageBytes = 64 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.Addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *sink) setFailAll(e *smtp.SMTPError) { s.mu.Lock(); s.failAll = e; s.mu.Unlock() }

func (s *sink) messages() []sinkMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkMsg(nil), s.msgs...)
}

// wait returns once n messages have arrived, failing the test after a generous bound.
func (s *sink) wait(t *testing.T, n int) []sinkMsg {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if m := s.messages(); len(m) >= n {
			return m
		}
		select {
		case <-s.got:
		case <-deadline:
			t.Fatalf("sink has %d messages, want %d", len(s.messages()), n)
		}
	}
}

type sinkSession struct {
	s    *sink
	from string
	to   []string
}

func (ss *sinkSession) AuthMechanisms() []string { return nil }
func (ss *sinkSession) Reset()                   { ss.from, ss.to = "", nil }
func (ss *sinkSession) Logout() error            { return nil }
func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if ss.s.failAll != nil {
		return ss.s.failAll
	}
	ss.from = from
	return nil
}
func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if e := ss.s.reject[to]; e != nil {
		return e
	}
	ss.to = append(ss.to, to)
	return nil
}
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, sinkMsg{From: ss.from, To: ss.to, Data: b})
	ss.s.mu.Unlock()
	ss.s.got <- struct{}{}
	return nil
}

// zone is the DNS the tests' relay and DKIM verifier see: the relay's keys, an SPF record
// that authorizes the relay's sending IP, and a domain that delegates DKIM to the relay.
func zone(t *testing.T) string {
	t.Helper()
	rec := func(name, path string) string {
		k, err := dkimkey.Load(path)
		require.NoError(t, err)
		r, err := dkimkey.Record(k.Public())
		require.NoError(t, err)
		return fmt.Sprintf("%s 300 IN TXT %s\n", name, txtStrings(r))
	}
	return rec("default._domainkey.example.net.", keyDefault) +
		rec("s2026._domainkey.example.com.", keyExampleEd) +
		rec("s2026r._domainkey.example.com.", keyExampleRSA) +
		"spf-ok.example. 300 IN TXT \"v=spf1 ip4:203.0.113.10 -all\"\n" +
		"softfail.example. 300 IN TXT \"v=spf1 ~all\"\n" +
		"default._domainkey.delegated.example. 300 IN CNAME default._domainkey.example.net.\n"
}

func txtStrings(s string) string {
	var parts []string
	for len(s) > 200 {
		parts = append(parts, `"`+s[:200]+`"`)
		s = s[200:]
	}
	return strings.Join(append(parts, `"`+s+`"`), " ")
}

// baseConfig is the relay configuration the end-to-end tests start from; %s are the
// upstream address, the DNS server and the queue mode.
const baseConfig = `
hostname = "relay.test"
[smtp]
listen = "127.0.0.1:0"
max_message_bytes = 200000
max_recipients = 5
[[users]]
name = "crm"
password_hash = "$2a$04$YiCXWcuvbVHT7UE6MfjNjOFr/lPEgokdSIA8njNclTMXc1z1MndZC"
unit = "sales"
[sender]
allowed_domains = ["example.com", "*.example.com"]
fallback = "noreply@example.net"
display_name = "{name} via Example"
[[units]]
name = "sales"
fallback = "sales@example.com"
allowed_domains = ["partner.example"]
[[units]]
name = "support"
fallback = "help@example.net"
[spf]
enabled = true
sending_ips = ["203.0.113.10"]
timeout = "2s"
[dns]
servers = ["%[2]s"]
timeout = "500ms"
[dkim]
selector = "default"
private_key = "%[4]s"
domain = "example.net"
[[dkim.keys]]
domain = "example.com"
selector = "s2026"
private_key = "%[5]s"
[[dkim.keys]]
domain = "example.com"
selector = "s2026r"
private_key = "%[6]s"
[upstream]
address = "%[1]s"
tls = "none"
max_connections = 4
timeout = "10s"
[queue]
mode = "%[3]s"
dir = "%[7]s"
retry_min = "50ms"
retry_max = "200ms"
`

type relayEnv struct {
	t    *testing.T
	sink *sink
	dns  *dnstest.Server
	srv  *server
	cfg  *config.Config
	addr string
	path string
}

// startRelay writes a configuration (baseConfig plus extra TOML appended, which may
// override [smtp] keys only by replacing them through edit), starts the relay in this
// process and returns its address.
func startRelay(t *testing.T, mode string, edit func(string) string) *relayEnv {
	t.Helper()
	e := &relayEnv{t: t, sink: newSink(t), dns: dnstest.New(t, zone(t))}
	dir := t.TempDir()
	qmode := mode
	if mode == "dry-run" {
		qmode = "direct"
	}
	text := fmt.Sprintf(baseConfig, e.sink.Addr, e.dns.Addr, qmode, keyDefault, keyExampleEd, keyExampleRSA, filepath.Join(dir, "spool"))
	if edit != nil {
		text = edit(text)
	}
	e.path = filepath.Join(dir, "relay.toml")
	require.NoError(t, os.WriteFile(e.path, []byte(text), 0o600))
	cfg, err := config.Load(e.path)
	require.NoError(t, err)
	e.cfg = cfg
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	e.srv, err = start(cfg, mode == "dry-run", log)
	require.NoError(t, err)
	e.addr = e.srv.addrs()[0]
	t.Cleanup(func() { e.srv.stop(5 * time.Second) })
	return e
}

// send submits one message over a fresh SMTP session and returns the DATA reply (or the
// first error reply).
func (e *relayEnv) send(from string, to []string, msg string) (*smtp.SMTPError, error) {
	c, err := smtp.Dial(e.addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		return nil, err
	}
	return sendOn(c, from, to, msg)
}

func sendOn(c *smtp.Client, from string, to []string, msg string) (*smtp.SMTPError, error) {
	if err := c.Mail(from, nil); err != nil {
		return asSMTP(err)
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return asSMTP(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return asSMTP(err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return nil, err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return asSMTP(err)
	}
	// A 250 is not an error, but tests compare replies alike: the enhanced code leads the text.
	text := resp.StatusText
	enh := smtp.EnhancedCode{}
	if rest, ok := strings.CutPrefix(text, "2.0.0 "); ok {
		text, enh = rest, smtp.EnhancedCode{2, 0, 0}
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: enh, Message: text}, nil
}

func asSMTP(err error) (*smtp.SMTPError, error) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se, nil
	}
	return nil, err
}

// verifyDKIM checks every signature of msg against the test DNS and returns the d= of
// each valid one; any invalid signature fails the test.
func (e *relayEnv) verifyDKIM(msg []byte) []string {
	e.t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: e.lookupTXT})
	require.NoError(e.t, err)
	require.NotEmpty(e.t, vs, "message carries no DKIM signature")
	var ds []string
	for _, v := range vs {
		require.NoError(e.t, v.Err, "signature d=%s", v.Domain)
		ds = append(ds, v.Domain)
	}
	return ds
}

func (e *relayEnv) lookupTXT(name string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	r, _, err := c.ExchangeContext(context.Background(), m, e.dns.Addr)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(txt.Txt, ""))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no TXT at %s", name)
	}
	return out, nil
}

// header returns the unfolded values of the named field in msg's header block.
func header(msg []byte, name string) []string {
	head, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	var out []string
	lines := strings.Split(string(head), "\r\n")
	for i := 0; i < len(lines); i++ {
		k, v, ok := strings.Cut(lines[i], ":")
		if !ok || !strings.EqualFold(k, name) {
			continue
		}
		for i+1 < len(lines) && len(lines[i+1]) > 0 && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			v += " " + strings.TrimSpace(lines[i])
		}
		out = append(out, strings.TrimSpace(v))
	}
	return out
}

func body(msg []byte) []byte {
	_, b, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	return b
}
