// Package smtpd owns the SMTP front end: listeners, sessions, AUTH, the open-relay and
// rate-limit gates, and the reading of each message, which it hands to a Handler as one
// Inbound value. It is the only package that imports go-smtp's server side, and the only
// place where errors become SMTP replies (toSMTP). It never decides senders or touches the
// spool: that is the Handler's job.
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"relay/internal/config"
	"relay/internal/metrics"
)

// Inbound is one accepted message handed to the pipeline. Data is valid only during Handle.
type Inbound struct {
	ClientIP       netip.Addr // after any PROXY header
	Helo           string
	TLS            bool
	User           string // authenticated user, "" when none
	UserUnit       string // that user's [[users]] unit
	NetworkAllowed bool   // client is in allow_networks
	From           string // MAIL FROM address, "" for <>
	To             []string
	Data           []byte // the message as received (CRLF, dot-unstuffed)
	Received       time.Time
}

// Handler takes each accepted message.
type Handler interface {
	// Handle returns the text of the 250 reply after "250 2.0.0 " (e.g. "Ok: queued as ID",
	// or "dry run: would send as <x@y> (reason)"), or an error. An error with a method
	// SMTPReply() (int, [3]int, string), or an *smtp.SMTPError, is answered as it says; any
	// other error is an internal fault, answered 451 4.3.0 and logged.
	Handle(ctx context.Context, m *Inbound) (string, error)
}

// Per-connection caps against clients that hold a connection without using it: a session
// lasts at most maxSessionLifetime and may send at most maxCommands commands (Exim's
// default is 1000 messages a connection; a message costs about five commands). Past
// either the client gets a 421 and reconnects.
const (
	maxSessionLifetime = time.Hour
	maxCommands        = 10000
)

// maxCommandLine is RFC 5321 §4.5.3.1.4's limit for a command line, CRLF included; longer
// ones get 500 5.5.2 and are discarded (go-smtp patch, third_party/go-smtp.patch).
const maxCommandLine = 512

// maxLineLength is go-smtp's Server.MaxLineLength: 1 MiB instead of its default 2000. RFC
// 5321 §4.5.3.1.6 allows 1000 octets per line, but applications routinely send longer ones
// (HTML without line breaks, long base64 or header lines), and Postfix takes them; refusing
// them loses the mail at the source, since go-smtp answers 5xx and hangs up. The whole
// message is still bounded by max_message_bytes.
//
// go-smtp (v0.25.1, conn.go and lengthlimit_reader.go) applies this limit to every line it
// reads on the connection, not only DATA: commands and AUTH responses too (BDAT chunks are
// exempt). It counts the CRLF, so a line may carry maxLineLength-2 octets before its CRLF.
// A command line is accumulated whole by net/textproto before go-smtp parses it, so one
// client can make the server hold up to this much for a single command; legitimate commands
// are short, and the per-connection cost stays far below the DATA buffer that
// max_message_bytes already allows.
const maxLineLength = 1 << 20

// ErrServerClosed is returned by Serve and ServeTLS called after Shutdown.
var ErrServerClosed = errors.New("smtpd: server closed")

// Server is the SMTP front end. Create it with New; the unexported function fields are the
// dependencies tests replace before the first Serve.
type Server struct {
	// Metrics, when not nil, counts open connections, failure replies and rate-limited
	// clients; set it before the first Serve.
	Metrics *metrics.Metrics

	h   Handler
	log *slog.Logger

	now        func() time.Time
	isLoopback func(netip.Addr) bool            // AUTH without TLS is always allowed on loopback
	authDelay  func(failures int) time.Duration // wait before answering a failed AUTH

	compare  func(hash, password []byte) error // bcrypt.CompareHashAndPassword
	lifetime time.Duration                     // maxSessionLifetime
	maxCmds  int                               // maxCommands

	reload sync.Mutex // serialises SetConfig
	cur    atomic.Pointer[generation]
	limits *limits
	guard  *authGuard
	bufs   sync.Pool // *bytes.Buffer for DATA, reused across messages

	// ctx is the parent of every Handle context; cancelled when Shutdown gives up waiting.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	done      chan struct{} // closed by Shutdown
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	perIP     map[netip.Prefix]int // open connections by client (failKey), after PROXY headers
	implicit  int                  // running ServeTLS loops: a reload may not drop the certificate under them
	wg        sync.WaitGroup
}

