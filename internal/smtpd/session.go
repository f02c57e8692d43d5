package smtpd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"relay/internal/config"
)

// maxPooledBuf is the largest DATA buffer (capacity) kept for reuse. Most mail is well
// under it; larger messages get a fresh buffer that the garbage collector takes back.
const maxPooledBuf = 1 << 20

// session is one go-smtp Session: the state of one connection between EHLO (or STARTTLS)
// and its end. Connection-wide state that must survive STARTTLS lives in conn.
type session struct {
	srv      *Server
	g        *generation
	sc       *smtp.Conn
	c        *conn
	ip       netip.Addr
	tls      bool
	loopback bool
	trusted  bool // ip is the client's own address (not a PROXY header without one)
	allowed  bool // ip is in allow_networks (as the session began: see current)

	// mu guards what follows: with BDAT, go-smtp runs Data on its own goroutine while the
	// connection's goroutine may call Reset or Logout.
	mu   sync.Mutex
	user *user
	inTx bool
	from string
	to   []string
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

func (s *Server) newSession(g *generation, sc *smtp.Conn) (*session, error) {
	nc, isTLS := sc.Conn(), false
	if tc, ok := nc.(*tls.Conn); ok {
		nc, isTLS = tc.NetConn(), true
	}
	c, ok := nc.(*conn)
	if !ok {
		return nil, errInternal // every connection comes through dispatch
	}
	if c.kicked.Load() {
		return nil, errTooManyAuthFailures
	}
	if !validText(sc.Hostname()) {
		return nil, errBadHelo
	}
	ip := c.remote.Addr()
	trusted := ip.IsValid() && !c.noClient // ip is the client's own address
	return &session{
		srv:      s,
		g:        g,
		sc:       sc,
		c:        c,
		ip:       ip,
		tls:      isTLS,
		loopback: trusted && s.isLoopback(ip),
		trusted:  trusted,
		allowed:  trusted && inPrefixes(ip, g.cfg.SMTP.Networks),
	}, nil
}

// logger returns the server log with the fields every session line carries.
func (s *session) logger() *slog.Logger {
	s.mu.Lock()
	name := ""
	if s.user != nil {
		name = s.user.name
	}
	s.mu.Unlock()
	return s.srv.log.With("client", s.ip.String(), "user", name)
}

// authAllowed: AUTH is offered over TLS, on loopback, or when allow_insecure_auth says so,
// and only when there is someone to authenticate.
func (s *session) authAllowed() bool {
	return len(s.g.users) > 0 && (s.tls || s.loopback || s.g.cfg.SMTP.AllowInsecureAuth)
}

func (s *session) AuthMechanisms() []string {
	if !s.authAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.c.kicked.Load() {
		return nil, errTooManyAuthFailures
	}
	if len(s.g.users) == 0 {
		return nil, smtp.ErrAuthUnsupported
	}
	if !s.authAllowed() {
		return nil, errEncryptionRequired
	}
	s.mu.Lock()
	inTx := s.inTx
	s.mu.Unlock()
	if inTx {
		return nil, errAuthInTransaction
	}
	switch mech {
	case sasl.Plain:
		return saslServer{sasl.NewPlainServer(func(identity, username, password string) error {
			return s.login(mech, identity, username, password)
		})}, nil
	case sasl.Login:
		return &loginServer{check: func(username, password string) error {
			return s.login(mech, "", username, password)
		}}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.c.kicked.Load() {
		return errTooManyAuthFailures
	}
	// go-smtp lets a repeated EHLO change the name without a new Session.
	if !validText(s.sc.Hostname()) {
		return errBadHelo
	}
	if from != "" {
		if r := addressLimit(from); r != nil {
			s.logger().Info("smtp mail rejected", "from", clip(from), "code", r.Code, "reason", r.Message)
			return r
		}
		if !validAddress(from) {
			return errBadSender
		}
	}
	s.mu.Lock()
	inTx := s.inTx
	s.mu.Unlock()
	if inTx {
		return errNestedMail
	}
	u, allowed, cur, err := s.current()
	if err != nil {
		s.logger().Warn("smtp mail rejected", "from", clip(from), "code", 530, "reason", "user removed by a reload")
		return err
	}
	if u == nil && !allowed {
		reason := "not authenticated, not in allow_networks"
		if s.c.noClient {
			reason = "not authenticated, PROXY header without a client address"
		}
		s.logger().Info("smtp mail rejected", "from", clip(from), "code", 530, "reason", reason)
		return errAuthRequired
	}
	var name string
	var userRate config.Rate
	if u != nil {
		name, userRate = u.name, u.rate
	}
	if which := s.srv.limits.allow(s.srv.now(), name, userRate, networkKey(s.ip), cur.cfg.SMTP.NetworkLimit); which != "" {
		s.logger().Warn("smtp mail rejected", "from", clip(from), "code", 451, "reason", which+" rate limit")
		s.srv.Metrics.RateLimited()
		return errRateLimited
	}
	s.mu.Lock()
	s.inTx, s.from, s.to = true, from, nil
	s.mu.Unlock()
	s.c.busy.Store(true)
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.c.kicked.Load() {
		return errTooManyAuthFailures
	}
	if r := addressLimit(to); r != nil {
		s.logger().Info("smtp rcpt rejected", "to", clip(to), "code", r.Code, "reason", r.Message)
		return r
	}
	if !validAddress(to) {
		return errBadRecipient
	}
	s.mu.Lock()
	s.to = append(s.to, to)
	s.mu.Unlock()
	return nil
}

// Data reads the message and hands it to the Handler.
//
// SMTP smuggling (SPEC §7): go-smtp's dataReader (data.go) is net/textproto's dot reader
// without the CRLF→LF rewrite. Its state machine reaches end-of-data only through
// stateBeginLine '.' → stateDot '\r' → stateDotCR '\n', and stateBeginLine is entered only at
// the start of DATA or by '\n' in stateCR, which only '\r' enters. So only <CRLF>.<CRLF> (or
// ".\r\n" as the very first line) ends a message; a bare LF or CR, "\n.\r\n", "\r.\n",
// "\n.\n" are content. TestSmuggling and FuzzDataEnd hold it to that.
func (s *session) Data(r io.Reader) error {
	if s.c.kicked.Load() {
		return errTooManyAuthFailures
	}
	s.mu.Lock()
	from, to := s.from, slices.Clone(s.to)
	s.mu.Unlock()

	buf := s.srv.getBuf()
	defer s.srv.putBuf(buf)
	// go-smtp already stops at MaxMessageBytes (ErrDataTooLarge, and the BDAT byte count);
	// the limit here keeps that promise for our buffer whatever go-smtp does.
	_, err := buf.ReadFrom(io.LimitReader(r, s.g.maxBytes+1))
	if err == nil && int64(buf.Len()) > s.g.maxBytes {
		err = smtp.ErrDataTooLarge
	}
	if err != nil {
		reply := errInternal
		switch {
		case errors.Is(err, smtp.ErrTooLongLine):
			reply = errLineTooLong
		case errors.As(err, new(*smtp.SMTPError)):
			reply = toSMTP(err)
		case isTimeout(err):
			// A client silent mid-message: the rest of its data cannot be told from the
			// next command, so the connection ends after the reply.
			reply = errDataTimeout
			s.c.kicked.Store(true)
		}
		s.logger().Info("smtp data rejected", "from", from, "code", reply.Code, "err", err)
		return reply
	}
	// The user may have been removed, or the client's network taken out of allow_networks,
	// by a reload since MAIL.
	u, allowed, _, err := s.current()
	if err == nil && u == nil && !allowed {
		err = errAuthRequired
	}
	if err != nil {
		s.logger().Warn("smtp data rejected", "from", from, "code", 530, "reason", "no longer authorized after a reload")
		return err
	}
	if s.g.bareReject && hasBareNewline(buf.Bytes()) {
		s.logger().Info("smtp data rejected", "from", from, "code", 550, "reason", "bare CR or LF")
		return errBareNewline
	}

	now := s.srv.now()
	in := &Inbound{
		ClientIP:       s.ip,
		Helo:           s.sc.Hostname(),
		TLS:            s.tls,
		NetworkAllowed: allowed,
		From:           from,
		To:             to,
		Data:           buf.Bytes(),
		Received:       now,
	}
	if u != nil {
		in.User, in.UserUnit = u.name, u.unit
	}
	ctx, cancel := context.WithTimeout(s.srv.ctx, s.g.timeout)
	text, err := s.srv.h.Handle(ctx, in)
	cancel()
	if err != nil {
		reply := toSMTP(err)
		if reply == errInternal {
			s.logger().Error("smtp message failed", "from", from, "code", reply.Code, "err", err)
		} else {
			s.logger().Info("smtp message rejected", "from", from, "code", reply.Code, "reply", reply.Message)
		}
		return reply
	}
	if text = oneLine(text); text == "" {
		text = "Ok"
	}
	// go-smtp writes a returned *SMTPError's code as it is (conn.go dataErrorToStatus), so a
	// 250 "error" is how the Handler's text reaches the client; with PIPELINING too, since
	// go-smtp answers each command in order on the connection's goroutine.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: text}
}

// current returns the session's user and network trust under the configuration in force
// now: a reload applies to sessions already open (SPEC §3), so a user removed from
// [[users]] (or whose password changed) cannot start another message on a session that
// authenticated before, and a network removed from allow_networks loses its trust.
func (s *session) current() (u *user, allowed bool, g *generation, err error) {
	g = s.srv.cur.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	allowed = s.trusted && inPrefixes(s.ip, g.cfg.SMTP.Networks)
	if s.user == nil {
		return nil, allowed, g, nil
	}
	now, ok := g.users[s.user.name]
	if !ok || !bytes.Equal(now.hash, s.user.hash) {
		s.user = nil
		return nil, allowed, g, errUserGone
	}
	s.user = &now // its unit and rate as they are now
	return s.user, allowed, g, nil
}

// hasBareNewline reports whether b holds a CR not followed by LF or an LF not preceded by
// CR: then the CRs, the LFs and the CRLFs would not all be equal in number.
func hasBareNewline(b []byte) bool {
	pairs := bytes.Count(b, []byte("\r\n"))
	return bytes.Count(b, []byte("\n")) != pairs || bytes.Count(b, []byte("\r")) != pairs
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// clip bounds a client-supplied value quoted in a log line (SPEC §7).
func clip(s string) string { return truncate(s, 256) }

func (s *session) Reset() {
	s.mu.Lock()
	s.inTx, s.from, s.to = false, "", nil
	s.mu.Unlock()
	s.c.endTransaction()
}

func (s *session) Logout() error {
	s.Reset()
	return nil
}

func (s *Server) getBuf() *bytes.Buffer {
	if b, ok := s.bufs.Get().(*bytes.Buffer); ok {
		b.Reset()
		return b
	}
	return new(bytes.Buffer)
}

// putBuf returns b to the pool unless it has grown past maxPooledBuf: a pooled buffer keeps
// its capacity, so one large message would otherwise pin that much memory per pooled buffer
// for as long as the pool holds it.
func (s *Server) putBuf(b *bytes.Buffer) {
	if b.Cap() > maxPooledBuf {
		return
	}
	s.bufs.Put(b)
}
