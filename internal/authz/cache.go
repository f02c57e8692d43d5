package authz

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"

	"relay/internal/policy"
)

// defaultCacheSize bounds the number of cached results (SPF and delegation together).
// An entry is about 200 bytes, so the bound keeps the cache near 2 MB however many
// distinct From domains clients send.
const defaultCacheSize = 10000

type kind uint8

const (
	kindSPF kind = iota + 1
	kindDKIM
)

type cacheKey struct {
	kind   kind
	domain string
}

type entry struct {
	key     cacheKey
	check   policy.Check
	expires time.Time
}

// cache holds check results until they expire, evicting the least recently used when
// full. gen changes whenever entries are dropped for a reload, so that an evaluation
// started under the old settings cannot store its result afterwards.
type cache struct {
	gen atomic.Uint64 // changed under mu

	mu  sync.Mutex
	max int
	m   map[cacheKey]*list.Element
	ll  list.List // front: most recently used
}

func newCache(max int) *cache {
	return &cache{max: max, m: map[cacheKey]*list.Element{}}
}

func (c *cache) get(k cacheKey, now time.Time) (policy.Check, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	if !ok {
		return policy.Check{}, false
	}
	e := el.Value.(*entry)
	if !now.Before(e.expires) {
		c.ll.Remove(el)
		delete(c.m, k)
		return policy.Check{}, false
	}
	c.ll.MoveToFront(el)
	return e.check, true
}

func (c *cache) generation() uint64 { return c.gen.Load() }

// put stores a result computed under generation gen, unless the cache was cleared since.
func (c *cache) put(k cacheKey, check policy.Check, expires time.Time, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen.Load() {
		return
	}
	if el, ok := c.m[k]; ok {
		e := el.Value.(*entry)
		e.check, e.expires = check, expires
		c.ll.MoveToFront(el)
		return
	}
	c.m[k] = c.ll.PushFront(&entry{key: k, check: check, expires: expires})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*entry).key)
	}
}

// drop removes every entry of the given kinds.
func (c *cache) drop(kinds ...kind) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	for k, el := range c.m {
		for _, kd := range kinds {
			if k.kind == kd {
				c.ll.Remove(el)
				delete(c.m, k)
				break
			}
		}
	}
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
