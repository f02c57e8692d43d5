package spool

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The admin operations below work on the directory alone, so `relay queue` can run in
// another process while the server runs. They never write a state file: the server owns
// those, and a state written from two processes could forget a delivered recipient.
// Instead Retry and Delete leave a request in DIR/ctl/ (an empty file named
// "retry-ID", "retry" for all, or "delete-ID"), which the server applies within
// a second (the scheduler's poll interval) and at start, then removes (Requests).

// Entry describes one spooled message.
type Entry struct {
	ID        string
	Received  time.Time
	From      string   // envelope sender, "" for <>
	To        []string // recipients still pending
	Done      []string // recipients delivered or bounced
	Size      int      // octets of the message
	Attempts  int
	NextTry   time.Time // zero: as soon as possible
	LastError string
	// RetryRequested: `relay queue retry` asked for a retry that the server has not
	// applied yet (it is not running, or within a poll interval).
	RetryRequested bool
}

// ErrNotFound is returned for an id that is not in the spool.
var ErrNotFound = errors.New("no such message in the spool")

// List returns the messages in dir, oldest first. Files that are being written or
// damaged are skipped.
func List(dir string) ([]Entry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool %s: %w", dir, err)
	}
	all := requested(dir, "retry")
	var out []Entry
	var names []string
	inFile := map[string]bool{}
	for _, e := range ents {
		names = append(names, e.Name())
		id := idOf(e.Name())
		if id == "" {
			continue
		}
		inFile[id] = true
		ent, err := entry(dir, id)
		if err != nil {
			continue // delivered and removed meanwhile, or damaged: Open reports those
		}
		ent.RetryRequested = ent.RetryRequested || all
		out = append(out, ent)
	}
	segMsgs, _, err := scanSegments(dir, names, nil)
	if err != nil {
		return nil, fmt.Errorf("spool %s: %w", dir, err)
	}
	for id, sm := range segMsgs {
		if inFile[id] {
			continue // moved out of its segment: the file is the truth
		}
		st, err := readState(dir, id)
		if err != nil {
			continue
		}
		ent := newEntry(dir, id, sm.rec.env, st)
		ent.RetryRequested = ent.RetryRequested || all
		if len(ent.To) > 0 {
			out = append(out, ent)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(a.Received.Compare(b.Received), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}

func entry(dir, id string) (Entry, error) {
	env, err := readEnvelope(msgPath(dir, id))
	if err != nil {
		return Entry{}, err
	}
	st, err := readState(dir, id)
	if err != nil {
		return Entry{}, err
	}
	return newEntry(dir, id, env, st), nil
}

func newEntry(dir, id string, env envelope, st State) Entry {
	e := Entry{
		ID: id, Received: env.Received, From: string(env.From), Size: env.Size,
		Attempts: st.Attempts, NextTry: st.NextTry, LastError: st.LastError,
		RetryRequested: requested(dir, "retry-"+id),
	}
	for _, r := range env.To {
		if st.Done(r) {
			e.Done = append(e.Done, r)
		} else {
			e.To = append(e.To, r)
		}
	}
	return e
}

// Show returns the entry and the message of id.
func Show(dir, id string) (Entry, []byte, error) {
	if err := validID(id); err != nil {
		return Entry{}, nil, err
	}
	env, data, err := readMessage(msgPath(dir, id))
	if errors.Is(err, os.ErrNotExist) {
		sm, ok, serr := findInSegments(dir, id)
		switch {
		case serr != nil:
			return Entry{}, nil, serr
		case !ok:
			return Entry{}, nil, fmt.Errorf("%s: %w", id, ErrNotFound)
		}
		env = sm.rec.env
		data, err = readRecordData(dir, sm)
		if errors.Is(err, os.ErrNotExist) {
			return Entry{}, nil, fmt.Errorf("%s: %w", id, ErrNotFound) // delivered meanwhile
		}
		if err != nil {
			return Entry{}, nil, err
		}
	}
	if err != nil {
		return Entry{}, nil, err
	}
	st, err := readState(dir, id)
	if err != nil {
		return Entry{}, nil, err
	}
	e := newEntry(dir, id, env, st)
	e.RetryRequested = e.RetryRequested || requested(dir, "retry")
	return e, data, nil
}

// Retry asks for id ("" = every message) to be tried now. The running server applies
// the request within its poll interval; a stopped one at its next start.
func Retry(dir, id string) error {
	name := "retry"
	if id != "" {
		if err := exists(dir, id); err != nil {
			return err
		}
		name = "retry-" + id
	}
	return request(dir, name)
}

// Delete removes id from the spool without delivering it further. The files go at once
// (List no longer shows it); a running server forgets the message within its poll
// interval, and one in the middle of delivering it finishes that attempt.
//
// A message still in a segment is marked done in the segment's done file, which is synced:
// the server never appends to a segment it did not write, and Open skips what is done.
func Delete(dir, id string) error {
	sm, inSeg, err := where(dir, id)
	if err != nil {
		return err
	}
	if err := request(dir, "delete-"+id); err != nil {
		return err
	}
	if inSeg {
		if err := markDoneSynced(dir, sm.segID, id); err != nil {
			return fmt.Errorf("spool %s: delete %s: %w", dir, id, err)
		}
	}
	if err := removeFiles(dir, id); err != nil {
		return fmt.Errorf("spool %s: delete %s: %w", dir, id, err)
	}
	return syncDir(dir)
}

func exists(dir, id string) error {
	_, _, err := where(dir, id)
	return err
}

// where finds id: in a file of its own, or in a segment (inSeg).
func where(dir, id string) (sm segMessage, inSeg bool, err error) {
	if err := validID(id); err != nil {
		return sm, false, err
	}
	_, err = os.Stat(msgPath(dir, id))
	if err == nil {
		return sm, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return sm, false, err
	}
	sm, ok, err := findInSegments(dir, id)
	if err != nil {
		return sm, false, err
	}
	if !ok {
		return sm, false, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	return sm, true, nil
}

// findInSegments looks for id among the segments' messages that are not done.
func findInSegments(dir, id string) (segMessage, bool, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return segMessage{}, false, fmt.Errorf("spool %s: %w", dir, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	msgs, _, err := scanSegments(dir, names, nil)
	if err != nil {
		return segMessage{}, false, fmt.Errorf("spool %s: %w", dir, err)
	}
	sm, ok := msgs[id]
	return sm, ok, nil
}

// markDoneSynced appends id to a segment's done file and syncs it.
func markDoneSynced(dir, segID, id string) error {
	f, err := os.OpenFile(donePath(dir, segID), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(id + "\n"))
	return cmp.Or(err, f.Sync(), f.Close())
}

// request leaves a request file for the server.
func request(dir, name string) error {
	if _, err := os.Stat(filepath.Join(dir, ctlDir)); err != nil {
		// No ctl directory: this is not a spool (a wrong -config or dir).
		return fmt.Errorf("spool %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ctlDir, name), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("spool %s: %w", dir, err)
	}
	return f.Close()
}

func requested(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, ctlDir, name))
	return err == nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Request is one request of `relay queue` to the running server, as Requests hands it on.
type Request struct {
	Op Op
	ID string // the message; "" with OpRetryAll
}

// Op is what a Request asks for.
type Op int

const (
	OpRetryAll Op = iota + 1 // try every waiting message now ("retry")
	OpRetry                  // try ID now ("retry-ID")
	OpDelete                 // ID is deleted ("delete-ID"): the spool has forgotten it
)

// Requests carries out the requests left in ctl/ by Retry and Delete, and removes them. The
// spool does its own part (a deletion forgets the message, making it Deleted, and removes
// its files again: a delivery attempt that ended since Delete may have written a new state
// file) and hands each request to apply for the rest (scheduling). The scheduler calls it
// from one goroutine, its dispatcher (and before it starts), so that a request never races
// with a hand-off to a worker.
func (s *Spool) Requests(apply func(Request)) {
	ctl := filepath.Join(s.o.Dir, ctlDir)
	ents, err := os.ReadDir(ctl)
	if err != nil {
		// Once per outage, not every poll.
		if !s.ctlBroken {
			s.log.Error("spool: read requests", "dir", ctl, "err", err)
		}
		s.ctlBroken = true
		return
	}
	s.ctlBroken = false
	var retire []*segment
	for _, e := range ents {
		name := e.Name()
		switch {
		case name == "retry":
			apply(Request{Op: OpRetryAll})
		case strings.HasPrefix(name, "retry-"):
			apply(Request{Op: OpRetry, ID: strings.TrimPrefix(name, "retry-")})
		case strings.HasPrefix(name, "delete-"):
			id := strings.TrimPrefix(name, "delete-")
			s.mu.Lock()
			if m := s.msgs[id]; m != nil {
				if seg := s.dropLocked(m); seg != nil {
					retire = append(retire, seg)
				}
				s.log.Info("spool: message deleted by request", "id", m.ID)
			}
			if validID(id) == nil {
				removeFiles(s.o.Dir, id)
			}
			s.mu.Unlock()
			apply(Request{Op: OpDelete, ID: id})
		}
		if err := os.Remove(filepath.Join(ctl, name)); err != nil {
			s.log.Error("spool: remove request", "file", name, "err", err)
		}
	}
	for _, seg := range retire {
		s.retire(seg)
	}
}
