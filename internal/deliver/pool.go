package deliver

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"relay/internal/config"
)

const (
	defaultMaxConnections = 8
	defaultTimeout        = time.Minute
	// defaultIdleTimeout is how long an unused connection stays open. Receivers drop idle
	// clients on their own schedule (Postfix after 300 s, many providers sooner); closing
	// ours first spares a failed command on a dead connection after a lull.
	defaultIdleTimeout = 10 * time.Second
	// quitTimeout bounds the QUIT sent when an idle connection is closed.
	quitTimeout = 5 * time.Second
)

// Pool sends messages over up to cfg.Upstream.MaxConnections connections to the smarthost,
// reused across messages. A connection that breaks is discarded; the message is sent again,
// once, on a newly dialed connection when nothing of it had been sent yet (the upstream
// cannot have accepted it), so a connection the upstream closed while idle, or lost in a
// restart, costs no delivery.
type Pool struct {
	addr     string // host:port
	host     string // TLS server name
	mode     string // starttls | implicit | opportunistic | none
	hostname string // our EHLO name
	username string
	password string
	timeout  time.Duration // per command, and for the end-of-data reply

	log         *slog.Logger
	dialer      func(ctx context.Context, network, addr string) (net.Conn, error)
	idleTimeout time.Duration
	// tlsConfig, when set, replaces the default TLS settings (system roots, TLS 1.2+); the
	// server name is still filled in. Tests trust their self-signed certificate here.
	tlsConfig *tls.Config

	// slots holds one token per connection in use: a sender takes one before it takes an
	// idle connection or dials, so open connections never exceed its capacity.
	slots chan struct{}

	mu     sync.Mutex
	idle   []*conn // oldest first; the newest is reused first so the oldest age out
	closed bool
	reaper *time.Timer
}

// NewPool returns a Pool for cfg.Upstream. It connects lazily, on the first Send. log may
// be nil.
func NewPool(cfg *config.Config, log *slog.Logger) (*Pool, error) {
	u := cfg.Upstream
	host, _, err := net.SplitHostPort(u.Address)
	if err != nil {
		return nil, fmt.Errorf("upstream.address %q: %w", u.Address, err)
	}
	mode := u.TLS
	if mode == "" {
		mode = "starttls"
	}
	switch mode {
	case "starttls", "implicit", "opportunistic", "none":
	default:
		return nil, fmt.Errorf("upstream.tls %q: want starttls, implicit, opportunistic or none", u.TLS)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{
		addr: u.Address, host: host, mode: mode, hostname: cfg.Hostname,
		username: u.Username, password: u.Password, timeout: u.Timeout.Duration,
		log: log, dialer: (&net.Dialer{}).DialContext, idleTimeout: defaultIdleTimeout,
	}
	if p.timeout <= 0 {
		p.timeout = defaultTimeout
	}
	if p.hostname == "" {
		if p.hostname, err = os.Hostname(); err != nil || p.hostname == "" {
			p.hostname = "localhost"
		}
	}
	n := u.MaxConnections
	if n <= 0 {
		n = defaultMaxConnections
	}
	p.slots = make(chan struct{}, n)
	return p, nil
}

// Send sends one message; see Sender.
func (p *Pool) Send(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error) {
	return p.send(ctx, from, to, data, false)
}

// sendAll is Send, except that the transaction is aborted before DATA unless every
// recipient was accepted.
func (p *Pool) sendAll(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error) {
	return p.send(ctx, from, to, data, true)
}

func (p *Pool) send(ctx context.Context, from string, to []string, data []byte, all bool) ([]RcptResult, error) {
	if len(to) == 0 {
		return nil, errors.New("deliver: no recipients")
	}
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fault(fmt.Errorf("%s: waiting for a connection: %w", p.addr, context.Cause(ctx)))
	}
	defer func() { <-p.slots }()

	for attempt := 1; ; attempt++ {
		var (
			c      *conn
			reused bool
			err    error
		)
		if attempt == 1 {
			c, reused, err = p.get(ctx)
		} else {
			// The retry dials: an idle connection is as old as the one that just broke, and
			// after an upstream restart just as dead, which would spend the only retry on it.
			c, err = p.open(ctx)
		}
		if err != nil {
			return nil, err
		}
		knownGood := c.lastUsed // transact and put leave it alone on a broken connection
		res, bodySent, err := p.transact(ctx, c, from, to, data, all)
		broken := c.broken
		p.put(c) // closes c when broken, before the retry dials: the slot holds one connection
		if broken && reused && ctxErr(ctx) == nil {
			p.dropSuspects(knownGood)
		}
		if err != nil && broken && !bodySent && attempt == 1 && ctxErr(ctx) == nil {
			p.log.Info("upstream connection broke before DATA; sending again on a new connection", "upstream", p.addr, "err", err)
			continue
		}
		if err != nil {
			return nil, err
		}
		return res, nil
	}
}

