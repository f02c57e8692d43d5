package smtpd

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// conn is one client connection as go-smtp sees it (under TLS, the net.Conn inside the
// *tls.Conn). It carries the state that outlives a go-smtp Session (which STARTTLS replaces)
// and lets the server end a connection without writing to it concurrently with go-smtp:
// a kicked connection reads EOF, a draining idle one reads a timeout, and go-smtp then says
// goodbye and closes it on its own goroutine.
type conn struct {
	net.Conn
	srv     *Server
	remote  netip.AddrPort // the client, after any PROXY header
	proxied bool
	// noClient: a trusted balancer sent a PROXY header that names no TCP client (v1
	// UNKNOWN, v2 LOCAL, a UDP or unix family). remote stays the balancer's address, which
	// says nothing about who is talking, so the session grants it neither allow_networks
	// nor loopback trust.
	noClient bool
	pending  []byte // read past the PROXY header, served before the socket (set before go-smtp reads)

	expires time.Time    // end of the session's lifetime: no read deadline goes past it
	ipKey   netip.Prefix // the client's key in Server.perIP
	counted bool         // counted in Server.perIP

	authFails atomic.Int32 // failed AUTH attempts on this connection
	kicked    atomic.Bool  // too many AUTH failures: read EOF, refuse every command
	draining  atomic.Bool  // Shutdown: close once no transaction is open
	busy      atomic.Bool  // between an accepted MAIL and the end of the transaction

	closeOnce sync.Once
}

// errDrain makes go-smtp answer "421 4.4.2 Idle timeout" and close: it reports a timeout,
// and a temporary error so crypto/tls does not make it sticky before that reply is written.
type drainError struct{}

func (drainError) Error() string   { return "smtpd: server shutting down" }
func (drainError) Timeout() bool   { return true }
func (drainError) Temporary() bool { return true }

func (c *conn) Read(b []byte) (int, error) {
	if c.kicked.Load() {
		return 0, io.EOF
	}
	if c.draining.Load() && !c.busy.Load() {
		return 0, drainError{}
	}
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	return c.Conn.Read(b)
}

// SetReadDeadline is go-smtp's per-command (and, patched, per DATA line) deadline, kept
// within the session's lifetime: a client that trickles commands cannot hold a connection
// for ever.
func (c *conn) SetReadDeadline(t time.Time) error {
	if !c.expires.IsZero() && (t.IsZero() || t.After(c.expires)) {
		t = c.expires
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *conn) RemoteAddr() net.Addr {
	if c.proxied {
		return net.TCPAddrFromAddrPort(c.remote)
	}
	return c.Conn.RemoteAddr()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.srv.untrack(c) })
	return err
}

// drain marks c for closing at its next idle moment, and wakes it now if it is idle (blocked
// reading the next command). If a transaction starts in between, go-smtp's next read sets a
// fresh deadline, so the transaction is not cut.
func (c *conn) drain() {
	c.draining.Store(true)
	if !c.busy.Load() {
		c.Conn.SetReadDeadline(time.Now())
	}
}

// endTransaction is called when a transaction ends (RSET, end of DATA, new EHLO). A draining
// connection then reads drainError on its next read, once go-smtp has written the reply.
func (c *conn) endTransaction() { c.busy.Store(false) }

// chanListener feeds one generation's go-smtp server with connections accepted elsewhere.
type chanListener struct {
	ch      chan net.Conn
	done    chan struct{}
	once    sync.Once
	start   sync.Once
	onFirst func()
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// started runs onFirst (starting the go-smtp accept loop) once.
func (l *chanListener) started() {
	l.start.Do(func() {
		if l.onFirst != nil {
			l.onFirst()
		}
	})
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return chanAddr{} }

type chanAddr struct{}

func (chanAddr) Network() string { return "smtpd" }
func (chanAddr) String() string  { return "smtpd" }
