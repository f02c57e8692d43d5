// Package queue owns the delivery of spooled messages (SPEC §8): it schedules an attempt for
// every message the spool holds, recovered at start or just submitted, on max_connections
// workers through a Sender; it decides what the upstream's answer means for each recipient
// (2xx done; 4xx or a fault: retried with backoff and jitter; 5xx, or max_age reached:
// bounced) and hands every bounce to a Bouncer (internal/dsn). It keeps nothing durable
// itself: each outcome is written through the spool before it is acted on, so a crash can
// repeat a delivery, never lose one. It never talks SMTP (the Sender does), never writes a
// file (the spool does) and never builds a delivery status notification (the Bouncer does).
package queue

import (
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"relay/internal/deliver"
	"relay/internal/dsn"
	"relay/internal/metrics"
	"relay/internal/spool"
)

// Sender is what delivery needs from the upstream side; deliver.Sender satisfies it.
//
// results: one per recipient (Code 250 = accepted); DATA was sent when any was accepted.
// err: a transaction-level failure; errors.As(err, &t) with t interface{ Temporary() bool }
// tells a 4xx or a fault (retry) from a 5xx (bounce).
type Sender interface {
	Send(ctx context.Context, from string, to []string, data []byte) ([]deliver.RcptResult, error)
}

// Bouncer reports the recipients that failed for good to the envelope sender; dsn.Sender is
// the relay's. Bounce must not return nil before the report is as safe as a submitted
// message: the failed recipients are then marked done.
type Bouncer interface {
	Bounce(ctx context.Context, r dsn.Report) error
}

// Defaults for zero Options fields (the SPEC §3 defaults).
const (
	DefaultMaxAge       = 72 * time.Hour
	DefaultRetryMin     = 30 * time.Second
	DefaultRetryMax     = 30 * time.Minute
	DefaultWorkers      = 8
	DefaultPollInterval = time.Second
)

// Memory bounds: a message just submitted is delivered from memory, without reading it back
// from the spool, when it is at most memMessage octets and all such messages together stay
// within memTotal. Others, and every retry, are read from the spool: memory stays bounded
// however large the backlog grows while the upstream is down.
const (
	memMessage = 1 << 20
	memTotal   = 8 << 20
)

// Options configures a Queue.
type Options struct {
	MaxAge   time.Duration // then undelivered recipients bounce
	RetryMin time.Duration // first retry delay; it doubles, with jitter, up to RetryMax
	RetryMax time.Duration
	Workers  int // concurrent deliveries: upstream max_connections

	Sender  Sender
	Bouncer Bouncer
	Log     *slog.Logger     // nil: discard
	Metrics *metrics.Metrics // nil: not measured; the spool and deliver stages, outcomes
	// Observe, when not nil, is told the outcome of every attempt (the admin page's recent
	// deliveries). It runs on the delivery worker, so it must be quick and must not block.
	Observe func(Outcome)
	Now     func() time.Time // nil: time.Now
	// PollInterval is how often the running server looks for requests of `relay queue`
	// (retry, delete) from other processes.
	PollInterval time.Duration
}

// Outcome is what one delivery attempt did, as the delivery log line says it.
type Outcome struct {
	ID        string
	From      string
	Attempt   int
	Delivered []string
	Bounced   []string
	Deferred  []string // left for a retry
	Reply     string   // the last error, "" when every recipient was delivered
	Time      time.Time
	Duration  time.Duration
}

// Queue delivers the messages of one spool.
type Queue struct {
	o   Options
	sp  *spool.Spool
	log *slog.Logger

	// abort ends deliveries in flight; Close calls it.
	abort     context.Context
	abortFunc context.CancelFunc
	running   atomic.Bool
	closed    atomic.Bool

	mu      sync.Mutex
	msgs    map[string]*item // every message to deliver, by id
	ready   []*item          // due now, oldest first
	waiting timeHeap         // due later
	cached  int              // octets of message data held in memory
	kick    chan struct{}    // wakes the dispatcher: something became ready

	delivered, deferred, bounced atomic.Int64
}

