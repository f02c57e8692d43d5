package httpd

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"runtime"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// maxBcryptWait is how long a request waits for a free bcrypt slot before it is told 503,
// as smtpd's AUTH does: a flood of wrong passwords costs bounded CPU, not every core.
const maxBcryptWait = 5 * time.Second

// basicAuth checks [http] username and password_hash. A browser sends the credentials
// with every request (the page, its CSS and script, each fetch), so the last pair that
// verified is remembered, as a keyed hash together with the password hash it matched: the
// same pair again costs a SHA-256, not a bcrypt; another pair, or a reloaded hash, costs
// the bcrypt again.
type basicAuth struct {
	slots chan struct{} // one token per bcrypt comparison in progress
	key   [32]byte      // random per process: the remembered hash says nothing outside it

	mu     sync.Mutex
	lastOK [32]byte
}

func newBasicAuth() *basicAuth {
	a := &basicAuth{slots: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))}
	rand.Read(a.key[:])
	return a
}

func (a *basicAuth) sum(hash, user, pass string) [32]byte {
	h := sha256.New()
	h.Write(a.key[:])
	for _, s := range []string{hash, user, pass} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// check reports whether user and pass match; busy is true when no bcrypt slot came free
// in time (the answer is then unknown).
func (a *basicAuth) check(r *http.Request, wantUser, hash, user, pass string) (ok, busy bool) {
	sum := a.sum(hash, user, pass)
	a.mu.Lock()
	remembered := subtle.ConstantTimeCompare(sum[:], a.lastOK[:]) == 1
	a.mu.Unlock()
	if remembered {
		return true, false
	}
	t := time.NewTimer(maxBcryptWait)
	defer t.Stop()
	select {
	case a.slots <- struct{}{}:
	case <-t.C:
		return false, true
	case <-r.Context().Done():
		return false, true
	}
	// Compare the password even for a wrong user name, so that the time taken does not
	// tell whether the name was right.
	err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(pass))
	<-a.slots
	userOK := subtle.ConstantTimeCompare([]byte(user), []byte(wantUser)) == 1
	if err != nil || !userOK {
		return false, false
	}
	a.mu.Lock()
	a.lastOK = sum
	a.mu.Unlock()
	return true, false
}

// requireAuth guards h with basic auth when [http] sets a username (validation makes
// username and password_hash come together).
func (s *Server) requireAuth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cfg := s.cfg.Load().HTTP
		if cfg.Username == "" {
			h.ServeHTTP(w, r)
			return
		}
		user, pass, given := r.BasicAuth()
		if given {
			ok, busy := s.auth.check(r, cfg.Username, cfg.PasswordHash, user, pass)
			if busy {
				w.Header().Set("Retry-After", "5")
				http.Error(w, "server busy: try again", http.StatusServiceUnavailable)
				return
			}
			if ok {
				h.ServeHTTP(w, r)
				return
			}
			s.log.Warn("http: basic auth failed", "client", r.RemoteAddr)
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="relay", charset="UTF-8"`)
		http.Error(w, "authentication required", http.StatusUnauthorized)
	})
}