// transact runs one mail transaction on c. bodySent reports whether any of the message
// went out (after that, the upstream may have it: no immediate retry).
func (p *Pool) transact(ctx context.Context, c *conn, from string, to []string, data []byte, all bool) (res []RcptResult, bodySent bool, err error) {
	disarm := c.raw.arm(ctx, p.timeout)
	defer func() {
		if !disarm() {
			c.broken = true // the context cut the I/O, perhaps mid-reply
		}
	}()

	if c.dirty {
		// An aborted or failed transaction may still be open upstream (RFC 5321 §4.1.1.5).
		// Only then: after a completed DATA the upstream is ready for MAIL, and go-smtp
		// follows every RSET with a new EHLO, two round trips per message.
		if err := c.client.Reset(); err != nil {
			// Even a reply: a connection that cannot reset is no place for the message.
			c.broken = true
			return nil, false, fault(fmt.Errorf("%s: RSET: %w", p.addr, err))
		}
		c.dirty = false
	}
	opts, err := p.mailOptions(c, from, to, data)
	if err != nil {
		return nil, false, err
	}
	if err := c.client.Mail(from, opts); err != nil {
		return nil, false, p.fail(ctx, c, "MAIL FROM", err) // refused: no transaction
	}
	c.dirty = true
	res = make([]RcptResult, len(to))
	accepted := 0
	for i, rcpt := range to {
		err := c.client.Rcpt(rcpt, nil)
		var se *smtp.SMTPError
		switch {
		case err == nil:
			res[i] = RcptResult{Rcpt: rcpt, Code: 250}
			accepted++
		case errors.As(err, &se) && se.Code != 421:
			res[i] = RcptResult{Rcpt: rcpt, Code: se.Code, Enhanced: se.EnhancedCode, Msg: se.Message}
		default:
			return nil, false, p.fail(ctx, c, "RCPT TO", err)
		}
	}
	if accepted == 0 || (all && accepted < len(to)) {
		// Nothing is sent: RSET ends the transaction so the connection can be reused. If
		// RSET fails the connection goes, and the transaction with it.
		if err := c.client.Reset(); err != nil {
			c.broken = true
		} else {
			c.dirty = false
		}
		return res, false, nil
	}
	w, err := c.client.Data()
	if err != nil {
		return nil, false, p.fail(ctx, c, "DATA", err)
	}
	// The body but its last piece leaves in one write; CloseWithResponse sends the rest
	// with the final dot before it reads the reply.
	c.raw.hold()
	_, err = w.Write(data)
	if rerr := c.raw.release(); err == nil {
		err = rerr
	}
	if err != nil {
		return nil, true, p.fail(ctx, c, "DATA", err)
	}
	if _, err := w.CloseWithResponse(); err != nil {
		// A reply to the final dot ends the transaction, even a refusal.
		c.dirty = !errors.As(err, new(*smtp.SMTPError))
		return nil, true, p.fail(ctx, c, "end of DATA", err)
	}
	c.dirty = false
	return res, true, nil
}

// fail turns the error of a command into an *Error: an upstream reply keeps its code and the
// connection; anything else is a fault and the connection is discarded.
func (p *Pool) fail(ctx context.Context, c *conn, cmd string, err error) *Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.Code == 421 {
			c.broken = true // RFC 5321 §3.8: the upstream is closing the connection
		}
		return &Error{Code: se.Code, Enhanced: se.EnhancedCode, Msg: se.Message, Err: fmt.Errorf("%s: %s: %w", p.addr, cmd, err)}
	}
	c.broken = true
	if cerr := ctxErr(ctx); cerr != nil {
		err = fmt.Errorf("%w (%w)", err, cerr)
	}
	return fault(fmt.Errorf("%s: %s: %w", p.addr, cmd, err))
}

// ctxErr is ctx's error, or DeadlineExceeded once its deadline has passed: the connection's
// deadline, set to the same instant, may fire before the context's own timer reports it.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// mailOptions declares SIZE, and SMTPUTF8 when an address or the header is not ASCII
// (RFC 6531, RFC 6532) and the upstream offers it. go-smtp adds BODY=8BITMIME by itself
// whenever the upstream offers 8BITMIME.
func (p *Pool) mailOptions(c *conn, from string, to []string, data []byte) (*smtp.MailOptions, error) {
	opts := &smtp.MailOptions{Size: int64(len(data))}
	utf8Addr := !isASCII([]byte(from)) || slices.ContainsFunc(to, func(s string) bool { return !isASCII([]byte(s)) })
	if !utf8Addr && isASCII(header(data)) {
		return opts, nil
	}
	if ok, _ := c.client.Extension("SMTPUTF8"); ok {
		opts.UTF8 = true
		return opts, nil
	}
	if utf8Addr {
		// RFC 6531 §3.4: a non-ASCII mailbox cannot be downgraded. This is our reply, not
		// the upstream's; it is permanent like the one the upstream would give.
		return nil, &Error{Code: 553, Enhanced: [3]int{5, 6, 7}, Msg: "the upstream does not support SMTPUTF8, needed for a non-ASCII address"}
	}
	// Only the header is UTF-8: it goes out as 8-bit content, which receivers without
	// SMTPUTF8 commonly accept; refusing it would bounce mail that would have arrived.
	return opts, nil
}