// item is one message on its way out. Its fields are guarded by Queue.mu.
type item struct {
	m        *spool.Message
	st       spool.State
	data     []byte // nil: read it from the spool
	index    int    // in Queue.waiting; -1 when not there
	inflight bool   // a worker has it
}

func (it *item) pending() []string {
	var p []string
	for _, r := range it.m.To {
		if !it.st.Done(r) {
			p = append(p, r)
		}
	}
	return p
}

// New returns the queue of sp, holding the messages Open recovered from it (delivered by
// Run, each when its next try comes), and applies the requests of `relay queue` left while
// no server ran.
func New(sp *spool.Spool, recovered []spool.Recovered, o Options) (*Queue, error) {
	if sp == nil || o.Sender == nil || o.Bouncer == nil {
		return nil, errors.New("queue: a spool, a Sender and a Bouncer are required")
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.RetryMin <= 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RetryMax <= 0 {
		o.RetryMax = DefaultRetryMax
	}
	o.RetryMax = max(o.RetryMax, o.RetryMin)
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	q := &Queue{o: o, sp: sp, log: o.Log, msgs: map[string]*item{}, kick: make(chan struct{}, 1)}
	q.abort, q.abortFunc = context.WithCancel(context.Background())
	now := o.Now()
	q.mu.Lock()
	for _, r := range recovered {
		it := &item{m: r.Message, st: r.State, index: -1}
		q.msgs[r.ID] = it
		q.schedule(it, now)
	}
	q.mu.Unlock()
	q.applyRequests()
	return q, nil
}

// Submit stores the message durably in the spool and schedules its delivery: the pipeline's
// Submitter in spool mode. It returns nil only when the message is on disk (spool.Put); any
// error is a *spool.Error, whose SMTPReply is the client's answer. data must not be changed
// afterwards: delivery may use it.
func (q *Queue) Submit(ctx context.Context, id, from string, to []string, data []byte) error {
	if q.closed.Load() {
		return &spool.Error{ID: id, Err: spool.ErrClosed}
	}
	start := time.Now()
	m, err := q.sp.Put(ctx, id, from, to, data)
	q.o.Metrics.Since(metrics.StageSpool, start)
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	// `relay queue delete` may have found the record before this: the spool marks the
	// message Deleted before apply looks for it in q.msgs, so, checked under q.mu, either
	// apply finds it scheduled and drops it, or it is not scheduled at all.
	if m.Deleted() {
		return nil
	}
	it := &item{m: m, index: -1}
	if len(data) <= memMessage && q.cached+len(data) <= memTotal {
		it.data = data
		q.cached += len(data)
	}
	q.msgs[id] = it
	q.ready = append(q.ready, it)
	q.wake()
	return nil
}

// Run delivers the messages with Options.Workers concurrent deliveries until ctx is done.
// It then stops starting deliveries and returns once those in flight have finished; they
// run with their own context (cancelled by Close), so the caller bounds the wait with its
// grace period. Messages not delivered stay spooled for the next start.
func (q *Queue) Run(ctx context.Context) {
	if !q.running.CompareAndSwap(false, true) {
		panic("queue: Run called twice")
	}
	defer q.running.Store(false)
	work := make(chan *item)
	var wg sync.WaitGroup
	for range q.o.Workers {
		wg.Go(func() {
			for it := range work {
				q.attempt(it)
			}
		})
	}
	q.dispatch(ctx, work)
	close(work)
	wg.Wait()
}

// dispatch hands due messages to the workers: fresh submissions at once (Submit appends to
// q.ready and wakes it), retries when their time comes, and it applies the requests of
// `relay queue` every PollInterval.
func (q *Queue) dispatch(ctx context.Context, work chan<- *item) {
	poll := time.NewTicker(q.o.PollInterval)
	defer poll.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		q.mu.Lock()
		now := q.o.Now()
		for len(q.waiting) > 0 && !q.waiting[0].st.NextTry.After(now) {
			q.ready = append(q.ready, heap.Pop(&q.waiting).(*item))
		}
		var next *item
		if len(q.ready) > 0 {
			next = q.ready[0]
		}
		wait := time.Hour
		if len(q.waiting) > 0 {
			wait = q.waiting[0].st.NextTry.Sub(now)
		}
		q.mu.Unlock()
		timer.Reset(wait)

		var out chan<- *item
		if next != nil {
			out = work
		}
		select {
		case out <- next:
			// Only the dispatcher removes from q.ready (Submit appends), so next is
			// still its head. The worker takes q.mu before it looks at next.
			q.mu.Lock()
			q.ready[0] = nil
			q.ready = q.ready[1:]
			q.mu.Unlock()
		case <-q.kick:
		case <-timer.C:
		case <-poll.C:
			q.applyRequests()
		case <-ctx.Done():
			return
		}
	}
}