// New returns a server for cfg passing messages to h. The TLS certificate, if any, comes from
// cfg.SMTP.TLSCert and TLSKey (relative paths resolve against cfg.Dir).
func New(cfg *config.Config, h Handler, log *slog.Logger) (*Server, error) {
	if h == nil {
		return nil, errors.New("smtpd: nil handler")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		h:          h,
		log:        log,
		now:        time.Now,
		isLoopback: netip.Addr.IsLoopback,
		authDelay:  defaultAuthDelay,
		compare:    bcrypt.CompareHashAndPassword,
		lifetime:   maxSessionLifetime,
		maxCmds:    maxCommands,
		limits:     newLimits(),
		guard:      newAuthGuard(failWindow),
		done:       make(chan struct{}),
		listeners:  map[net.Listener]struct{}{},
		conns:      map[*conn]struct{}{},
		perIP:      map[netip.Prefix]int{},
	}
	g, err := s.newGeneration(cfg, nil)
	if err != nil {
		return nil, err
	}
	s.cur.Store(g)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Serve answers plain SMTP on ln (with STARTTLS when a certificate is configured) until
// Shutdown, and then returns nil.
func (s *Server) Serve(ln net.Listener) error { return s.serve(ln, false) }

// ServeTLS answers SMTP over implicit TLS (RFC 8314) on ln until Shutdown. It fails at once
// when no certificate is configured.
func (s *Server) ServeTLS(ln net.Listener) error { return s.serve(ln, true) }

// SetConfig installs cfg for the connections that follow: users, networks, limits, TLS. Open
// connections keep the configuration they started with. On error nothing changes. Rate-limit
// buckets and AUTH failure counts survive the reload. Listen addresses are not reread: they
// belong to whoever made the listeners.
func (s *Server) SetConfig(cfg *config.Config) error {
	s.reload.Lock()
	defer s.reload.Unlock()
	old := s.cur.Load()
	g, err := s.newGeneration(cfg, old)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.implicit > 0 && g.tls == nil {
		s.mu.Unlock()
		return errors.New("smtpd: smtp.tls_cert: an implicit TLS listener is running; a certificate is required")
	}
	s.cur.Store(g)
	s.mu.Unlock()
	// The old generation's go-smtp loop stops accepting; its connections run to their end
	// (but see session.current: they send as the users of the new one).
	old.ln.Close()
	s.guard.forget(func(name string) bool { _, ok := g.users[name]; return ok })
	return nil
}

// Shutdown stops accepting, closes idle connections (after a 421) and waits for the others
// to finish their transaction. When ctx ends first it closes what is left, cancels running
// Handle calls and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.closed = true
	close(s.done)
	var err error
	for ln := range s.listeners {
		if e := ln.Close(); e != nil && err == nil {
			err = e
		}
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cur.Load().ln.Close()
	for _, c := range conns {
		c.drain()
	}

	finished := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		s.cancel()
		return err
	case <-ctx.Done():
		s.cancel()
		s.mu.Lock()
		for c := range s.conns {
			c.Conn.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

func (s *Server) serve(ln net.Listener, implicitTLS bool) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if implicitTLS {
		// Checked under mu, with SetConfig's check, so a reload cannot drop the certificate
		// between the two.
		if s.cur.Load().tls == nil {
			s.mu.Unlock()
			return errors.New("smtpd: implicit TLS needs smtp.tls_cert and smtp.tls_key")
		}
		s.implicit++
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		if implicitTLS {
			s.implicit--
		}
		s.mu.Unlock()
	}()

	var delay time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			var ne interface{ Temporary() bool }
			if errors.As(err, &ne) && ne.Temporary() {
				// Out of file descriptors and the like: back off instead of spinning.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("smtp accept", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("smtpd: accept on %s: %w", ln.Addr(), err)
		}
		delay = 0
		// Deadlines are wall-clock time, not s.now (which tests move).
		c := &conn{Conn: raw, srv: s, expires: time.Now().Add(s.lifetime)}
		switch s.track(c) {
		case errServerClosed:
			raw.Close()
			return nil
		case errTooManyConns:
			go s.refuse(raw, errTooManyConns, implicitTLS)
			continue
		}
		go s.dispatch(c, implicitTLS)
	}
}

var errServerClosed = errors.New("closed")

// track registers c for Shutdown and counts it against max_connections.
func (s *Server) track(c *conn) error {
	limit := s.cur.Load().maxConns
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errServerClosed
	}
	if len(s.conns) >= limit {
		return errTooManyConns
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.Metrics.SessionOpened()
	return nil
}

// trackIP counts c against max_connections_per_ip, once its client address is known.
func (s *Server) trackIP(c *conn, limit int) bool {
	key := failKey(c.remote.Addr())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perIP[key] >= limit {
		return false
	}
	s.perIP[key]++
	c.ipKey, c.counted = key, true
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if c.counted {
		if s.perIP[c.ipKey]--; s.perIP[c.ipKey] <= 0 {
			delete(s.perIP, c.ipKey)
		}
	}
	s.mu.Unlock()
	s.Metrics.SessionClosed()
	s.wg.Done()
}

// refuse answers a connection over a limit with a 421 greeting (RFC 5321 §3.1) and closes
// it. Over implicit TLS it is closed without a word: a reply needs a TLS handshake first,
// which is the very work the limit saves.
func (s *Server) refuse(nc net.Conn, reply *smtp.SMTPError, implicitTLS bool) {
	defer nc.Close()
	if implicitTLS {
		return
	}
	s.Metrics.Rejected(reply.Code)
	nc.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(nc, "%d %d.%d.%d %s\r\n", reply.Code, reply.EnhancedCode[0], reply.EnhancedCode[1], reply.EnhancedCode[2], reply.Message)
}

// dispatch reads a PROXY header when the peer is a trusted load balancer, then hands the
// connection to the current generation's go-smtp server.
func (s *Server) dispatch(c *conn, implicitTLS bool) {
	g := s.cur.Load()
	if ap, err := netip.ParseAddrPort(c.Conn.RemoteAddr().String()); err == nil {
		c.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if inPrefixes(c.remote.Addr(), g.cfg.SMTP.ProxyFrom) {
		if err := c.readProxyHeader(g.timeout); err != nil {
			s.log.Warn("smtp proxy header", "peer", c.remote.Addr().String(), "err", err)
			c.Close()
			return
		}
	}
	if !s.trackIP(c, g.maxConnsIP) {
		s.log.Warn("smtp connection refused", "client", c.remote.Addr().String(), "code", 421,
			"reason", "max_connections_per_ip", "limit", g.maxConnsIP)
		s.refuse(c.Conn, errTooManyConnsIP, implicitTLS)
		c.Close()
		return
	}
	for {
		var nc net.Conn = c
		if implicitTLS {
			if g.tls == nil { // cannot happen: SetConfig keeps the certificate while ServeTLS runs
				c.Close()
				return
			}
			nc = tls.Server(c, g.tls)
		}
		g.ln.started()
		select {
		case g.ln.ch <- nc:
			return
		case <-g.ln.done:
			// A reload raced this connection: give it to the new generation.
			select {
			case <-s.done:
				c.Close()
				return
			default:
			}
			g = s.cur.Load()
		}
	}
}

// generation is one configuration's go-smtp server. A connection lives in the generation
// that accepted it, which is how a reload leaves open sessions alone: go-smtp reads its
// Server fields (limits, TLS) while serving, so they cannot be changed in place.
type generation struct {
	cfg       *config.Config
	smtp      *smtp.Server
	ln        *chanListener
	tls       *tls.Config
	users     map[string]user
	dummy     []byte // bcrypt hash of a random password, compared for unknown users
	dummyCost int
	maxBytes  int64
	timeout   time.Duration

	maxConns     int
	maxConnsIP   int
	authFailures int
	bareReject   bool // smtp.bare_newline = "reject"
}

type user struct {
	name string
	hash []byte
	unit string
	rate config.Rate
}

func (s *Server) newGeneration(cfg *config.Config, prev *generation) (*generation, error) {
	if cfg == nil {
		return nil, errors.New("smtpd: nil config")
	}
	tlsCfg := tlsConfig(cfg)
	g := &generation{
		cfg:      cfg,
		tls:      tlsCfg,
		users:    make(map[string]user, len(cfg.Users)),
		maxBytes: cfg.SMTP.MaxMessageBytes,
		timeout:  cfg.SMTP.Timeout.Duration,
		ln:       newChanListener(),

		maxConns:     cfg.SMTP.MaxConnections,
		maxConnsIP:   cfg.SMTP.MaxConnectionsIP,
		authFailures: cfg.SMTP.AuthFailures,
		bareReject:   cfg.SMTP.BareNewline == "reject",
	}
	maxRcpt := cfg.SMTP.MaxRecipients
	for i, u := range cfg.Users {
		cost, err := bcrypt.Cost([]byte(u.PasswordHash))
		if err != nil {
			return nil, fmt.Errorf("smtpd: users[%d] %q: password_hash: not a bcrypt hash", i, u.Name)
		}
		g.dummyCost = max(g.dummyCost, cost)
		g.users[u.Name] = user{name: u.Name, hash: []byte(u.PasswordHash), unit: u.Unit, rate: u.Limit}
	}
	if len(g.users) > 0 {
		// The dummy costs what the dearest real hash costs, so a wrong user name takes as
		// long to refuse as a wrong password.
		if prev != nil && prev.dummyCost == g.dummyCost && prev.dummy != nil {
			g.dummy = prev.dummy
		} else {
			var err error
			if g.dummy, err = dummyHash(g.dummyCost); err != nil {
				return nil, err
			}
		}
	}

	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return s.newSession(g, c)
	}))
	// Every reply leaves through go-smtp's writeResponse, those it makes up itself too
	// (OnReply is a hook of the patched copy): one place counts every refusal. Metrics
	// is read at each reply: it is set after New.
	srv.OnReply = func(code int) { s.Metrics.Rejected(code) }
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = g.maxBytes
	srv.MaxRecipients = maxRcpt
	srv.MaxLineLength = maxLineLength
	srv.MaxCommandLineLength = maxCommandLine
	srv.MaxCommands = s.maxCmds
	srv.ReadTimeout = g.timeout
	srv.WriteTimeout = g.timeout
	srv.EnableSMTPUTF8 = true
	srv.TLSConfig = tlsCfg
	// go-smtp's switch is global (TLS or always); the per-connection rule (TLS, loopback or
	// allow_insecure_auth) is applied in session.AuthMechanisms and session.Auth.
	srv.AllowInsecureAuth = true
	srv.ErrorLog = errorLog{s.log}
	g.smtp = srv
	// The go-smtp accept loop starts with the first connection, so a Server that is never
	// served (or a generation replaced before use) leaves no goroutine behind.
	g.ln.onFirst = func() { go srv.Serve(g.ln) }
	return g, nil
}

// tlsConfig serves the certificate config.Load loaded (nil: no TLS).
func tlsConfig(cfg *config.Config) *tls.Config {
	if cfg.SMTP.Certificate == nil {
		return nil
	}
	return &tls.Config{Certificates: []tls.Certificate{*cfg.SMTP.Certificate}, MinVersion: tls.VersionTLS12}
}

func inPrefixes(ip netip.Addr, ps []netip.Prefix) bool {
	if !ip.IsValid() {
		return false
	}
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// errorLog sends go-smtp's own reports (TLS handshake failures, panics) to our logger.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Printf(format string, v ...any) {
	l.log.Info("smtp server", "msg", fmt.Sprintf(format, v...))
}
func (l errorLog) Println(v ...any) { l.log.Info("smtp server", "msg", fmt.Sprint(v...)) }
