package smtpd

import (
	"container/list"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
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
	// failWindow is how long a failed AUTH counts against its client address and login
	// (SPEC §7: auth_failures in 10 minutes).
	failWindow = 10 * time.Minute
	// maxFailEntries bounds the client addresses whose failures are remembered; the least
	// recently failed are forgotten first.
	maxFailEntries = 16384
	// maxBcryptWait is the longest an AUTH waits for a free bcrypt slot before it is told
	// to try again later.
	maxBcryptWait = 30 * time.Second
)

// defaultAuthDelay is the wait before a 535: 1s, 2s, 4s, ... up to 16s, by the number of
// recent failures from the client, so guessing gets slower the longer it goes on.
func defaultAuthDelay(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	return time.Second << min(failures-1, 4)
}

// login checks a user name and password against [[users]]. A client address or a login
// that failed auth_failures times within failWindow is refused before any password is
// hashed, even a right one (SPEC §7), so that guessing costs the attacker time and the relay
// nothing. Unknown names are compared against a dummy hash so that both ways of being wrong
// cost the same bcrypt work; at most guard.slots comparisons run at once.
func (s *session) login(mech, identity, name, password string) error {
	g := s.srv.guard
	// The users of the configuration in force now, not of the one the session began with:
	// a reload that removed a user or changed its password applies at once.
	cur := s.srv.cur.Load()
	u, known := cur.users[name]
	login := ""
	if known {
		login = name // unknown names are not counted: they cannot succeed anyway
	}
	ip := failKey(s.ip)
	log := s.logger().With("mech", mech, "login", truncate(name, 64))
	if g.blocked(ip, login, s.srv.now(), cur.authFailures) {
		log.Warn("smtp auth refused: too many recent failures", "code", 454)
		return errAuthLocked
	}

	ctx, cancel := context.WithTimeout(s.srv.ctx, maxBcryptWait)
	defer cancel()
	select {
	case g.slots <- struct{}{}:
	case <-ctx.Done():
		log.Warn("smtp auth refused: no free password check", "code", 454)
		return errAuthBusy
	}
	// Checked again: failures may have passed the limit while this one waited.
	if g.blocked(ip, login, s.srv.now(), cur.authFailures) {
		<-g.slots
		log.Warn("smtp auth refused: too many recent failures", "code", 454)
		return errAuthLocked
	}
	hash := cur.dummy
	if known {
		hash = u.hash
	}
	err := s.srv.compare(hash, []byte(password))
	// RFC 4616: an authorization identity other than the user is a request to act as
	// someone else, which we do not grant.
	ok := known && err == nil && (identity == "" || identity == name)
	n := 0
	if !ok {
		// Counted before the slot is given back, so that parallel guesses see it.
		n = g.fail(ip, login, s.srv.now())
	}
	<-g.slots

	if ok {
		s.mu.Lock()
		s.user = &u
		s.mu.Unlock()
		s.logger().Debug("smtp auth", "mech", mech)
		return nil
	}
	n = max(n, int(s.c.authFails.Add(1)))
	if d := s.srv.authDelay(n); d > 0 {
		time.Sleep(d)
	}
	log = log.With("failures", n)
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

// authGuard counts failed AUTH attempts per client address and per configured login across
// connections and reloads, and bounds the bcrypt work running at once.
type authGuard struct {
	window time.Duration
	slots  chan struct{} // one token per bcrypt comparison in progress

	mu     sync.Mutex
	ips    map[netip.Prefix]*list.Element // of *failEntry, most recent failure at the front
	lru    list.List
	logins map[string]*failEntry // only names in [[users]]: bounded by the configuration
}

type failEntry struct {
	ip   netip.Prefix
	n    int
	last time.Time
}

// newAuthGuard allows half the CPUs (at least one) to hash passwords at once, so a flood of
// AUTH attempts cannot take every core from the clients that send mail.
func newAuthGuard(window time.Duration) *authGuard {
	return &authGuard{
		window: window,
		slots:  make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)),
		ips:    map[netip.Prefix]*list.Element{},
		logins: map[string]*failEntry{},
	}
}

// count is e's number of failures still within the window.
func (g *authGuard) count(e *failEntry, now time.Time) int {
	if e == nil || now.Sub(e.last) > g.window {
		return 0
	}
	return e.n
}

// blocked reports whether ip or login ("" for none) has limit or more recent failures.
func (g *authGuard) blocked(ip netip.Prefix, login string, now time.Time, limit int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	var e *failEntry
	if el := g.ips[ip]; el != nil {
		e = el.Value.(*failEntry)
	}
	return g.count(e, now) >= limit || (login != "" && g.count(g.logins[login], now) >= limit)
}

// fail records one failure for ip and login ("" for none) and returns the larger of their
// counts within the window.
func (g *authGuard) fail(ip netip.Prefix, login string, now time.Time) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	bump := func(e *failEntry) int {
		if now.Sub(e.last) > g.window {
			e.n = 0
		}
		e.n++
		e.last = now
		return e.n
	}
	el := g.ips[ip]
	if el == nil {
		if g.lru.Len() >= maxFailEntries {
			oldest := g.lru.Back()
			delete(g.ips, oldest.Value.(*failEntry).ip)
			g.lru.Remove(oldest)
		}
		el = g.lru.PushFront(&failEntry{ip: ip})
		g.ips[ip] = el
	} else {
		g.lru.MoveToFront(el)
	}
	n := bump(el.Value.(*failEntry))
	if login != "" {
		e := g.logins[login]
		if e == nil {
			e = &failEntry{}
			g.logins[login] = e
		}
		n = max(n, bump(e))
	}
	return n
}

// forget drops the counts of logins that are no longer configured (after a reload).
func (g *authGuard) forget(keep func(login string) bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for name := range g.logins {
		if !keep(name) {
			delete(g.logins, name)
		}
	}
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
