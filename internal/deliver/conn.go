package deliver

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// deadlineConn bounds every deadline that the go-smtp client sets on it. The client takes
// no context: it sets now+CommandTimeout before each command and clears the deadline after
// it (and while the body is written), so a deadline set once on the connection would not
// hold. While armed, a cleared deadline becomes now+timeout and no deadline may pass the
// context's; when the context ends first, the deadline is moved to the past, which fails
// the blocked read or write at once.
//
// Between hold and release it also holds back writes (up to maxPending octets): a message
// body, which go-smtp writes in 4 KiB pieces, then leaves in one write. Each write to a
// socket costs a system call and, on loopback, the receiver's TCP processing too. Nothing is
// held outside a hold, so no reply is ever awaited for bytes not sent.
type deadlineConn struct {
	net.Conn

	wmu     sync.Mutex
	holding bool
	pending []byte // written during a hold, not yet sent

	mu      sync.Mutex
	armed   bool
	timeout time.Duration
	limit   time.Time // zero: the context has no deadline
	expired bool      // the context ended while armed
}

// past is a deadline that has passed: it interrupts pending I/O.
var past = time.Unix(1, 0)

// arm bounds the connection's I/O by ctx and timeout until disarm is called. disarm
// reports false when ctx ended meanwhile: the I/O may have been cut mid-command, so the
// connection must not be reused.
func (c *deadlineConn) arm(ctx context.Context, timeout time.Duration) (disarm func() bool) {
	c.mu.Lock()
	c.armed, c.timeout, c.expired = true, timeout, false
	c.limit, _ = ctx.Deadline()
	c.mu.Unlock()
	c.Conn.SetDeadline(c.bound(time.Time{}))
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.armed {
			c.expired = true
			c.Conn.SetDeadline(past)
		}
	})
	return func() bool {
		stopped := stop()
		c.mu.Lock()
		defer c.mu.Unlock()
		c.armed = false
		c.Conn.SetDeadline(time.Time{})
		return stopped && !c.expired
	}
}

// maxPending bounds the octets held back by deadlineConn.
const maxPending = 64 << 10

func (c *deadlineConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.holding {
		return c.Conn.Write(p)
	}
	c.pending = append(c.pending, p...)
	if len(c.pending) >= maxPending {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// hold starts holding writes back.
func (c *deadlineConn) hold() {
	c.wmu.Lock()
	c.holding = true
	c.wmu.Unlock()
}

// release ends a hold and sends what it held.
func (c *deadlineConn) release() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.holding = false
	return c.flushLocked()
}

// flushLocked sends what Write held back. c.wmu is held.
func (c *deadlineConn) flushLocked() error {
	if len(c.pending) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.pending)
	if cap(c.pending) > maxPending {
		c.pending = nil // a large body's buffer is not kept for the life of the connection
	} else {
		c.pending = c.pending[:0]
	}
	return err
}

// bound returns the deadline to apply in place of t.
func (c *deadlineConn) bound(t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.boundLocked(t)
}

func (c *deadlineConn) boundLocked(t time.Time) time.Time {
	if !c.armed {
		return t
	}
	if c.expired {
		return past
	}
	if t.IsZero() {
		t = time.Now().Add(c.timeout)
	}
	if !c.limit.IsZero() && t.After(c.limit) {
		t = c.limit
	}
	return t
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.SetDeadline(c.boundLocked(t))
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.SetReadDeadline(c.boundLocked(t))
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.SetWriteDeadline(c.boundLocked(t))
}

// conn is one upstream connection, ready for MAIL FROM.
type conn struct {
	client   *smtp.Client
	raw      *deadlineConn
	tls      bool
	lastUsed time.Time
	// dirty is set while a transaction may be open on the upstream: the next one must
	// begin with RSET.
	dirty bool
	// broken is set when the connection is unusable: a fault, a 421, an interrupted command.
	broken bool
}

// close ends the connection politely when it is healthy (QUIT, bounded by timeout) and
// closes it in any case.
func (c *conn) close(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	disarm := c.raw.arm(ctx, timeout)
	c.client.Quit()
	disarm()
	c.client.Close()
}

// dial opens and sets up one connection: greeting, EHLO, TLS as configured, EHLO again
// after TLS, AUTH.
func (p *Pool) dial(ctx context.Context) (*conn, error) {
	nc, err := p.dialer(ctx, "tcp", p.addr)
	if err != nil {
		return nil, fault(fmt.Errorf("dial %s: %w", p.addr, err))
	}
	raw := &deadlineConn{Conn: nc}
	disarm := raw.arm(ctx, p.timeout)
	c, err := p.setup(ctx, raw)
	if !disarm() && err == nil {
		err = fmt.Errorf("%s: setup interrupted", p.addr)
	}
	if err != nil {
		if cerr := ctxErr(ctx); cerr != nil {
			err = fmt.Errorf("%w (%w)", err, cerr)
		}
		if c != nil {
			c.client.Close()
		}
		nc.Close()
		return nil, fault(err)
	}
	return c, nil
}

