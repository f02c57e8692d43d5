// Package smtptest runs a real SMTP server (go-smtp) on loopback that stands in for an
// upstream smarthost in tests: it keeps what it is sent, can refuse what a test tells it
// to, and offers AUTH and STARTTLS when asked. It also has the small client helpers the
// tests share: sending one message and reading header fields of what arrived.
package smtptest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message the sink accepted.
type Message struct {
	From string
	To   []string
	Data []byte
	User string // the AUTH user of the session, "" when none
	TLS  bool   // the session ran over TLS
}

// Sink is a running SMTP server. Its fields are set by the options of Start; its
// behaviour can be changed at any time through the methods.
type Sink struct {
	Addr string

	srv *smtp.Server

	mu      sync.Mutex
	msgs    []Message
	count   int
	conns   int
	discard bool
	users   map[string]string
	mail    func(from string) error
	rcpt    func(to string) error
	data    func(Message) error
	got     chan struct{}
}

// Option configures a Sink at Start.
type Option func(*Sink)

// WithTLS offers STARTTLS with cfg.
func WithTLS(cfg *tls.Config) Option { return func(s *Sink) { s.srv.TLSConfig = cfg } }

// WithUsers offers AUTH PLAIN (also without TLS) for these user names and passwords.
func WithUsers(users map[string]string) Option { return func(s *Sink) { s.users = users } }

// Discard counts messages without keeping them (for benchmarks).
func Discard() Option { return func(s *Sink) { s.discard = true } }

// WithServer lets a test set go-smtp server fields (limits, timeouts) before it serves.
func WithServer(f func(*smtp.Server)) Option { return func(s *Sink) { f(s.srv) } }

// Start serves on 127.0.0.1:0 until the test ends.
func Start(t testing.TB, opts ...Option) *Sink {
	t.Helper()
	s := &Sink{got: make(chan struct{}, 1)}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.conns++
		s.mu.Unlock()
		_, isTLS := c.TLSConnectionState()
		return &session{s: s, tls: isTLS}, nil
	}))
	s.srv.Domain = "sink.test"
	s.srv.AllowInsecureAuth = true
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.ReadTimeout = 30 * time.Second
	s.srv.WriteTimeout = 30 * time.Second
	s.srv.ErrorLog = nopLogger{}
	for _, o := range opts {
		o(s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	s.Addr = ln.Addr().String()
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

// OnMail makes MAIL FROM answer f's error (nil: accept); nil f accepts every sender.
func (s *Sink) OnMail(f func(from string) error) { s.mu.Lock(); s.mail = f; s.mu.Unlock() }

// OnRcpt makes RCPT TO answer f's error.
func (s *Sink) OnRcpt(f func(to string) error) { s.mu.Lock(); s.rcpt = f; s.mu.Unlock() }

// OnData makes the end of DATA answer f's error; a refused message is not kept.
func (s *Sink) OnData(f func(Message) error) { s.mu.Lock(); s.data = f; s.mu.Unlock() }

// Reject refuses RCPT for addr with err, keeping any other OnRcpt rule out of the way.
func (s *Sink) Reject(addr string, err *smtp.SMTPError) {
	s.OnRcpt(func(to string) error {
		if to == addr {
			return err
		}
		return nil
	})
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
	return s.count
}

// Conns is the number of sessions opened.
func (s *Sink) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
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

type session struct {
	s    *Sink
	tls  bool
	user string
	from string
	to   []string
}

func (ss *session) AuthMechanisms() []string {
	if len(ss.s.users) == 0 {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain || len(ss.s.users) == 0 {
		return nil, smtp.ErrAuthUnsupported
	}
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if p, ok := ss.s.users[user]; !ok || p != pass {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		ss.user = user
		return nil
	}), nil
}

func (ss *session) Reset()        { ss.from, ss.to = "", nil }
func (ss *session) Logout() error { return nil }

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	ss.s.mu.Lock()
	f := ss.s.mail
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(from); err != nil {
			return err
		}
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.s.mu.Lock()
	f := ss.s.rcpt
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := Message{From: ss.from, To: append([]string(nil), ss.to...), Data: b, User: ss.user, TLS: ss.tls}
	ss.s.mu.Lock()
	f := ss.s.data
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(m); err != nil {
			return err
		}
	}
	ss.s.mu.Lock()
	ss.s.count++
	if !ss.s.discard {
		ss.s.msgs = append(ss.s.msgs, m)
	}
	ss.s.mu.Unlock()
	select {
	case ss.s.got <- struct{}{}:
	default:
	}
	return nil
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
