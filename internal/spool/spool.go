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
	"strconv"
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
	// dirDev and dirIno identify the directory, to notice it moved (checkDir).
	dirDev, dirIno uint64
	// syncDir fsyncs the directory after a rename (message and state files), batching
	// the fsyncs of concurrent writers (groupSync).
	dirSync *groupSync
	syncDir func() error

	w      logWriter // the group commit into segments
	segMax int64     // defaultSegMax; smaller in tests

	// abort ends deliveries in flight; Close calls it.
	abort     context.Context
	abortFunc context.CancelFunc
	running   atomic.Bool
	ctlBroken bool // the last look at ctl/ failed; only the dispatcher (or Open) uses it

	mu      sync.Mutex
	msgs    map[string]*message // every message in the spool, by id
	segs    map[string]*segment // open segments, by id
	spares  []string            // paths of retired segments kept for reuse
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

	data []byte // nil: read it from the file
	// seg is the segment that holds the message, at off, with checksum crc; nil once it
	// is in a file of its own (ID.msg).
	seg      *segment
	off      int64
	crc      uint32
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
// later: 451 4.3.0, whatever the cause (full disk, permissions, a closed spool), unless the
// envelope itself is refused (ErrTooManyRecipients, ErrEnvelopeTooLarge).
type Error struct {
	ID  string
	Err error
}

func (e *Error) Error() string { return fmt.Sprintf("spool %s: %v", e.ID, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// SMTPReply is the answer for the client: the refusal of an envelope the spool cannot
// hold, or else a temporary failure, so the message is retried by the client and never
// lost (SPEC §7).
func (e *Error) SMTPReply() (int, [3]int, string) {
	var r *refusal
	if errors.As(e.Err, &r) {
		return r.SMTPReply()
	}
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
	var st syscall.Stat_t
	if err == nil {
		err = syscall.Fstat(int(d.Fd()), &st)
	}
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("spool %s: %w", o.Dir, err)
	}
	s := &Spool{
		o: o, log: o.Log, dir: d, lock: lock, dirSync: newGroupSync(d.Sync),
		dirDev: uint64(st.Dev), dirIno: uint64(st.Ino), segMax: defaultSegMax,
		msgs: map[string]*message{}, segs: map[string]*segment{},
		kick: make(chan struct{}, 1),
	}
	s.w.cond.L = &s.w.mu
	s.w.delayMax, s.w.maxRecords = maxCommitDelay, maxBatch
	s.syncDir = s.dirSync.Sync
	s.abort, s.abortFunc = context.WithCancel(context.Background())
	if err := s.recover(); err != nil {
		s.closeSegments()
		d.Close()
		lock.Close()
		return nil, fmt.Errorf("spool %s: recover: %w", o.Dir, err)
	}
	s.applyRequests()
	return s, nil
}

// recover loads the directory into memory: message files first, then the segments'
// messages that are not done and not in a file of their own.
//
// What it removes goes in the order the running server relies on, with the directory
// synced where the order matters, so that a crash during recovery leaves a directory that
// the next start recovers the same: a segment's log before its done file, a record marked
// done (and synced) before the state and file of its message go, and the logs' removal
// durable before any done file or state file goes.
func (s *Spool) recover() error {
	ents, err := os.ReadDir(s.o.Dir)
	if err != nil {
		return err
	}
	now := s.o.Now()
	var msgs []*message
	hasMsg := map[string]bool{}
	var finished []string // messages whose every recipient is done: their files go last
	var names []string
	for _, e := range ents {
		name := e.Name()
		names = append(names, name)
		if strings.HasPrefix(name, tmpPrefix) {
			// A write the crash interrupted (its Submit never returned success), or a
			// spare segment.
			if err := os.Remove(filepath.Join(s.o.Dir, name)); err != nil {
				return err
			}
			if !strings.HasPrefix(name, sparePfx) {
				s.log.Info("spool: removed a partial file left by a crash", "file", name)
			}
			continue
		}
		id := idOf(name)
		if id == "" {
			continue
		}
		// The whole file is read, not just its envelope: its checksum tells a message whose
		// write was not synced at the crash (never acknowledged) from a good one.
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
		hasMsg[id] = true
		if m := s.loaded(id, env); m != nil {
			msgs = append(msgs, m)
		} else {
			finished = append(finished, id)
		}
	}

	segMsgs, segIDs, err := scanSegments(s.o.Dir, names, func(segID string, damaged int) {
		s.log.Error("spool: damaged records skipped in a segment", "segment", segID, "octets", damaged)
	})
	if err != nil {
		return err
	}
	segs := make(map[string]*segment, len(segIDs))
	for _, id := range segIDs {
		segs[id] = &segment{id: id, path: segPath(s.o.Dir, id)}
	}
	// superseded: records not to be delivered from their segment (the message is in a
	// file of its own, or its state says it is done) but not marked done.
	var superseded []segMessage
	for mid, sm := range segMsgs {
		if hasMsg[mid] {
			// Moved out of its segment (the file is the truth) and the done record lost
			// to a power failure.
			superseded = append(superseded, sm)
			continue
		}
		hasMsg[mid] = true
		m := s.loaded(mid, sm.rec.env)
		if m == nil {
			superseded = append(superseded, sm)
			finished = append(finished, mid)
			continue
		}
		seg := segs[sm.segID]
		m.seg, m.off = seg, int64(sm.rec.off)
		seg.live++
		msgs = append(msgs, m)
	}
	for _, id := range segIDs {
		seg := segs[id]
		if seg.live == 0 {
			// Its done file goes below, once this removal is durable.
			if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			continue
		}
		if seg.f, err = os.OpenFile(seg.path, os.O_RDWR, 0); err != nil {
			return err
		}
		if seg.done, err = os.OpenFile(donePath(s.o.Dir, id), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
			seg.f.Close()
			return err
		}
		s.segs[id] = seg
		if s.w.lastID < parseSegID(id) {
			s.w.lastID = parseSegID(id)
		}
	}
	if err := s.markSuperseded(superseded); err != nil {
		return err
	}
	if err := s.dir.Sync(); err != nil {
		return err
	}
	for _, id := range finished {
		if err := removeFiles(s.o.Dir, id); err != nil {
			return err
		}
	}
	for _, name := range names {
		if id, ok := strings.CutSuffix(name, stateSuffix); ok && !hasMsg[id] {
			os.Remove(filepath.Join(s.o.Dir, name))
		}
		if strings.HasPrefix(name, segPrefix) && strings.HasSuffix(name, doneSuffix) {
			if id := name[len(segPrefix) : len(name)-len(doneSuffix)]; s.segs[id] == nil {
				os.Remove(filepath.Join(s.o.Dir, name))
			}
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
		s.log.Info("spool: recovered", "messages", len(msgs), "segments", len(s.segs))
	}
	return nil
}

// markSuperseded marks done, durably, the records of sms that are in segments kept open:
// one write and one fdatasync per done file. The files of a finished message are removed
// only after this: without the done record, its record would be delivered again at the
// next start.
func (s *Spool) markSuperseded(sms []segMessage) error {
	lines := map[*segment][]byte{}
	for _, sm := range sms {
		if seg := s.segs[sm.segID]; seg != nil {
			lines[seg] = append(lines[seg], sm.rec.env.ID+"\n"...)
		}
	}
	for seg, b := range lines {
		if _, err := seg.done.Write(b); err != nil {
			return err
		}
		if err := fdatasync(seg.done); err != nil {
			return err
		}
	}
	return nil
}

// loaded returns the message of a recovered envelope with its state, or nil when every
// recipient is done (the crash came before its removal; recover removes its files).
func (s *Spool) loaded(id string, env envelope) *message {
	st, err := readState(s.o.Dir, id)
	if err != nil {
		// The state is written atomically, so this is damage too; starting over
		// can only repeat deliveries, never lose one.
		s.log.Error("spool: damaged state file ignored", "id", id, "err", err)
		st = state{}
	}
	m := &message{id: id, from: string(env.From), to: env.To, received: env.Received, size: env.Size, crc: env.CRC, st: st, index: -1, stateOnDisk: true}
	if len(m.pending()) == 0 {
		return nil
	}
	return m
}

func parseSegID(id string) uint64 {
	n, _ := strconv.ParseUint(id, 16, 64)
	return n
}

// Submit makes the message durable in the spool and queues it for delivery. It returns nil
// only when the message and its envelope are on disk: appended to the current segment and
// fdatasynced (with the submissions that came at the same time). Any error is an *Error
// (451 4.3.0 for the client, or the reply of a refused envelope: an envelope that a
// restart would not read back is refused here, before anything is written).
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
	crc := checksum(data)
	hdr, err := encodeRecordHeader(envelope{ID: id, From: rawString(from), To: to, Received: m.received, Size: len(data), CRC: crc})
	if err != nil {
		return &Error{ID: id, Err: err}
	}
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

	r := &record{id: id, hdr: hdr, data: data}
	err = s.appendLog(r)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		delete(s.msgs, id)
		return &Error{ID: id, Err: err}
	}
	if m.deleted {
		// `relay queue delete` found the record and had it dropped before this returned:
		// the message is durable, and deleted.
		s.mu.Unlock()
		r.seg.markDone(id) // before the count goes down: the segment stays open for it
		s.mu.Lock()
		if s.unlinkLocked(r.seg) {
			s.mu.Unlock()
			s.retire(r.seg)
			s.mu.Lock()
		}
		return nil
	}
	m.seg, m.off, m.crc = r.seg, r.off, crc
	if len(data) <= memMessage && s.cached+len(data) <= memTotal {
		m.data = data
		s.cached += len(data)
	}
	s.ready = append(s.ready, m)
	s.wake()
	return nil
}

