// Package spool owns the relay's durable storage of accepted messages (SPEC §7, §8,
// [queue] mode = "spool"): a message is on disk, appended to a segment and fdatasynced,
// before the client hears 250; it can be read back, its delivery state written, moved out of
// its segment while it waits, and marked done; after a crash Open recovers what was not done;
// and `relay queue` reads and asks for changes through the directory alone (admin.go). It
// never talks SMTP and never decides when or whether a message is delivered (internal/queue
// does); it removes a message only when told that every recipient is done, or deleted.
package spool

import (
	"cmp"
	"context"
	"encoding/json"
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
)

// Options configures a Spool.
type Options struct {
	Dir string
	Log *slog.Logger     // nil: discard
	Now func() time.Time // nil: time.Now; the arrival time recorded with each message
}

// Spool is an open spool directory.
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

	ctlBroken bool // the last look at ctl/ failed; only Requests uses it, from one goroutine

	mu     sync.Mutex
	msgs   map[string]*Message // every message in the spool (being written, or not done), by id
	segs   map[string]*segment // open segments, by id
	spares []string            // paths of retired segments kept for reuse
	closed bool
}

// Message is one message in the spool. The exported fields are its envelope, set once;
// where it is stored belongs to the Spool.
type Message struct {
	ID       string
	From     string   // the envelope sender, "" for <>
	To       []string // without duplicates
	Received time.Time
	Size     int

	// Guarded by Spool.mu: seg is the segment that holds the message, at off, with
	// checksum crc; nil once it is in a file of its own (ID.msg).
	seg *segment
	off int64
	crc uint32
	// stateOnDisk: an ID.state file may exist, to be removed with the message.
	stateOnDisk bool
	// deleted: the spool no longer has it (`relay queue delete`, or Forget). Set under
	// Spool.mu, before its files are removed.
	deleted atomic.Bool
}

// Deleted reports whether the spool no longer has m: `relay queue delete` removed it
// (Requests), or Forget dropped it. Nothing may deliver it again.
func (m *Message) Deleted() bool { return m.deleted.Load() }

// State is the delivery state of a message, written after an attempt that left recipients
// pending (ID.state). Delivered and Bounced only ever grow: a recipient in them is never
// attempted again (SPEC §8: a delivered recipient must not be re-sent because of a later
// failure of another one).
type State struct {
	Attempts  int
	NextTry   time.Time // zero: as soon as possible
	LastTry   time.Time
	LastError string
	Delivered []string
	Bounced   []string
}

// Done reports whether rcpt is delivered or bounced.
func (st *State) Done(rcpt string) bool {
	return slices.Contains(st.Delivered, rcpt) || slices.Contains(st.Bounced, rcpt)
}

// Recovered is a message that Open found in the spool, with its state as last written.
type Recovered struct {
	*Message
	State State
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

// ErrClosed is returned by Put after Close.
var ErrClosed = errors.New("spool closed")

// Open opens (creating it if needed) and recovers the spool in o.Dir: temp files left by a
// crash are removed, damaged message files are renamed ID.bad and logged, state files
// without a message are removed, and every message not done is returned, oldest first, for
// the scheduler to deliver; messages that were in flight when the process died are simply
// delivered again (at-least-once).
func Open(o Options) (*Spool, []Recovered, error) {
	if o.Dir == "" {
		return nil, nil, errors.New("spool: no directory")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, ctlDir), 0o700); err != nil {
		return nil, nil, fmt.Errorf("spool %s: %w", o.Dir, err)
	}
	lock, err := lockDir(o.Dir)
	if err != nil {
		return nil, nil, fmt.Errorf("spool %s: %w", o.Dir, err)
	}
	d, err := os.Open(o.Dir)
	var st syscall.Stat_t
	if err == nil {
		err = syscall.Fstat(int(d.Fd()), &st)
	}
	if err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("spool %s: %w", o.Dir, err)
	}
	s := &Spool{
		o: o, log: o.Log, dir: d, lock: lock, dirSync: newGroupSync(d.Sync),
		dirDev: uint64(st.Dev), dirIno: uint64(st.Ino), segMax: defaultSegMax,
		msgs: map[string]*Message{}, segs: map[string]*segment{},
	}
	s.w.cond.L = &s.w.mu
	s.w.delayMax, s.w.maxRecords = maxCommitDelay, maxBatch
	s.syncDir = s.dirSync.Sync
	rec, err := s.recover()
	if err != nil {
		s.closeSegments()
		d.Close()
		lock.Close()
		return nil, nil, fmt.Errorf("spool %s: recover: %w", o.Dir, err)
	}
	return s, rec, nil
}

