// Package smtptest runs a real SMTP server (go-smtp) on loopback that stands in for an
// upstream smarthost in tests: it keeps what it is sent, can refuse, stall or hang up
// when a test tells it to, offers AUTH, STARTTLS or implicit TLS when asked, counts
// connections and commands, and can restart on its address. It also has the small client
// helpers the tests share: sending one message and reading header fields of what arrived.
//
// It is the one SMTP server of the tests; the relay's own front end is internal/smtpd.
package smtptest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message the sink accepted.
type Message struct {
	From string
	To   []string
	Data []byte // nil under Discard
	Size int64  // the SIZE parameter of MAIL FROM, 0 when none
	UTF8 bool   // MAIL FROM carried SMTPUTF8
	User string // the AUTH user of the session, "" when none
	TLS  bool   // the session ran over TLS
}

// Auth is one AUTH command the sink received, successful or not.
type Auth struct {
	Mech string // as the client named it
	User string // the user name the client gave, "" when it gave none
	TLS  bool   // the session ran over TLS
	OK   bool   // the login succeeded
}

// Stats counts what the sink has seen since Start (across Restart).
type Stats struct {
	Conns    int // TCP connections accepted
	Open     int // connections open now
	MaxOpen  int // most connections open at once
	Mails    int // MAIL commands received, refused ones included
	Bodies   int // message bodies received, refused and dropped ones included
	Messages int // messages accepted (kept or discarded): Count
}

// Stage is a point of an SMTP transaction where Stall can hold a session.
type Stage string

const (
	StageMail Stage = "MAIL" // MAIL FROM received, before its reply
	StageRcpt Stage = "RCPT" // RCPT TO received, before its reply
	StageBody Stage = "BODY" // DATA accepted (354 sent), before the body is read: the client's writes stall once the socket buffers fill
	StageData Stage = "DATA" // the body read, before the reply to it
)

// ErrDrop, returned by an OnMail, OnRcpt or OnData hook, makes the sink close the
// connection instead of replying: an upstream that crashes or drops the line.
var ErrDrop = errors.New("smtptest: connection dropped")

// Sink is a running SMTP server. Its fields are set by the options of Start; its
// behaviour can be changed at any time through the methods.
type Sink struct {
	Addr string

	// set by options, fixed once Start serves
	srvOpts     []func(*smtp.Server) // applied to every server, again at Restart
	tlsCfg      *tls.Config          // STARTTLS or implicit TLS; nil: no TLS
	implicit    bool
	roots       *x509.CertPool // trusts the self-signed certificate, when in use
	recordWire  bool
	discard     bool
	users       map[string]string
	mechs       []string // nil: PLAIN when users are set
	requireAuth bool
	err         error // from an option, reported by Start

	mu       sync.Mutex
	srv      *smtp.Server
	msgs     []Message
	stats    Stats
	helos    []string
	auths    []Auth
	wire     []byte
	mail     func(from string) error
	rcpt     func(to string) error
	data     func(Message) error
	stallAt  Stage
	anyStall atomic.Bool   // stallAt != "": spares the sessions the lock when false
	release  chan struct{} // closed by Release: frees stalled sessions
	stalled  chan struct{}
	got      chan struct{}
}

// Option configures a Sink at Start.
type Option func(*Sink)

// WithTLS offers STARTTLS with cfg; nil cfg: with a self-signed certificate for
// 127.0.0.1, localhost and sink.test, which RootCAs trusts.
func WithTLS(cfg *tls.Config) Option {
	return func(s *Sink) { s.tlsCfg = s.tlsOrSelfSigned(cfg) }
}

// WithImplicitTLS speaks TLS from the first octet, as on port 465, with cfg or, when nil,
// the self-signed certificate of WithTLS. STARTTLS is then not offered.
func WithImplicitTLS(cfg *tls.Config) Option {
	return func(s *Sink) { s.tlsCfg, s.implicit = s.tlsOrSelfSigned(cfg), true }
}

// WithUsers accepts AUTH for these user names and passwords, over TLS or not; the
// mechanism is PLAIN unless WithAuth names others.
func WithUsers(users map[string]string) Option { return func(s *Sink) { s.users = users } }

// WithAuth advertises exactly these SASL mechanisms. PLAIN and LOGIN (with or without an
// initial response) work; any other is advertised but answered 504 at AUTH, as a server
// whose mechanisms the client does not speak. Who may log in is WithUsers's.
func WithAuth(mechs ...string) Option {
	return func(s *Sink) { s.mechs = append([]string{}, mechs...) }
}