// removeDelivered removes a message whose every recipient is done: its record is marked
// done, or its file removed, and then its state file, rare, is removed.
func (s *Spool) removeDelivered(m *message) error {
	s.mu.Lock()
	inSeg := m.seg != nil
	state := m.stateOnDisk
	s.mu.Unlock()
	if !inSeg {
		return removeFiles(s.o.Dir, m.id)
	}
	s.release(m, true)
	if !state {
		return nil
	}
	err := os.Remove(statePath(s.o.Dir, m.id))
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
	w := &s.w
	w.mu.Lock()
	for w.busy {
		w.cond.Wait()
	}
	w.closed = true
	batches, records := w.batches, w.records
	w.mu.Unlock()
	s.closeSegments()
	s.log.Info("spool: closed", "batches", batches, "records", records)
	return cmp.Or(s.dir.Close(), s.lock.Close())
}

// closeSegments closes the files of every segment; their messages stay spooled.
func (s *Spool) closeSegments() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.segs {
		g.close()
	}
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
	// Batches written to the log and the records in them: Records/Batches is how many
	// messages share an fdatasync.
	Batches, Records int64
	Segments         int // open segment files
}

// Stats returns the current Stats.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	st := Stats{Depth: len(s.msgs), Segments: len(s.segs)}
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
	s.w.mu.Lock()
	st.Batches, st.Records = s.w.batches, s.w.records
	s.w.mu.Unlock()
	return st
}

// Writable checks that a message could be spooled now (for /readyz): it writes, syncs and
// removes a small file.
func (s *Spool) Writable() error {
	if err := cmp.Or(s.dirSync.Err(), s.checkDir()); err != nil {
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
