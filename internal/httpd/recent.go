package httpd

import (
	"sync"

	"relay/internal/queue"
)

// RecentSize is how many delivery outcomes the admin page shows.
const RecentSize = 20

// Recent keeps the last outcomes of delivery attempts, newest last, in a fixed ring: the
// queue's Observe hook adds to it, the admin page reads it. Its methods are safe for
// concurrent use and on a nil *Recent (which keeps nothing).
type Recent struct {
	mu   sync.Mutex
	ring []queue.Outcome
	next int // where the next outcome goes
	full bool
}

// NewRecent keeps the last n outcomes (n <= 0: RecentSize).
func NewRecent(n int) *Recent {
	if n <= 0 {
		n = RecentSize
	}
	return &Recent{ring: make([]queue.Outcome, n)}
}

// Add records o; it is queue.Options.Observe.
func (r *Recent) Add(o queue.Outcome) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.ring[r.next] = o
	r.next = (r.next + 1) % len(r.ring)
	if r.next == 0 {
		r.full = true
	}
	r.mu.Unlock()
}

// List returns the outcomes kept, newest first.
func (r *Recent) List() []queue.Outcome {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.ring)
	}
	out := make([]queue.Outcome, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.ring[(r.next-i+len(r.ring))%len(r.ring)])
	}
	return out
}