func (p *Pool) setup(ctx context.Context, raw *deadlineConn) (*conn, error) {
	c := &conn{raw: raw}
	switch p.mode {
	case "implicit":
		tc := tls.Client(raw, p.tlsConf())
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("%s: TLS handshake: %w", p.addr, err)
		}
		c.client, c.tls = p.newClient(tc), true
		if err := c.client.Hello(p.hostname); err != nil {
			return c, fmt.Errorf("%s: EHLO: %w", p.addr, err)
		}
	default:
		c.client = p.newClient(raw)
		if err := c.client.Hello(p.hostname); err != nil {
			return c, fmt.Errorf("%s: EHLO: %w", p.addr, err)
		}
		offered, _ := c.client.Extension("STARTTLS")
		switch {
		case offered && (p.mode == "starttls" || p.mode == "opportunistic"):
			client, err := p.startTLS(ctx, raw)
			if err != nil {
				return c, fmt.Errorf("%s: STARTTLS: %w", p.addr, err)
			}
			c.client, c.tls = client, true
			if err := c.client.Hello(p.hostname); err != nil {
				return c, fmt.Errorf("%s: EHLO after STARTTLS: %w", p.addr, err)
			}
		case p.mode == "starttls":
			return c, fmt.Errorf("%s: STARTTLS required by upstream.tls but not offered", p.addr)
		}
	}
	if p.username != "" {
		if !c.tls && p.mode != "none" {
			return c, p.refuseClearAuth()
		}
		if err := p.auth(c.client); err != nil {
			return c, fmt.Errorf("%s: %w", p.addr, err)
		}
	}
	return c, nil
}

// refuseClearAuth is the error, and the log line, for an upstream that would get our
// credentials in clear: SPEC §7, upstream AUTH is never sent without TLS unless
// upstream.tls = "none" says so. "opportunistic" lets the mail go out in plain text when the
// upstream offers no STARTTLS, but not the password: anyone on the path could read it (AUTH
// PLAIN and LOGIN are only base64) and, unlike one message, reuse it. The attempt fails as
// a fault, so the message waits in the spool (a 451 in direct mode) until the upstream offers
// STARTTLS or the operator chooses tls = "none".
func (p *Pool) refuseClearAuth() error {
	p.log.Warn(`upstream offers no STARTTLS: AUTH not sent, credentials are never sent over a connection without TLS; delivery deferred (set upstream.tls = "none" to send them in clear anyway)`,
		"upstream", p.addr, "tls", p.mode, "username", p.username)
	return fmt.Errorf(`%s: AUTH not sent: no STARTTLS on offer, and upstream.tls = %q never sends credentials without TLS (only tls = "none" does)`, p.addr, p.mode)
}

func (p *Pool) newClient(nc net.Conn) *smtp.Client {
	c := smtp.NewClient(nc)
	c.CommandTimeout = p.timeout
	c.SubmissionTimeout = p.timeout
	return c
}

func (p *Pool) tlsConf() *tls.Config {
	var cfg *tls.Config
	if p.tlsConfig != nil {
		cfg = p.tlsConfig.Clone()
	} else {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12} // nil RootCAs: the system roots
	}
	if cfg.ServerName == "" {
		cfg.ServerName = p.host
	}
	return cfg
}

// startTLS runs STARTTLS on a connection whose plain-text client has already sent EHLO, and
// returns a client for the encrypted connection.
//
// go-smtp v0.25.1 exports STARTTLS only through NewClientStartTLS, which sends its EHLO as
// "localhost" before Hello can set our name, and receivers that check the EHLO name would
// judge us by that. So the command is written here, and the TLS connection gets a new client
// that is first handed the 220 greeting every go-smtp client waits for: after STARTTLS the
// server sends none (RFC 3207 §4.2), the client speaks first with EHLO.
func (p *Pool) startTLS(ctx context.Context, raw *deadlineConn) (*smtp.Client, error) {
	if _, err := io.WriteString(raw, "STARTTLS\r\n"); err != nil {
		return nil, err
	}
	br := bufio.NewReader(raw)
	if _, _, err := textproto.NewReader(br).ReadResponse(220); err != nil {
		return nil, err
	}
	// Bytes after the 220 arrived in plain text; taking them for TLS-protected replies is the
	// STARTTLS response injection attack (CVE-2011-0411 and kin).
	if br.Buffered() > 0 {
		return nil, errors.New("unexpected data after the STARTTLS reply")
	}
	tc := tls.Client(raw, p.tlsConf())
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return p.newClient(&greetedConn{Conn: tc, r: io.MultiReader(strings.NewReader("220 "+p.host+" TLS\r\n"), tc)}), nil
}

// greetedConn is a net.Conn whose reads start with a replayed greeting.
type greetedConn struct {
	net.Conn
	r io.Reader
}

func (g *greetedConn) Read(b []byte) (int, error) { return g.r.Read(b) }

// auth logs in with PLAIN when offered, else LOGIN (RFC 4954; LOGIN for the servers that
// still offer nothing else).
func (p *Pool) auth(c *smtp.Client) error {
	var a sasl.Client
	switch {
	case c.SupportsAuth(sasl.Plain):
		a = sasl.NewPlainClient("", p.username, p.password)
	case c.SupportsAuth(sasl.Login):
		a = sasl.NewLoginClient(p.username, p.password)
	default:
		_, mechs := c.Extension("AUTH")
		return fmt.Errorf("AUTH: upstream.username is set but the upstream offers neither PLAIN nor LOGIN (AUTH %q)", mechs)
	}
	if err := c.Auth(a); err != nil {
		return fmt.Errorf("AUTH as %q: %w", p.username, err)
	}
	return nil
}
