// Package spool owns the durable queue between the SMTP front end and the upstream
// (SPEC §7, §8, [queue] mode = "spool"): it makes an accepted message survive a crash
// before the client hears 250, delivers it through a Sender with retries and backoff,
// and answers permanent failures with RFC 3464 delivery status notifications. It never
// talks SMTP itself (the Sender does), and it never removes a message before every
// recipient is delivered or bounced.
package spool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"relay/internal/deliver"
)

// RcptResult is the upstream's answer for one recipient.
type RcptResult = deliver.RcptResult

// Sender is what delivery needs from the upstream side; deliver.Sender satisfies it.
//
// results: one per recipient (Code 250 = accepted); DATA was sent when any was accepted.
// err: a transaction-level failure; errors.As(err, &t) with t interface{ Temporary() bool }
// tells a 4xx or a fault (retry) from a 5xx (bounce).
type Sender interface {
	Send(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error)
}

// Defaults for zero Options fields (the SPEC §3 defaults).
const (
	DefaultMaxAge       = 72 * time.Hour
	DefaultRetryMin     = 30 * time.Second
	DefaultRetryMax     = 30 * time.Minute
	DefaultWorkers      = 8
	DefaultPollInterval = time.Second
)

// Memory bounds: a message just submitted is delivered from memory, without reading its
// file back, when it is at most memMessage octets and all such messages together stay
// within memTotal. Others, and every retry, are read from the file: memory stays bounded
// however large the backlog grows while the upstream is down.
const (
	memMessage = 1 << 20
	memTotal   = 8 << 20
)

// Options configures a Spool.
type Options struct {
	Dir      string
	MaxAge   time.Duration // then undelivered recipients bounce
	RetryMin time.Duration // first retry delay; it doubles, with jitter, up to RetryMax
	RetryMax time.Duration
	Workers  int // concurrent deliveries: upstream max_connections

	Sender Sender
	Log    *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now
	// Hostname is the Reporting-MTA of delivery status notifications (default: os.Hostname).
	Hostname string
	// Bounce submits a DSN back through the relay's pipeline (the wiring rewrites, signs
	// and submits it with the null envelope sender). It is called with the original
	// envelope sender and the DSN message; it must not return before the DSN is as safe as
	// a submitted message, because the failed recipients are then marked done.
	Bounce func(ctx context.Context, to string, dsn []byte) error
	// PollInterval is how often the running server looks for requests of `relay queue`
	// (retry, delete) from other processes.
	PollInterval time.Duration
}

// Spool is an open spool directory and its delivery engine.
type Spool struct {
	o    Options
	log  *slog.Logger
	dir  *os.File // held open to fsync the directory
	lock *os.File // DIR/lock, flocked while open: one server per spool
	// syncDir fsyncs the directory after a rename. It batches the fsyncs of concurrent
	// writers (groupSync): up to 1.7x the messages per second of one fsync each on ext4,
	// which already merges concurrent journal commits (BenchmarkSubmit measures both).
	dirSync *groupSync
	syncDir func() error
	recycle recycler // files of delivered messages, for the next ones

	// abort ends deliveries in flight; Close calls it.
	abort     context.Context
	abortFunc context.CancelFunc
	running   atomic.Bool
	ctlBroken bool // the last look at ctl/ failed; only the dispatcher (or Open) uses it

	mu      sync.Mutex
	msgs    map[string]*message // every message in the spool, by id
	ready   []*message          // due now, oldest first
	waiting timeHeap            // due later
	cached  int                 // octets of message data held in memory
	closed  bool
	kick    chan struct{} // wakes the dispatcher: something became ready

	delivered, deferred, bounced atomic.Int64
}

// message is the in-memory copy of one spooled message. Fields after id/from/to/received
// are guarded by Spool.mu.
type message struct {
	id       string
	from     string
	to       []string
	received time.Time
	size     int

	data     []byte // nil: read it from the file
	st       state
	index    int  // in Spool.waiting; -1 when not there
	inflight bool // a worker has it
	// stateOnDisk: an ID.state file may exist, to be removed with the message.
	stateOnDisk bool
	deleted     bool // `relay queue delete` removed it; forget it after the attempt
}

func (m *message) pending() []string {
	var p []string
	for _, r := range m.to {
		if !m.st.done(r) {
			p = append(p, r)
		}
	}
	return p
}

// Error is a failure to take a message into the spool. The client is asked to try again
// later: 451 4.3.0, whatever the cause (full disk, permissions, a closed spool).
type Error struct {
	ID  string
	Err error
}