// schedule queues it for its next try. q.mu is held.
func (q *Queue) schedule(it *item, now time.Time) {
	if it.st.NextTry.After(now) {
		heap.Push(&q.waiting, it)
	} else {
		q.ready = append(q.ready, it)
	}
	q.wake()
}

// wake tells the dispatcher that q.ready or q.waiting changed.
func (q *Queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// applyRequests carries out the requests of `relay queue`: the spool forgets a deleted
// message (and removes its files) before apply drops it here.
func (q *Queue) applyRequests() {
	q.sp.Requests(q.apply)
	q.wake()
}

func (q *Queue) apply(r spool.Request) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.o.Now()
	switch r.Op {
	case spool.OpRetryAll:
		for len(q.waiting) > 0 {
			it := q.waiting[0]
			it.st.NextTry = now
			q.due(it)
		}
	case spool.OpRetry:
		if it := q.msgs[r.ID]; it != nil && it.index >= 0 {
			it.st.NextTry = now
			q.due(it)
		}
	case spool.OpDelete:
		if it := q.msgs[r.ID]; it != nil {
			q.dropLocked(it)
		}
	}
}

// due moves it, now due, from q.waiting to q.ready. q.mu is held.
func (q *Queue) due(it *item) {
	heap.Remove(&q.waiting, it.index)
	q.ready = append(q.ready, it)
}

// dropLocked removes it from every in-memory structure. q.mu is held. A worker that has it
// finds it Deleted (the spool marked it first) and lets it go.
func (q *Queue) dropLocked(it *item) {
	it.inflight = false
	if it.index >= 0 {
		heap.Remove(&q.waiting, it.index)
	}
	if it.data != nil {
		q.cached -= len(it.data)
		it.data = nil
	}
	if q.msgs[it.m.ID] == it {
		delete(q.msgs, it.m.ID)
	}
}

// Close refuses further messages and cancels the context of deliveries still in flight,
// whose messages stay spooled as they were. Call it after Run has returned, or when the
// shutdown grace period is over, and before closing the spool.
func (q *Queue) Close() {
	q.closed.Store(true)
	q.abortFunc()
}

// Stats is a snapshot of the queue and its spool, for metrics and health checks.
type Stats struct {
	spool.Stats
	InFlight int
	// Counters since New: recipients delivered, attempts that left recipients for a
	// retry, recipients bounced (with or without a DSN).
	Delivered, Deferred, Bounced int64
}

// Stats returns the current Stats.
func (q *Queue) Stats() Stats {
	st := Stats{Stats: q.sp.Stats()}
	q.mu.Lock()
	for _, it := range q.msgs {
		if it.inflight {
			st.InFlight++
		}
	}
	q.mu.Unlock()
	st.Delivered, st.Deferred, st.Bounced = q.delivered.Load(), q.deferred.Load(), q.bounced.Load()
	return st
}

// timeHeap orders messages by their next try.
type timeHeap []*item

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i].st.NextTry.Before(h[j].st.NextTry) }
func (h timeHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *timeHeap) Push(x any) {
	it := x.(*item)
	it.index = len(*h)
	*h = append(*h, it)
}
func (h *timeHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	it.index = -1
	*h = old[:len(old)-1]
	return it
}
