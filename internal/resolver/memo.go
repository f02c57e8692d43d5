package resolver

import (
	"context"
	"math"
	"sync"
)

// Memo is a Querier in front of another that asks each question once for as long as the
// Memo lives, even when the same question comes from several goroutines at once, and
// remembers the smallest TTL among the answers it got. Package authz makes one per check
// of one domain, so that the SPF checks of several sending IPs ask each question once and
// the smallest TTL becomes the cache lifetime of the result; nothing in it outlives the
// check. It is safe for concurrent use.
type Memo struct {
	q Querier

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

// NewMemo returns an empty Memo asking q.
func NewMemo(q Querier) *Memo {
	return &Memo{q: q, ttl: math.MaxUint32, memo: map[question]*call{}}
}

// Lookup is q's Lookup, asked once per question (names compared case-insensitively, with
// or without the final dot) for the life of m. A caller that finds its question asked
// already waits for that answer, or until its ctx ends (then a timeout error).
func (m *Memo) Lookup(ctx context.Context, name string, qtype uint16) (Answer, error) {
	q := question{name: canonical(name), qtype: qtype}
	m.mu.Lock()
	c, ok := m.memo[q]
	if !ok {
		c = &call{done: make(chan struct{})}
		m.memo[q] = c
	}
	m.mu.Unlock()
	if ok {
		select {
		case <-c.done:
		case <-ctx.Done():
			return Answer{}, ctxError(ctx.Err(), nil)
		}
		return c.ans, c.err
	}
	c.ans, c.err = m.q.Lookup(ctx, name, qtype)
	if c.err == nil {
		m.mu.Lock()
		m.ttl = min(m.ttl, c.ans.TTL)
		m.mu.Unlock()
	}
	close(c.done)
	return c.ans, c.err
}

// TTL is the smallest TTL of the answers used, ok false when none was.
func (m *Memo) TTL() (uint32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ttl, m.ttl != math.MaxUint32
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
