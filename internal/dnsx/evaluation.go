package dnsx

import (
	"context"
	"math"
	"net"
	"sync"
)

// evaluation is the DNS side of one check of one domain: it remembers every answer (so
// the checks of several sending IPs ask each question once, even when they run at the
// same time) and the smallest TTL among them, which becomes the cache lifetime of the
// result. A new one is made per check; nothing in it outlives the check.
type evaluation struct {
	r *Resolver

	mu   sync.Mutex
	ttl  uint32 // smallest TTL seen; math.MaxUint32 while none
	memo map[question]*call
}

type question struct {
	name  string
	qtype uint16
}

type call struct {
	done chan struct{}
	ans  Answer
	err  error
}

func newEvaluation(r *Resolver) *evaluation {
	return &evaluation{r: r, ttl: math.MaxUint32, memo: map[question]*call{}}
}

// lookup is Resolver.Lookup, asked once per question for the whole evaluation.
func (e *evaluation) lookup(ctx context.Context, name string, qtype uint16) (Answer, error) {
	q := question{name: canonical(name), qtype: qtype}
	e.mu.Lock()
	c, ok := e.memo[q]
	if !ok {
		c = &call{done: make(chan struct{})}
		e.memo[q] = c
	}
	e.mu.Unlock()
	if ok {
		select {
		case <-c.done:
		case <-ctx.Done():
			return Answer{}, ctxError(ctx.Err(), nil)
		}
		return c.ans, c.err
	}
	c.ans, c.err = e.r.Lookup(ctx, name, qtype)
	if c.err == nil {
		e.mu.Lock()
		e.ttl = min(e.ttl, c.ans.TTL)
		e.mu.Unlock()
	}
	close(c.done)
	return c.ans, c.err
}

// TTL is the smallest TTL of the answers used, ok false when none was.
func (e *evaluation) TTL() (uint32, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ttl, e.ttl != math.MaxUint32
}

// view is the spf.DNSResolver for checking one IP: address lookups ask for the record
// type of that IP (RFC 7208 §5.3-5.5), plus A for an IPv6 client because "exists"
// always asks for A (§5.7) and the library does not tell the two uses apart.
type view struct {
	e  *evaluation
	v4 bool
}

func (v view) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return lookupTXT(ctx, v.e.lookup, name)
}

func (v view) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return lookupMX(ctx, v.e.lookup, name)
}

func (v view) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return lookupIP(ctx, v.e.lookup, host, true, !v.v4)
}

func (v view) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return lookupAddr(ctx, v.e.lookup, addr)
}

// canonical lower-cases ASCII letters and adds the final dot, so that differently
// written names share one memo entry (DNS names compare case-insensitively, RFC 4343).
func canonical(name string) string {
	lower := true
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			lower = false
			break
		}
	}
	if !lower {
		b := []byte(name)
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				b[i] = c + 'a' - 'A'
			}
		}
		name = string(b)
	}
	if len(name) == 0 || name[len(name)-1] != '.' {
		name += "."
	}
	return name
}