// RequireAuth refuses MAIL FROM with smtp.ErrAuthRequired (502 5.7.0) until the session
// has logged in.
func RequireAuth() Option { return func(s *Sink) { s.requireAuth = true } }

// RecordWire keeps every octet clients send, as read from the socket (ciphertext under
// TLS), for Wire.
func RecordWire() Option { return func(s *Sink) { s.recordWire = true } }

// Discard counts messages without reading them into memory or keeping them, for
// benchmarks, so that the sink allocates nothing per message: the body is copied to
// io.Discard, Messages stays empty, and OnData hooks see a Message without Data whose To
// is valid only during the call. The server has no size limit and no read or write
// timeouts then (WithServer can set them).
func Discard() Option { return func(s *Sink) { s.discard = true } }

// WithServer lets a test set go-smtp server fields (limits, timeouts, EnableSMTPUTF8)
// before it serves, and again on the new server of Restart.
func WithServer(f func(*smtp.Server)) Option {
	return func(s *Sink) { s.srvOpts = append(s.srvOpts, f) }
}

// Start serves on 127.0.0.1:0 until the test ends.
func Start(t testing.TB, opts ...Option) *Sink {
	t.Helper()
	s := &Sink{got: make(chan struct{}, 1), release: make(chan struct{}), stalled: make(chan struct{}, 16)}
	for _, o := range opts {
		o(s)
	}
	if s.err != nil {
		t.Fatalf("smtptest: %v", s.err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	s.Addr = ln.Addr().String()
	s.serve(ln)
	t.Cleanup(func() {
		s.Release()
		s.mu.Lock()
		srv := s.srv
		s.mu.Unlock()
		srv.Close()
	})
	return s
}

// serve starts a new server on ln.
func (s *Sink) serve(ln net.Listener) {
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true
	if !s.discard { // a benchmark's sink spends nothing on limits and deadlines
		srv.MaxMessageBytes = 64 << 20
		srv.ReadTimeout = 30 * time.Second
		srv.WriteTimeout = 30 * time.Second
	}
	srv.ErrorLog = nopLogger{}
	if s.tlsCfg != nil && !s.implicit {
		srv.TLSConfig = s.tlsCfg
	}
	for _, f := range s.srvOpts {
		f(srv)
	}
	ln = &countingListener{Listener: ln, s: s}
	if s.implicit {
		ln = tls.NewListener(ln, s.tlsCfg)
	}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go srv.Serve(ln)
}

// Restart stops the server, which closes every connection it has, and starts a new one on
// the same address, as a smarthost restart does. What was recorded, the hooks and the
// options carry over. Sessions held by Stall stay held until Release.
func (s *Sink) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	old := s.srv
	s.mu.Unlock()
	if err := old.Close(); err != nil {
		t.Fatalf("smtptest: restart: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); s.Stats().Open > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("smtptest: restart: %d connections still open", s.Stats().Open)
		}
	}
	ln, err := net.Listen("tcp", s.Addr) // Go listeners set SO_REUSEADDR: the port is free again
	if err != nil {
		t.Fatalf("smtptest: restart: %v", err)
	}
	s.serve(ln)
}

// TLSConfig is the server's TLS configuration (STARTTLS or implicit), nil without TLS.
func (s *Sink) TLSConfig() *tls.Config { return s.tlsCfg }

// RootCAs is a pool that trusts the self-signed certificate of WithTLS(nil) or
// WithImplicitTLS(nil), nil when the sink has none.
func (s *Sink) RootCAs() *x509.CertPool { return s.roots }

// OnMail makes MAIL FROM answer f's error (nil: accept); nil f accepts every sender.
// Hooks run in the session's goroutine: one may block or sleep to play a slow server.
func (s *Sink) OnMail(f func(from string) error) { s.mu.Lock(); s.mail = f; s.mu.Unlock() }

// OnRcpt makes RCPT TO answer f's error.
func (s *Sink) OnRcpt(f func(to string) error) { s.mu.Lock(); s.rcpt = f; s.mu.Unlock() }

// OnData makes the end of DATA answer f's error; a refused message is not kept.
func (s *Sink) OnData(f func(Message) error) { s.mu.Lock(); s.data = f; s.mu.Unlock() }

// Reject refuses RCPT for addr with err, keeping any other OnRcpt rule out of the way.
func (s *Sink) Reject(addr string, err *smtp.SMTPError) {
	s.RejectRcpts(map[string]*smtp.SMTPError{addr: err})
}

// RejectRcpts answers RCPT for each address of replies with its error and accepts any
// other, replacing any other OnRcpt rule; an empty map accepts every recipient.
func (s *Sink) RejectRcpts(replies map[string]*smtp.SMTPError) {
	s.OnRcpt(func(to string) error {
		if err := replies[to]; err != nil {
			return err
		}
		return nil
	})
}

// Stall makes every session that reaches stage wait there, without a reply, until Release
// or the end of the test: an upstream gone silent. Each session that stops sends once on
// Stalled. An empty stage stalls nothing.
func (s *Sink) Stall(stage Stage) {
	s.mu.Lock()
	s.stallAt = stage
	s.anyStall.Store(stage != "")
	s.mu.Unlock()
}

// Stalled receives once for each session that Stall stops (it buffers a few).
func (s *Sink) Stalled() <-chan struct{} { return s.stalled }

// Release frees the sessions Stall holds and stops stalling.
func (s *Sink) Release() {
	s.mu.Lock()
	close(s.release)
	s.release, s.stallAt = make(chan struct{}), ""
	s.anyStall.Store(false)
	s.mu.Unlock()
}

func (s *Sink) stall(stage Stage) {
	if !s.anyStall.Load() {
		return
	}
	s.mu.Lock()
	hold, release := s.stallAt == stage, s.release
	s.mu.Unlock()
	if !hold {
		return
	}
	select {
	case s.stalled <- struct{}{}:
	case <-release:
	}
	<-release
}

// Messages returns what was accepted so far.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Count is the number of messages accepted (kept or discarded).
func (s *Sink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.Messages
}

// Conns is the number of TCP connections accepted.
func (s *Sink) Conns() int { return s.Stats().Conns }

// Stats returns the counters so far.
func (s *Sink) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Helos returns the names clients greeted with (EHLO or HELO), one per session: a
// session that runs STARTTLS greets twice.
func (s *Sink) Helos() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.helos...)
}

