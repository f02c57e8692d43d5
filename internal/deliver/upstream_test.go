package deliver

import (
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
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
)

// upstream is a real go-smtp server on 127.0.0.1 standing in for the smarthost. It records
// what it accepts and can be told to refuse, drop the connection, block, require AUTH or
// speak TLS.
type upstream struct {
	addr  string
	roots *x509.CertPool // trusts the server's self-signed certificate

	// set by options before the server starts
	starttls, implicit, utf8 bool
	recordWire               bool              // keep every octet read from clients in wire
	mechs                    []string          // AUTH mechanisms offered; nil: no AUTH
	users                    map[string]string // non-nil: MAIL needs AUTH as one of these

	release chan struct{} // closed at cleanup: frees blocked sessions
	tlsCfg  *tls.Config
	srv     *smtp.Server // the running server; replaced by restart, under mu

	mu        sync.Mutex
	msgs      []message
	helos     []string
	authMechs []string // mechanisms clients logged in with
	authTried []authAttempt
	wire      []byte // what clients sent, as read from the socket (ciphertext under TLS)
	mails     int    // MAIL commands seen
	datas     int    // DATA bodies seen
	failMail  *smtp.SMTPError
	failData  *smtp.SMTPError
	failRcpt  map[string]*smtp.SMTPError
	dropMail  int // close the connection at MAIL: the next n times, -1 always
	dropData  int // same, after reading the body
	blockAt   string
	entered   chan struct{} // receives when a session blocks at blockAt
	barrier   *barrier
	accepted  int // connections accepted
	open      int // connections open now
	maxOpen   int
}

type message struct {
	From string
	To   []string
	Data []byte
	UTF8 bool
	Size int64
	TLS  bool
	User string
}

// authAttempt is one AUTH command the upstream received, successful or not.
type authAttempt struct {
	Mech string
	TLS  bool
}

type upstreamOption func(*upstream)

func withSTARTTLS(u *upstream)    { u.starttls = true }
func withImplicitTLS(u *upstream) { u.implicit = true }
func withSMTPUTF8(u *upstream)    { u.utf8 = true }
func withWire(u *upstream)        { u.recordWire = true }

// withAuth offers mechs and requires a login as user "relay", password "secret".
func withAuth(mechs ...string) upstreamOption {
	return func(u *upstream) {
		u.mechs = mechs
		u.users = map[string]string{"relay": "secret"}
	}
}

func startUpstream(t testing.TB, opts ...upstreamOption) *upstream {
	u := &upstream{release: make(chan struct{}), entered: make(chan struct{}, 16)}
	for _, o := range opts {
		o(u)
	}
	cert, roots := selfSigned(t)
	u.roots = roots
	u.tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	u.addr = l.Addr().String()
	u.serve(l)
	t.Cleanup(func() {
		close(u.release)
		u.mu.Lock()
		s := u.srv
		u.mu.Unlock()
		s.Close()
	})
	return u
}

// serve starts a new server on l.
func (u *upstream) serve(l net.Listener) {
	s := smtp.NewServer(u)
	s.Domain = "upstream.test"
	s.AllowInsecureAuth = true
	s.EnableSMTPUTF8 = u.utf8
	s.ErrorLog = discardLogger{}
	if u.starttls {
		s.TLSConfig = u.tlsCfg
	}
	var ln net.Listener = &countingListener{Listener: l, u: u}
	if u.implicit {
		ln = tls.NewListener(ln, u.tlsCfg)
	}
	u.mu.Lock()
	u.srv = s
	u.mu.Unlock()
	go s.Serve(ln)
}

// restart stops the server, which closes every connection it has, and starts a new one on
// the same address, as a smarthost restart does. Recorded state carries over.
func (u *upstream) restart(t testing.TB) {
	u.mu.Lock()
	s := u.srv
	u.mu.Unlock()
	require.NoError(t, s.Close())
	require.Eventually(t, func() bool { return u.openConns() == 0 }, 5*time.Second, 5*time.Millisecond,
		"the old server's connections are closed")
	l, err := net.Listen("tcp", u.addr) // Go listeners set SO_REUSEADDR: the port is free again
	require.NoError(t, err)
	u.serve(l)
}

func (u *upstream) set(f func(u *upstream)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f(u)
}

func (u *upstream) messages() []message {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]message(nil), u.msgs...)
}

// counts returns connections accepted so far and the most open at once.
func (u *upstream) counts() (accepted, maxOpen int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.accepted, u.maxOpen
}

