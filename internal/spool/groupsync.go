package spool

import "sync"

// groupSync fsyncs a directory for many callers at once: a caller joins the open batch;
// one of them (the leader) closes it and fsyncs, and every member returns when that
// fsync is done. Callers that arrive during an fsync form the next batch.
type groupSync struct {
	sync func() error // the fsync
	mu   sync.Mutex
	cond sync.Cond
	next uint64 // the open batch
	done uint64 // the last batch synced
	busy bool
	// err is sticky: after a failed fsync the kernel may have dropped dirty state, and
	// a later successful fsync would not bring it back (the PostgreSQL "fsyncgate").
	err error
}

func newGroupSync(sync func() error) *groupSync {
	g := &groupSync{sync: sync, next: 1}
	g.cond.L = &g.mu
	return g
}

func (g *groupSync) Sync() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	my := g.next
	for g.done < my {
		if g.busy {
			g.cond.Wait()
			continue
		}
		g.busy = true
		batch := g.next
		g.next++
		g.mu.Unlock()
		err := g.sync()
		g.mu.Lock()
		g.busy = false
		g.done = batch
		if err != nil && g.err == nil {
			g.err = err
		}
		g.cond.Broadcast()
	}
	return g.err
}

// Err is the error of a failed fsync, which every later Sync returns too.
func (g *groupSync) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}