// Auths returns the AUTH commands received so far, in order.
func (s *Sink) Auths() []Auth {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Auth(nil), s.auths...)
}

// Wire returns what clients sent so far under RecordWire, all connections in one.
func (s *Sink) Wire() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.wire...)
}

// Wait returns once n messages have been accepted, failing the test after a generous
// bound.
func (s *Sink) Wait(t testing.TB, n int) []Message {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if s.Count() >= n {
			return s.Messages()
		}
		select {
		case <-s.got:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("smtptest: sink has %d messages, want %d", s.Count(), n)
		}
	}
}

func (s *Sink) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	s.helos = append(s.helos, c.Hostname())
	s.mu.Unlock()
	_, isTLS := c.TLSConnectionState()
	return &session{s: s, c: c, tls: isTLS}, nil
}

type session struct {
	s    *Sink
	c    *smtp.Conn
	tls  bool
	user string
	from string
	opts smtp.MailOptions
	to   []string
}

// refuse answers err, or hangs up when it is ErrDrop.
func (ss *session) refuse(err error) error {
	if errors.Is(err, ErrDrop) {
		ss.c.Conn().Close()
	}
	return err
}

func (ss *session) mechanisms() []string {
	if ss.s.mechs != nil {
		return ss.s.mechs
	}
	if len(ss.s.users) > 0 {
		return []string{sasl.Plain}
	}
	return nil
}

func (ss *session) AuthMechanisms() []string { return ss.mechanisms() }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	s := ss.s
	s.mu.Lock()
	i := len(s.auths)
	s.auths = append(s.auths, Auth{Mech: mech, TLS: ss.tls})
	s.mu.Unlock()
	check := func(user, pass string) error {
		p, ok := s.users[user]
		ok = ok && p == pass
		s.mu.Lock()
		s.auths[i].User, s.auths[i].OK = user, ok
		s.mu.Unlock()
		if !ok {
			return smtp.ErrAuthFailed
		}
		ss.user = user
		return nil
	}
	if !slices.Contains(ss.mechanisms(), mech) {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *session) Reset() { ss.from, ss.to, ss.opts = "", ss.newTo(), smtp.MailOptions{} }

