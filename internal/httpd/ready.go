package httpd

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// readyResult is one evaluation of /readyz: a line per failed check, none when ready.
type readyResult struct {
	failed []string
	at     time.Time
}

// readyz answers 200 "ready" when the relay can take mail now: the configuration is
// loaded, the spool is writable and the upstream is reachable (SPEC §10), else 503 with
// one line per failed check. The result is reused for ReadyTTL and computed once however
// many probes ask at the same time (singleflight), so load balancers cannot turn their
// probes into a stream of connections to the smarthost.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	res := s.readiness()
	if len(res.failed) == 0 {
		plain(w, http.StatusOK, "ready\n")
		return
	}
	plain(w, http.StatusServiceUnavailable, strings.Join(res.failed, "\n")+"\n")
}

func (s *Server) readiness() *readyResult {
	if last := s.ready.last.Load(); last != nil && time.Since(last.at) < s.o.ReadyTTL {
		return last
	}
	v, _, _ := s.ready.group.Do("ready", func() (any, error) {
		if last := s.ready.last.Load(); last != nil && time.Since(last.at) < s.o.ReadyTTL {
			return last, nil
		}
		// Not the request's context: one probe that gives up must not fail the others
		// waiting on the same check.
		ctx, cancel := context.WithTimeout(context.Background(), s.o.UpstreamTimeout)
		defer cancel()
		res := &readyResult{failed: s.check(ctx), at: time.Now()}
		s.ready.last.Store(res)
		return res, nil
	})
	return v.(*readyResult)
}

// check runs the readiness checks and returns a line per failure.
func (s *Server) check(ctx context.Context) []string {
	cfg := s.cfg.Load()
	if cfg == nil || s.o.Pipeline == nil || s.o.Pipeline.State() == nil {
		return []string{"config: not loaded"}
	}
	var failed []string
	if s.o.Spool != nil {
		if err := s.o.Spool.Writable(); err != nil {
			failed = append(failed, "spool: "+oneLine(err.Error()))
		}
	}
	// A dry run sends nothing, so the upstream does not matter to it.
	if s.o.Mode != "dry-run" && !cfg.HTTP.ReadyWithoutUpstream {
		if err := upstreamReachable(ctx, cfg.Upstream.Address); err != nil {
			failed = append(failed, "upstream: "+oneLine(err.Error()))
		}
	}
	return failed
}

// upstreamReachable dials the smarthost (a TCP connection, closed at once: no SMTP
// transaction, nothing in its logs beyond a connection) or, for "file:DIR", writes and
// removes a file in the outbox, which also holds under root, where permission bits do not.
func upstreamReachable(ctx context.Context, addr string) error {
	if dir, ok := strings.CutPrefix(addr, "file:"); ok {
		f, err := os.CreateTemp(dir, ".relay-ready-*")
		if err != nil {
			return fmt.Errorf("outbox %s: %w", dir, err)
		}
		name := f.Name()
		err = f.Close()
		if rerr := os.Remove(name); err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("outbox %s: %w", filepath.Dir(name), err)
		}
		return nil
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// oneLine keeps an error on its line of the plain-text answer.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