func (u *upstream) openConns() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.open
}

// block makes sessions stop at stage ("MAIL", "RCPT", "BODY": before reading it, "DATA":
// after) until the test ends.
func (u *upstream) block(stage string) { u.set(func(u *upstream) { u.blockAt = stage }) }

func (u *upstream) maybeBlock(stage string) {
	u.mu.Lock()
	block := u.blockAt == stage
	u.mu.Unlock()
	if block {
		select {
		case u.entered <- struct{}{}:
		case <-u.release:
		}
		<-u.release
	}
}

func (u *upstream) NewSession(c *smtp.Conn) (smtp.Session, error) {
	u.mu.Lock()
	u.helos = append(u.helos, c.Hostname())
	u.mu.Unlock()
	return &session{u: u, c: c}, nil
}

type session struct {
	u    *upstream
	c    *smtp.Conn
	user string
	from string
	opts smtp.MailOptions
	to   []string
}

func (s *session) AuthMechanisms() []string { return s.u.mechs }

func (s *session) Auth(mech string) (sasl.Server, error) {
	_, isTLS := s.c.TLSConnectionState()
	s.u.set(func(u *upstream) { u.authTried = append(u.authTried, authAttempt{Mech: mech, TLS: isTLS}) })
	check := func(user, pass string) error {
		if want, ok := s.u.users[user]; !ok || want != pass {
			return smtp.ErrAuthFailed
		}
		s.user = user
		s.u.set(func(u *upstream) { u.authMechs = append(u.authMechs, mech) })
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	u := s.u
	u.mu.Lock()
	u.mails++
	drop := u.dropMail != 0
	if u.dropMail > 0 {
		u.dropMail--
	}
	fail, needAuth := u.failMail, u.users != nil
	u.mu.Unlock()
	u.maybeBlock("MAIL")
	switch {
	case drop:
		s.c.Conn().Close()
		return errors.New("dropped")
	case needAuth && s.user == "":
		return smtp.ErrAuthRequired
	case fail != nil:
		return fail
	}
	s.from, s.to = from, nil
	if opts != nil {
		s.opts = *opts
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.u.maybeBlock("RCPT")
	s.u.mu.Lock()
	fail := s.u.failRcpt[to]
	s.u.mu.Unlock()
	if fail != nil {
		return fail
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	u := s.u
	u.maybeBlock("BODY") // before reading: the client's writes stall once buffers fill
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.datas++
	drop := u.dropData != 0
	if u.dropData > 0 {
		u.dropData--
	}
	fail, b := u.failData, u.barrier
	u.mu.Unlock()
	u.maybeBlock("DATA")
	if b != nil {
		b.arrive()
	}
	switch {
	case drop:
		s.c.Conn().Close()
		return errors.New("dropped")
	case fail != nil:
		return fail
	}
	_, isTLS := s.c.TLSConnectionState()
	u.mu.Lock()
	u.msgs = append(u.msgs, message{From: s.from, To: s.to, Data: data, UTF8: s.opts.UTF8, Size: s.opts.Size, TLS: isTLS, User: s.user})
	u.mu.Unlock()
	return nil
}

func (s *session) Reset()        { s.from, s.to, s.opts = "", nil, smtp.MailOptions{} }
func (s *session) Logout() error { return nil }

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

// barrier holds each arrival until n have arrived: it proves n sessions run at once.
type barrier struct {
	n    int
	mu   sync.Mutex
	got  int
	done chan struct{}
	ok   bool
}

func newBarrier(n int) *barrier { return &barrier{n: n, done: make(chan struct{})} }

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

type countingListener struct {
	net.Listener
	u *upstream
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.u.mu.Lock()
	l.u.accepted++
	l.u.open++
	l.u.maxOpen = max(l.u.maxOpen, l.u.open)
	l.u.mu.Unlock()
	return &countingConn{Conn: c, u: l.u}, nil
}

type countingConn struct {
	net.Conn
	u    *upstream
	once sync.Once
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.u.recordWire { // set before the server starts: no lock needed to read it
		c.u.mu.Lock()
		c.u.wire = append(c.u.wire, b[:n]...)
		c.u.mu.Unlock()
	}
	return n, err
}

func (c *countingConn) Close() error {
	c.once.Do(func() {
		c.u.mu.Lock()
		c.u.open--
		c.u.mu.Unlock()
	})
	return c.Conn.Close()
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
func (discardLogger) Println(...interface{})        {}

// selfSigned makes a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "upstream.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"upstream.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, roots
}