// recover loads the directory into memory: message files first, then the segments'
// messages that are not done and not in a file of their own.
//
// What it removes goes in the order the running server relies on, with the directory
// synced where the order matters, so that a crash during recovery leaves a directory that
// the next start recovers the same: a segment's log before its done file, a record marked
// done (and synced) before the state and file of its message go, and the logs' removal
// durable before any done file or state file goes.
func (s *Spool) recover() ([]Recovered, error) {
	ents, err := os.ReadDir(s.o.Dir)
	if err != nil {
		return nil, err
	}
	var msgs []Recovered
	hasMsg := map[string]bool{}
	var finished []string // messages whose every recipient is done: their files go last
	var names []string
	for _, e := range ents {
		name := e.Name()
		names = append(names, name)
		if strings.HasPrefix(name, tmpPrefix) {
			// A write the crash interrupted (its Put never returned success), or a
			// spare segment.
			if err := os.Remove(filepath.Join(s.o.Dir, name)); err != nil {
				return nil, err
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
				return nil, err
			}
			continue
		}
		hasMsg[id] = true
		if m, ok := s.loaded(id, env); ok {
			msgs = append(msgs, m)
		} else {
			finished = append(finished, id)
		}
	}

	segMsgs, segIDs, err := scanSegments(s.o.Dir, names, func(segID string, damaged int) {
		s.log.Error("spool: damaged records skipped in a segment", "segment", segID, "octets", damaged)
	})
	if err != nil {
		return nil, err
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
		m, ok := s.loaded(mid, sm.rec.env)
		if !ok {
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
				return nil, err
			}
			continue
		}
		if seg.f, err = os.OpenFile(seg.path, os.O_RDWR, 0); err != nil {
			return nil, err
		}
		if seg.done, err = os.OpenFile(donePath(s.o.Dir, id), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
			seg.f.Close()
			return nil, err
		}
		s.segs[id] = seg
		if s.w.lastID < parseSegID(id) {
			s.w.lastID = parseSegID(id)
		}
	}
	if err := s.markSuperseded(superseded); err != nil {
		return nil, err
	}
	if err := s.dir.Sync(); err != nil {
		return nil, err
	}
	for _, id := range finished {
		if err := removeFiles(s.o.Dir, id); err != nil {
			return nil, err
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
		return nil, err
	}
	slices.SortFunc(msgs, func(a, b Recovered) int { return a.Received.Compare(b.Received) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		s.msgs[m.ID] = m.Message
	}
	if len(msgs) > 0 {
		s.log.Info("spool: recovered", "messages", len(msgs), "segments", len(s.segs))
	}
	return msgs, nil
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

// loaded returns the message of a recovered envelope with its state; ok is false when every
// recipient is done (the crash came before its removal; recover removes its files).
func (s *Spool) loaded(id string, env envelope) (r Recovered, ok bool) {
	st, err := readState(s.o.Dir, id)
	if err != nil {
		// The state is written atomically, so this is damage too; starting over
		// can only repeat deliveries, never lose one.
		s.log.Error("spool: damaged state file ignored", "id", id, "err", err)
		st = State{}
	}
	m := &Message{ID: id, From: string(env.From), To: env.To, Received: env.Received, Size: env.Size, crc: env.CRC, stateOnDisk: true}
	if !slices.ContainsFunc(m.To, func(r string) bool { return !st.Done(r) }) {
		return Recovered{}, false
	}
	return Recovered{Message: m, State: st}, true
}

func parseSegID(id string) uint64 {
	n, _ := strconv.ParseUint(id, 16, 64)
	return n
}

// Put makes a message durable in the spool. It returns only when the message and its
// envelope are on disk: appended to the current segment and fdatasynced (with the
// submissions that came at the same time). Any error is an *Error (451 4.3.0 for the
// client, or the reply of a refused envelope: an envelope that a restart would not read back
// is refused here, before anything is written). A message that `relay queue delete` found
// and deleted before Put returned comes back Deleted: durable, and already done.
func (s *Spool) Put(ctx context.Context, id, from string, to []string, data []byte) (*Message, error) {
	if err := validID(id); err != nil {
		return nil, &Error{ID: id, Err: err}
	}
	to = dedup(to)
	if len(to) == 0 {
		return nil, &Error{ID: id, Err: errors.New("no recipients")}
	}
	if err := ctx.Err(); err != nil {
		return nil, &Error{ID: id, Err: err}
	}
	m := &Message{ID: id, From: from, To: to, Received: s.o.Now(), Size: len(data)}
	crc := checksum(data)
	hdr, err := encodeRecordHeader(envelope{ID: id, From: rawString(from), To: to, Received: m.Received, Size: len(data), CRC: crc})
	if err != nil {
		return nil, &Error{ID: id, Err: err}
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return nil, &Error{ID: id, Err: ErrClosed}
	case s.msgs[id] != nil:
		s.mu.Unlock()
		return nil, &Error{ID: id, Err: errors.New("duplicate id")}
	}
	// Reserve the id: a delete request finds it while it is being written.
	s.msgs[id] = m
	s.mu.Unlock()

	r := &record{id: id, hdr: hdr, data: data}
	err = s.appendLog(r)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		delete(s.msgs, id)
		return nil, &Error{ID: id, Err: err}
	}
	if m.Deleted() {
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
		return m, nil
	}
	m.seg, m.off, m.crc = r.seg, r.off, crc
	return m, nil
}

// Read reads the content of m back, from its segment or its file, checking its CRC.
func (s *Spool) Read(m *Message) ([]byte, error) {
	s.mu.Lock()
	seg, off, crc := m.seg, m.off, m.crc
	s.mu.Unlock()
	if seg != nil {
		return readChecked(seg.f, seg.id, off, m.Size, crc)
	}
	_, data, err := readMessage(msgPath(s.o.Dir, m.ID))
	return data, err
}

// Done removes m, whose every recipient is delivered or bounced: its record is marked done,
// or its file removed, and then its state file, rare, is removed. The spool forgets m even
// when an error is returned: the next start loads it again with the recipients of its last
// written state (at-least-once).
func (s *Spool) Done(m *Message) error {
	s.mu.Lock()
	inSeg := m.seg != nil
	state := m.stateOnDisk
	s.mu.Unlock()
	var err error
	switch {
	case !inSeg:
		err = removeFiles(s.o.Dir, m.ID)
	case state:
		s.release(m, true)
		if err = os.Remove(statePath(s.o.Dir, m.ID)); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	default:
		// The common case, delivered at the first attempt: no state file.
		s.release(m, true)
	}
	s.mu.Lock()
	if s.msgs[m.ID] == m {
		delete(s.msgs, m.ID)
	}
	s.mu.Unlock()
	return err
}

// Defer records an attempt that left recipients pending: st is written as m's state
// (ID.state), and a message still in its segment moves to a file of its own (ID.msg, written
// from data, its content; nil leaves it where it is), so that a long wait never pins a
// segment. The error is the state's; a failed move is logged and leaves the message in its
// segment, which then stays too. Nothing this writes outlives a deletion of m meanwhile.
func (s *Spool) Defer(m *Message, st State, data []byte) error {
	s.mu.Lock()
	inSeg := m.seg != nil
	s.mu.Unlock()
	err := s.persist(m.ID, st, inSeg)
	if err == nil && inSeg && data != nil {
		s.moveOut(m, data)
	}
	s.mu.Lock()
	// Even a failed write may have left a state file (renamed, then the directory fsync
	// failed): only a success without one would be wrong to assume.
	m.stateOnDisk = true
	s.mu.Unlock()
	if m.Deleted() {
		// Deleted while the state was being written: that write may have put a state
		// file (or a message file) back next to no message. The deletion marks m before
		// it removes the files, so one of the two removals comes after the write.
		removeFiles(s.o.Dir, m.ID)
	}
	return err
}

// persist writes ID.state, unless the message file is gone (deleted by the admin). A
// message still in a segment has no file; its deletion is noticed by Requests.
func (s *Spool) persist(id string, st State, inSeg bool) error {
	if !inSeg {
		if _, err := os.Stat(msgPath(s.o.Dir, id)); err != nil {
			return err
		}
	}
	b, err := json.Marshal(fileState(st))
	if err != nil {
		return err
	}
	return writeFile(s.dir, id+stateSuffix, s.syncDir, b)
}

// moveOut writes m to a file of its own (ID.msg) and marks its record done. On failure
// it stays in its segment, which then stays too.
func (s *Spool) moveOut(m *Message, data []byte) {
	line, err := encodeEnvelope(envelope{From: rawString(m.From), To: m.To, Received: m.Received, Size: len(data), CRC: checksum(data)})
	if err == nil {
		err = writeFile(s.dir, m.ID+msgSuffix, s.syncDir, line, data)
	}
	if err != nil {
		s.log.Error("spool: move a deferred message out of its segment", "id", m.ID, "err", err)
		return
	}
	s.release(m, true)
}

// Forget drops m from the spool's memory without touching its files, which are gone
// already (removed from the directory, or deleted by `relay queue delete`); m is Deleted
// from then on. A segment left without messages is retired.
func (s *Spool) Forget(m *Message) {
	s.mu.Lock()
	retire := s.dropLocked(m)
	s.mu.Unlock()
	if retire != nil {
		s.retire(retire)
	}
}

// dropLocked takes m out of memory and its segment, marks it deleted, and returns its
// segment when that is to be retired now. s.mu is held.
func (s *Spool) dropLocked(m *Message) *segment {
	var retire *segment
	if seg := m.seg; seg != nil {
		m.seg = nil
		if s.unlinkLocked(seg) {
			retire = seg
		}
	}
	m.deleted.Store(true)
	if s.msgs[m.ID] == m {
		delete(s.msgs, m.ID)
	}
	return retire
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

// Close stops taking messages (Put returns ErrClosed), waits for a batch being written and
// closes the files; the messages stay spooled as they are. Stop the scheduler first.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
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
	Depth  int       // messages in the spool
	Oldest time.Time // arrival of the oldest message; zero when empty
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
		if st.Oldest.IsZero() || m.Received.Before(st.Oldest) {
			st.Oldest = m.Received
		}
	}
	s.mu.Unlock()
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