// header returns the header section of a message: everything before the first empty line.
func header(data []byte) []byte {
	if i := bytes.Index(data, []byte("\n\r\n")); i >= 0 {
		data = data[:i]
	}
	if i := bytes.Index(data, []byte("\n\n")); i >= 0 {
		data = data[:i]
	}
	return data
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// get returns the most recently used idle connection (reused), or a new one.
func (p *Pool) get(ctx context.Context) (c *conn, reused bool, err error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, false, fault(fmt.Errorf("%s: sender closed", p.addr))
	}
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, true, nil
	}
	p.mu.Unlock()
	c, err = p.open(ctx)
	return c, false, err
}

// open dials a new connection, never taking an idle one. The caller holds a slot.
func (p *Pool) open(ctx context.Context) (*conn, error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, fault(fmt.Errorf("%s: sender closed", p.addr))
	}
	c, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	p.log.Debug("upstream connection opened", "upstream", p.addr, "tls", c.tls)
	return c, nil
}

// dropSuspects closes the idle connections last used no later than knownGood, the last
// moment a connection that has just broken was known to work.
//
// Whatever broke that connection in the meantime (an upstream restart, an idle timeout on
// the upstream's side) had at least as long to hit these: after a restart all of them are
// dead, and each would cost a sender a failed command. Connections returned since then
// worked more recently, perhaps after the event, so they are kept rather than dropping all
// idle ones: reconnecting costs a TLS handshake and AUTH, and a dead one among the kept is
// still caught by its own sender's retry on a new connection. Because get hands out the
// newest idle connection first, in practice this drops every connection that was idle when
// the broken one was taken.
//
// They are closed without QUIT: presumed dead, they would hold the sender until quitTimeout
// for a reply that cannot come.
func (p *Pool) dropSuspects(knownGood time.Time) {
	stale := p.takeIdle(knownGood.Add(1)) // Before(t): last used at knownGood or earlier
	for _, c := range stale {
		c.client.Close()
	}
	if len(stale) > 0 {
		p.log.Info("upstream connection broke; closed the idle connections at least as old", "upstream", p.addr, "closed", len(stale))
	}
}

// put returns c to the idle list, or closes it when it is broken or the pool is closed.
func (p *Pool) put(c *conn) {
	if c.broken {
		c.client.Close()
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.close(min(quitTimeout, p.timeout))
		return
	}
	c.lastUsed = time.Now() // under the lock, so the idle list stays ordered by it
	p.idle = append(p.idle, c)
	if p.reaper == nil {
		p.reaper = time.AfterFunc(p.idleTimeout, p.reap)
	}
	p.mu.Unlock()
}

// reap closes the connections idle for idleTimeout and comes back for the others.
func (p *Pool) reap() {
	p.closeIdle(time.Now().Add(-p.idleTimeout))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reaper = nil
	if len(p.idle) > 0 && !p.closed {
		p.reaper = time.AfterFunc(time.Until(p.idle[0].lastUsed.Add(p.idleTimeout)), p.reap)
	}
}

// closeIdle closes the idle connections last used before t and returns how many.
func (p *Pool) closeIdle(t time.Time) int {
	stale := p.takeIdle(t)
	var wg sync.WaitGroup
	for _, c := range stale {
		wg.Go(func() { c.close(min(quitTimeout, p.timeout)) })
	}
	wg.Wait()
	return len(stale)
}

// takeIdle removes from the idle list the connections last used before t and returns them.
func (p *Pool) takeIdle(t time.Time) []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for n < len(p.idle) && p.idle[n].lastUsed.Before(t) {
		n++
	}
	stale := slices.Clone(p.idle[:n])
	p.idle = slices.Delete(p.idle, 0, n)
	return stale
}

// Close closes the idle connections (QUIT) and makes later sends fail. Connections in use
// are closed when their message is done.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	if p.reaper != nil {
		p.reaper.Stop()
		p.reaper = nil
	}
	p.mu.Unlock()
	p.closeIdle(time.Now().Add(time.Hour)) // all: none was used in the future
	return nil
}