// newTo is an empty recipient list for the next transaction: a new one, whose array the
// Message keeps, or under Discard the old one reused.
func (ss *session) newTo() []string {
	if ss.s.discard {
		return ss.to[:0]
	}
	return nil
}
func (ss *session) Logout() error { return nil }

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	s := ss.s
	s.mu.Lock()
	s.stats.Mails++
	f := s.mail
	s.mu.Unlock()
	if s.anyStall.Load() {
		s.stall(StageMail)
		s.mu.Lock()
		f = s.mail // the test may have changed it meanwhile
		s.mu.Unlock()
	}
	if s.requireAuth && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	if f != nil {
		if err := f(from); err != nil {
			return ss.refuse(err)
		}
	}
	ss.from, ss.to, ss.opts = from, ss.newTo(), smtp.MailOptions{}
	if opts != nil {
		ss.opts = *opts
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s := ss.s
	s.stall(StageRcpt)
	s.mu.Lock()
	f := s.rcpt
	s.mu.Unlock()
	if f != nil {
		if err := f(to); err != nil {
			return ss.refuse(err)
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	s := ss.s
	s.stall(StageBody)
	var b []byte
	var err error
	if s.discard {
		_, err = io.Copy(io.Discard, r)
	} else {
		b, err = io.ReadAll(r)
	}
	if err != nil {
		return err
	}
	s.stall(StageData)
	// The message owns ss.to: Mail and Reset start a new slice, except under Discard,
	// which reuses one (see Discard).
	m := Message{From: ss.from, To: ss.to, Data: b, Size: ss.opts.Size, UTF8: ss.opts.UTF8,
		User: ss.user, TLS: ss.tls}
	s.mu.Lock()
	s.stats.Bodies++
	f := s.data
	s.mu.Unlock()
	if f != nil {
		if err := f(m); err != nil {
			return ss.refuse(err)
		}
	}
	s.mu.Lock()
	s.stats.Messages++
	if !s.discard {
		s.msgs = append(s.msgs, m)
	}
	s.mu.Unlock()
	select {
	case s.got <- struct{}{}:
	default:
	}
	return nil
}

// loginServer is the server side of AUTH LOGIN, which go-sasl does not provide: with or
// without the user name as initial response.
type loginServer struct {
	step  int
	user  string
	check func(user, pass string) error
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	l.step++
	switch {
	case l.step == 1 && len(resp) == 0:
		return []byte("Username:"), false, nil
	case l.step == 1, l.step == 2 && l.user == "":
		l.user = string(resp)
		l.step = 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

// countingListener keeps Stats' connection counts and, under RecordWire, the wire.
type countingListener struct {
	net.Listener
	s *Sink
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	s := l.s
	s.mu.Lock()
	s.stats.Conns++
	s.stats.Open++
	s.stats.MaxOpen = max(s.stats.MaxOpen, s.stats.Open)
	s.mu.Unlock()
	return &countingConn{Conn: c, s: s}, nil
}

type countingConn struct {
	net.Conn
	s    *Sink
	once sync.Once
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.s.recordWire { // fixed before the server starts: no lock needed to read it
		c.s.mu.Lock()
		c.s.wire = append(c.s.wire, b[:n]...)
		c.s.mu.Unlock()
	}
	return n, err
}

func (c *countingConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.stats.Open--
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// tlsOrSelfSigned returns cfg, or when nil a config with the sink's self-signed
// certificate, made on first use.
func (s *Sink) tlsOrSelfSigned(cfg *tls.Config) *tls.Config {
	if cfg != nil {
		return cfg
	}
	if s.tlsCfg != nil && s.roots != nil {
		return s.tlsCfg
	}
	cert, roots, err := selfSigned()
	if err != nil {
		s.err = err
		return nil
	}
	s.roots = roots
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// SelfSigned makes a certificate for 127.0.0.1, ::1, localhost and sink.test, and a pool
// that trusts it.
func SelfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, roots, err := selfSigned()
	if err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	return cert, roots
}

func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sink.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost", "sink.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, roots, nil
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

// Send submits one message over a fresh session to addr (EHLO app.test) and returns the
// reply to its end of data, or the first refusal, as an *smtp.SMTPError (a 250 too: its
// enhanced code leads its text); err is for anything that is not an SMTP reply.
func Send(addr, from string, to []string, msg string) (*smtp.SMTPError, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		return nil, err
	}
	return SendOn(c, from, to, msg)
}

// SendOn is Send over an open client.
func SendOn(c *smtp.Client, from string, to []string, msg string) (*smtp.SMTPError, error) {
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

// Header returns the unfolded values of the named field in msg's header block.
func Header(msg []byte, name string) []string {
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

// Body returns what follows the header block of msg.
func Body(msg []byte) []byte {
	_, b, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	return b
}