func (e *Error) Error() string { return fmt.Sprintf("spool %s: %v", e.ID, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// SMTPReply is the answer for the client: a temporary failure, so the message is retried
// by the client and never lost (SPEC §7).
func (e *Error) SMTPReply() (int, [3]int, string) {
	return 451, [3]int{4, 3, 0}, "cannot queue the message now, try again later"
}

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("spool closed")

// Open opens (creating it if needed) and recovers the spool in o.Dir: temp files left by a
// crash are removed, damaged message files are renamed ID.bad and logged, state files
// without a message are removed, and every queued message is loaded to be delivered by
// Run; messages that were in flight when the process died are simply delivered again
// (at-least-once).
func Open(o Options) (*Spool, error) {
	if o.Dir == "" {
		return nil, errors.New("spool: no directory")
	}
	if o.Sender == nil || o.Bounce == nil {
		return nil, errors.New("spool: Sender and Bounce are required")
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
	if o.Hostname == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			o.Hostname = h
		} else {
			o.Hostname = "localhost"
		}
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, ctlDir), 0o700); err != nil {
		return nil, fmt.Errorf("spool %s: %w", o.Dir, err)
	}
	lock, err := lockDir(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("spool %s: %w", o.Dir, err)
	}
	d, err := os.Open(o.Dir)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("spool %s: %w", o.Dir, err)
	}
	s := &Spool{
		o: o, log: o.Log, dir: d, lock: lock, dirSync: newGroupSync(func() error { return syncfs(d) }),
		msgs: map[string]*message{},
		kick: make(chan struct{}, 1),
	}
	s.syncDir = s.dirSync.Sync
	s.abort, s.abortFunc = context.WithCancel(context.Background())
	if err := s.recover(); err != nil {
		d.Close()
		lock.Close()
		return nil, fmt.Errorf("spool %s: recover: %w", o.Dir, err)
	}
	s.applyRequests()
	return s, nil
}

// recover loads the directory into memory.
func (s *Spool) recover() error {
	ents, err := os.ReadDir(s.o.Dir)
	if err != nil {
		return err
	}
	now := s.o.Now()
	var msgs []*message
	hasMsg := map[string]bool{}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			// A write the crash interrupted: its Submit never returned success.
			if err := os.Remove(filepath.Join(s.o.Dir, name)); err != nil {
				return err
			}
			s.log.Info("spool: removed a partial file left by a crash", "file", name)
			continue
		}
		id := idOf(name)
		if id == "" {
			continue
		}
		// The whole file is read, not just its envelope: its checksum tells a message whose
		// batch was not synced at the crash (never acknowledged) from a good one.
		env, _, err := readMessage(msgPath(s.o.Dir, id))
		if err != nil {
			// Not ours to delete: set aside for the admin, who learns of it from this
			// log line (`relay queue list` shows only loadable messages).
			s.log.Error("spool: damaged message file set aside", "id", id, "err", err)
			if err := os.Rename(msgPath(s.o.Dir, id), filepath.Join(s.o.Dir, id+badSuffix)); err != nil {
				return err
			}
			continue
		}
		st, err := readState(s.o.Dir, id)
		if err != nil {
			// The state is written atomically, so this is damage too; starting over
			// can only repeat deliveries, never lose one.
			s.log.Error("spool: damaged state file ignored", "id", id, "err", err)
			st = state{}
		}
		hasMsg[id] = true
		m := &message{id: id, from: string(env.From), to: env.To, received: env.Received, size: env.Size, st: st, index: -1, stateOnDisk: true}
		if len(m.pending()) == 0 {
			// Every recipient was done but the crash came before the removal.
			if err := removeFiles(s.o.Dir, id); err != nil {
				return err
			}
			continue
		}
		msgs = append(msgs, m)
	}
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), stateSuffix); ok && !hasMsg[id] {
			os.Remove(filepath.Join(s.o.Dir, e.Name()))
		}
	}
	if err := s.dir.Sync(); err != nil {
		return err
	}
	slices.SortFunc(msgs, func(a, b *message) int { return a.received.Compare(b.received) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		s.msgs[m.id] = m
		s.schedule(m, now)
	}
	if len(msgs) > 0 {
		s.log.Info("spool: recovered", "messages", len(msgs))
	}
	return nil
}

