package smtpd

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"
)

const (
	// maxAuthFailures failed AUTH attempts from one client (this connection, or its address
	// within failWindow) and the connection is closed after the reply.
	maxAuthFailures = 3
	failWindow      = 15 * time.Minute
)

// defaultAuthDelay is the wait before a 535: 1s, 2s, 4s, ... up to 16s, by the number of
// recent failures from the client, so guessing gets slower the longer it goes on.
func defaultAuthDelay(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	return time.Second << min(failures-1, 4)
}

// login checks a user name and password against [[users]]. Unknown names are compared
// against a dummy hash so that both ways of being wrong cost the same bcrypt work.
func (s *session) login(mech, identity, name, password string) error {
	u, known := s.g.users[name]
	hash := s.g.dummy
	if known {
		hash = u.hash
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	// RFC 4616: an authorization identity other than the user is a request to act as
	// someone else, which we do not grant.
	if known && err == nil && (identity == "" || identity == name) {
		s.mu.Lock()
		s.user = &u
		s.mu.Unlock()
		s.logger().Debug("smtp auth", "mech", mech)
		return nil
	}

	n := max(s.srv.fails.add(failKey(s.ip), s.srv.now()), int(s.c.authFails.Add(1)))
	if d := s.srv.authDelay(n); d > 0 {
		time.Sleep(d)
	}
	log := s.logger().With("mech", mech, "login", truncate(name, 64), "failures", n)
	if n >= maxAuthFailures {
		// conn.Read now reports EOF, so go-smtp closes the connection after this reply; any
		// command already pipelined behind it gets the same 421.
		s.c.kicked.Store(true)
		log.Warn("smtp auth failed, disconnecting")
		return errTooManyAuthFailures
	}
	log.Warn("smtp auth failed")
	return errAuthFailed
}

func dummyHash(cost int) ([]byte, error) {
	pw := make([]byte, 16)
	rand.Read(pw)
	h, err := bcrypt.GenerateFromPassword(pw, max(cost, bcrypt.MinCost))
	if err != nil {
		return nil, fmt.Errorf("smtpd: dummy password hash: %w", err)
	}
	return h, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// saslServer turns the mechanism's own protocol errors (a PLAIN response without its two
// NULs, a response after the end) into 501: go-smtp would send any non-SMTPError as a 454
// with the library's text.
type saslServer struct{ sasl.Server }

func (s saslServer) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := s.Server.Next(response)
	if err != nil && !errors.As(err, new(*smtp.SMTPError)) {
		err = errBadAuthResponse
	}
	return challenge, done, err
}

// loginServer is the server side of AUTH LOGIN (draft-murchison-sasl-login; go-sasl has only
// the client): the user name, then the password, each after a prompt. A client may send the
// user name as the initial response ("AUTH LOGIN dXNlcg==") and skip the first prompt.
type loginServer struct {
	check func(username, password string) error
	state int
	user  string
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.state {
	case 0:
		if response == nil {
			l.state = 1
			return []byte("Username:"), false, nil
		}
		l.user, l.state = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.user, l.state = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.state = 3
		return nil, true, l.check(l.user, string(response))
	}
	return nil, false, errBadAuthResponse
}

// failures counts failed AUTH attempts per client address for a while, so a client cannot
// reset its count by reconnecting.
type failures struct {
	window time.Duration
	mu     sync.Mutex
	m      map[netip.Prefix]failEntry
}

type failEntry struct {
	n    int
	last time.Time
}

func newFailures(window time.Duration) *failures {
	return &failures{window: window, m: map[netip.Prefix]failEntry{}}
}

// add records one failure for k and returns the number within the window.
func (f *failures) add(k netip.Prefix, now time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.m) >= 4096 {
		for k, e := range f.m {
			if now.Sub(e.last) > f.window {
				delete(f.m, k)
			}
		}
	}
	e := f.m[k]
	if now.Sub(e.last) > f.window {
		e.n = 0
	}
	e.n++
	e.last = now
	f.m[k] = e
	return e.n
}

// failKey is the client's address, or its /64 for IPv6, where one host commonly owns the
// whole prefix.
func failKey(ip netip.Addr) netip.Prefix {
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p
	}
	return netip.PrefixFrom(ip, ip.BitLen())
}
