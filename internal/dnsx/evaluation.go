package dnsx

import (
	"context"
	"fmt"
	"math"
	"net"
	"strings"
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
// always asks for A (§5.7) and the library does not tell the two uses apart. It hands
// the library every SPF record checked and rewritten (spfmacro.go), and takes the names
// the library asks for back from libName form. One check_host uses it, from one
// goroutine (the library makes no other).
type view struct {
	e   *evaluation
	env macroEnv

	ptrDone  bool     // ptrNames is known
	ptrNames []string // validated names of env.ip, for %{p}
}

// LookupTXT is where the library reads the record of every domain it evaluates: the
// sender's, and each include: and redirect= target. A record that ParseSPF rejects is
// an error the library turns into permerror (it is not a *net.DNSError), so a syntax
// error anywhere in any record consulted makes the whole check a permerror (§4.6).
func (v *view) LookupTXT(ctx context.Context, name string) ([]string, error) {
	domain := realName(name)
	txts, err := lookupTXT(ctx, v.e.lookup, domain)
	if err != nil {
		return nil, err
	}
	i, n := -1, 0
	for j, txt := range txts {
		if IsSPF(txt) {
			i, n = j, n+1
		}
	}
	if n != 1 {
		return txts, nil // none is "none"; several, the library's permerror (§4.5)
	}
	rec, err := ParseSPF(txts[i])
	if err != nil {
		return nil, fmt.Errorf("SPF record of %s: %w", strings.TrimSuffix(domain, "."), err)
	}
	return []string{v.libraryRecord(ctx, rec, domain)}, nil
}

func (v *view) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	mxs, err := lookupMX(ctx, v.e.lookup, realName(name))
	for _, mx := range mxs {
		mx.Host = libName(mx.Host)
	}
	return mxs, err
}

func (v *view) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return lookupIP(ctx, v.e.lookup, realName(host), true, !v.env.ip.Is4())
}

func (v *view) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	names, err := lookupAddr(ctx, v.e.lookup, addr)
	for i, n := range names {
		names[i] = libName(n)
	}
	return names, err
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