// Submit makes the message durable in the spool and queues it for delivery. It returns nil
// only when the message and its envelope are on disk: written to a temp file, fsynced,
// renamed, and the directory fsynced. Any error is an *Error (451 4.3.0 for the client).
// data must not be changed afterwards: delivery may use it.
func (s *Spool) Submit(ctx context.Context, id, from string, to []string, data []byte) error {
	if err := validID(id); err != nil {
		return &Error{ID: id, Err: err}
	}
	to = dedup(to)
	if len(to) == 0 {
		return &Error{ID: id, Err: errors.New("no recipients")}
	}
	if err := ctx.Err(); err != nil {
		return &Error{ID: id, Err: err}
	}
	m := &message{id: id, from: from, to: to, received: s.o.Now(), size: len(data), index: -1}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return &Error{ID: id, Err: ErrClosed}
	case s.msgs[id] != nil:
		s.mu.Unlock()
		return &Error{ID: id, Err: errors.New("duplicate id")}
	}
	// Reserve the id; the message is not scheduled until it is durable.
	s.msgs[id] = m
	s.mu.Unlock()

	err := s.write(m, data)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		delete(s.msgs, id)
		return &Error{ID: id, Err: err}
	}
	if len(data) <= memMessage && s.cached+len(data) <= memTotal {
		m.data = data
		s.cached += len(data)
	}
	s.ready = append(s.ready, m)
	s.wake()
	return nil
}

// write puts the message file on disk durably.
func (s *Spool) write(m *message, data []byte) error {
	line, err := encodeEnvelope(envelope{From: rawString(m.from), To: m.to, Received: m.received, Size: len(data), CRC: checksum(data)})
	if err != nil {
		return err
	}
	free := s.recycle.take(s.dirSync.Synced)
	if free != "" {
		s.recycle.reused.Add(1)
	} else {
		s.recycle.created.Add(1)
	}
	return writeFileSync(s.dir, m.id+msgSuffix, free, false, s.syncDir, line, data)
}

// removeDelivered removes the files of a message whose every recipient is done. The
// message file is recycled; the state file, rare, is removed.
func (s *Spool) removeDelivered(id string, size int, state bool) error {
	err := s.recycle.release(s.o.Dir, msgPath(s.o.Dir, id), int64(size), s.dirSync.Ticket)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if !state {
		return nil
	}
	err = os.Remove(statePath(s.o.Dir, id))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func dedup(to []string) []string {
	out := make([]string, 0, len(to))
	for _, r := range to {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// wake tells the dispatcher that s.ready or s.waiting changed.
func (s *Spool) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Close stops taking messages (Submit returns ErrClosed) and cancels the context of
// deliveries still in flight, whose messages stay spooled as they were. Call it after Run
// has returned, or when the shutdown grace period is over.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.abortFunc()
	s.log.Info("spool: closed", "files_reused", s.recycle.reused.Load(), "files_created", s.recycle.created.Load())
	return cmp.Or(s.dir.Close(), s.lock.Close())
}

// lockDir takes DIR/lock: two servers on one spool would deliver every message twice
// and overwrite each other's state.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errors.New("in use by another relay process")
		}
		return nil, fmt.Errorf("lock: %w", err)
	}
	return f, nil
}

// Stats is a snapshot of the spool for metrics and health checks.
type Stats struct {
	Depth    int       // messages in the spool
	Oldest   time.Time // arrival of the oldest message; zero when empty
	InFlight int
	// Counters since Open: recipients delivered, attempts that left recipients for a
	// retry, recipients bounced (with or without a DSN).
	Delivered, Deferred, Bounced int64
}

// Stats returns the current Stats.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	st := Stats{Depth: len(s.msgs)}
	for _, m := range s.msgs {
		if st.Oldest.IsZero() || m.received.Before(st.Oldest) {
			st.Oldest = m.received
		}
		if m.inflight {
			st.InFlight++
		}
	}
	s.mu.Unlock()
	st.Delivered, st.Deferred, st.Bounced = s.delivered.Load(), s.deferred.Load(), s.bounced.Load()
	return st
}

// Writable checks that a message could be spooled now (for /readyz): it writes, syncs and
// removes a small file.
func (s *Spool) Writable() error {
	if err := s.dirSync.Err(); err != nil {
		return fmt.Errorf("spool %s: %w", s.o.Dir, err)
	}
	f, err := os.CreateTemp(s.o.Dir, tmpPrefix+"probe-*")
	if err != nil {
		return fmt.Errorf("spool %s: %w", s.o.Dir, err)
	}
	_, err = f.Write([]byte("probe\n"))
	err = cmp.Or(err, f.Sync(), f.Close())
	os.Remove(f.Name())
	if err != nil {
		return fmt.Errorf("spool %s: %w", s.o.Dir, err)
	}
	return nil
}
