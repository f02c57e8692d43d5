package spool

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"relay/internal/deliver"
)

// Run delivers spooled messages with Options.Workers concurrent deliveries until ctx is
// done. It then stops starting deliveries and returns once those in flight have finished;
// they run with their own context (cancelled by Close), so the caller bounds the wait with
// its grace period. Messages not delivered stay spooled for the next start.
func (s *Spool) Run(ctx context.Context) {
	if !s.running.CompareAndSwap(false, true) {
		panic("spool: Run called twice")
	}
	defer s.running.Store(false)
	work := make(chan *message)
	var wg sync.WaitGroup
	for range s.o.Workers {
		wg.Go(func() {
			for m := range work {
				s.attempt(m)
			}
		})
	}
	s.dispatch(ctx, work)
	close(work)
	wg.Wait()
}

// dispatch hands due messages to the workers: fresh submissions at once (Submit appends to
// s.ready and wakes it), retries when their time comes, and it applies the requests of
// `relay queue` every PollInterval.
func (s *Spool) dispatch(ctx context.Context, work chan<- *message) {
	poll := time.NewTicker(s.o.PollInterval)
	defer poll.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := s.o.Now()
		for len(s.waiting) > 0 && !s.waiting[0].st.NextTry.After(now) {
			s.ready = append(s.ready, heap.Pop(&s.waiting).(*message))
		}
		var next *message
		if len(s.ready) > 0 {
			next = s.ready[0]
		}
		wait := time.Hour
		if len(s.waiting) > 0 {
			wait = s.waiting[0].st.NextTry.Sub(now)
		}
		s.mu.Unlock()
		timer.Reset(wait)

		var out chan<- *message
		if next != nil {
			out = work
		}
		select {
		case out <- next:
			// Only the dispatcher removes from s.ready (Submit appends), so next is
			// still its head. The worker takes s.mu before it looks at next.
			s.mu.Lock()
			s.ready[0] = nil
			s.ready = s.ready[1:]
			s.mu.Unlock()
		case <-s.kick:
		case <-timer.C:
		case <-poll.C:
			s.applyRequests()
		case <-ctx.Done():
			return
		}
	}
}

// schedule queues m for its next try. s.mu is held.
func (s *Spool) schedule(m *message, now time.Time) {
	if m.st.NextTry.After(now) {
		heap.Push(&s.waiting, m)
	} else {
		s.ready = append(s.ready, m)
	}
	s.wake()
}

// outcome is what one attempt did to one recipient.
type outcome struct {
	rcpt   string
	status [3]int // RFC 3463
	diag   string // the upstream reply, "550 5.1.1 no such user", or our own reason
	reply  bool   // diag is an SMTP reply
}

// attempt delivers m once to its pending recipients and records the result: delivered
// recipients are done; permanent failures (5xx, or MaxAge reached) are reported in one DSN
// and then done; the rest wait for the next try. Every state change is on disk before it
// is acted on.
func (s *Spool) attempt(m *message) {
	s.mu.Lock()
	if m.deleted {
		s.mu.Unlock()
		return
	}
	m.inflight = true
	pending := m.pending()
	data := m.data
	s.mu.Unlock()

	ctx := s.abort
	start := time.Now()
	if data == nil {
		var err error
		if data, err = s.readData(m); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				s.forget(m, "removed from the spool directory")
				return
			}
			s.finish(m, data, start, nil, nil, []outcome{{status: [3]int{4, 3, 0}, diag: "spool read: " + err.Error()}})
			return
		}
	}
	results, err := s.o.Sender.Send(ctx, m.from, pending, data)
	if err != nil && ctx.Err() != nil {
		// Close cut the attempt short: it says nothing about the upstream. The message
		// stays as it is on disk, for the next start.
		s.mu.Lock()
		m.inflight = false
		s.mu.Unlock()
		return
	}
	var delivered []string
	var failed, temp []outcome
	for _, rcpt := range pending {
		r, ok := find(results, rcpt)
		switch {
		case ok && err == nil && r.Code/100 == 2:
			delivered = append(delivered, rcpt)
		case ok && r.Code/100 == 5:
			failed = append(failed, outcome{rcpt, statusOf(r.Code, r.Enhanced), replyText(r.Code, r.Enhanced, r.Msg), true})
		case ok && r.Code/100 == 4:
			temp = append(temp, outcome{rcpt, statusOf(r.Code, r.Enhanced), replyText(r.Code, r.Enhanced, r.Msg), true})
		case err != nil:
			// A transaction-level failure (MAIL FROM, DATA, the connection) applies to
			// every recipient that was not refused on its own. With it, even an
			// accepted RCPT is not a delivery: DATA did not complete.
			o := outcome{rcpt: rcpt}
			o.status, o.diag, o.reply = errorText(err)
			if permanent(err) {
				failed = append(failed, o)
			} else {
				temp = append(temp, o)
			}
		default:
			// The Sender broke its contract (no result for a recipient): try again.
			temp = append(temp, outcome{rcpt: rcpt, status: [3]int{4, 0, 0}, diag: "no answer for this recipient"})
		}
	}
	s.finish(m, data, start, delivered, failed, temp)
}

// finish records an attempt: expiry turns the remaining temporary failures into permanent
// ones, the DSN goes out, the state is persisted, and m is removed or rescheduled. A
// temp outcome without rcpt applies to every pending recipient.
func (s *Spool) finish(m *message, data []byte, start time.Time, delivered []string, failed, temp []outcome) {
	now := s.o.Now()
	s.mu.Lock()
	pending := m.pending()
	attempts := m.st.Attempts + 1
	s.mu.Unlock()
	if len(temp) == 1 && temp[0].rcpt == "" {
		t := temp[0]
		temp = temp[:0]
		for _, r := range pending {
			temp = append(temp, outcome{r, t.status, t.diag, t.reply})
		}
	}
	if len(temp) > 0 && now.Sub(m.received) >= s.o.MaxAge {
		// SPEC §8: max_age reached. RFC 3463 4.4.7: delivery time expired; the last
		// reply stays as the diagnostic.
		for _, t := range temp {
			failed = append(failed, outcome{t.rcpt, [3]int{4, 4, 7}, t.diag, t.reply})
		}
		temp = nil
	}

	var bounced []string
	if len(failed) > 0 {
		if m.from == "" {
			// RFC 3464 §2 / RFC 5321 §6.1: never a DSN about a DSN (null sender).
			for _, f := range failed {
				bounced = append(bounced, f.rcpt)
			}
		} else {
			if err := s.o.Bounce(s.abort, m.from, s.dsn(m, failed, data, now)); err != nil {
				// Without its DSN a failure cannot be final: try the recipients again
				// later, which either delivers or fails them again with a new DSN.
				s.log.Error("spool: DSN not sent; recipients kept for a retry", "id", m.id, "to", m.from, "err", err)
				for _, f := range failed {
					temp = append(temp, outcome{f.rcpt, f.status, f.diag + "; DSN failed: " + oneLine(err.Error()), f.reply})
				}
			} else {
				for _, f := range failed {
					bounced = append(bounced, f.rcpt)
				}
			}
		}
	}

	s.mu.Lock()
	deleted := m.deleted
	m.inflight = false
	m.st.Attempts = attempts
	m.st.LastTry = now
	m.st.Delivered = append(m.st.Delivered, delivered...)
	m.st.Bounced = append(m.st.Bounced, bounced...)
	if len(temp) > 0 {
		m.st.LastError = fmt.Sprintf("<%s>: %s", temp[0].rcpt, temp[0].diag)
	} else if len(failed) > 0 {
		m.st.LastError = fmt.Sprintf("<%s>: %s", failed[0].rcpt, failed[0].diag)
	}
	left := len(m.pending())
	if left > 0 {
		m.st.NextTry = s.nextTry(m, attempts, now)
	}
	st := m.st
	st.Delivered = append([]string(nil), st.Delivered...)
	st.Bounced = append([]string(nil), st.Bounced...)
	if m.data != nil {
		// Retries read the file: memory is for the fast path only.
		s.cached -= len(m.data)
		m.data = nil
	}
	s.mu.Unlock()

	s.delivered.Add(int64(len(delivered)))
	s.bounced.Add(int64(len(bounced)))
	if left > 0 {
		s.deferred.Add(1)
	}
	s.log.Info("delivery",
		"id", m.id, "from", m.from, "attempt", attempts,
		"delivered", delivered, "bounced", bounced, "deferred", rcpts(temp),
		"reply", st.LastError, "next_try", nextField(left, st.NextTry),
		"duration", time.Since(start).Round(time.Millisecond))

	if deleted {
		s.forget(m, "deleted during delivery")
		return
	}
	if left == 0 {
		// In the common case (delivered at the first attempt) there is no state file.
		if err := s.removeDelivered(m); err != nil {
			// The message will be loaded again at the next start with the recipients
			// of its last persisted state: at-least-once.
			s.log.Error("spool: remove delivered message", "id", m.id, "err", err)
		}
		s.mu.Lock()
		delete(s.msgs, m.id)
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	inSeg := m.seg != nil
	s.mu.Unlock()
	err := s.persist(m.id, st, inSeg)
	if err != nil {
		// The message stays queued in memory and on disk; what is lost is only the
		// record of this attempt, so a restart may repeat deliveries, never drop one.
		s.log.Error("spool: persist state", "id", m.id, "err", err)
	} else if inSeg && data != nil {
		// It waits for a retry: out of the log, so that its segment can be retired.
		s.moveOut(m, data)
	}
	s.mu.Lock()
	// Even a failed write may have left a state file (renamed, then the directory fsync
	// failed): only a success without one would be wrong to assume.
	m.stateOnDisk = true
	deleted = m.deleted
	if !deleted {
		s.schedule(m, now)
	}
	s.mu.Unlock()
	if deleted {
		// Deleted while the state was being written: that write may have put a state
		// file back next to no message.
		removeFiles(s.o.Dir, m.id)
	}
}

// persist writes ID.state, unless the message file is gone (deleted by the admin). A
// message still in a segment has no file; its deletion is noticed by the dispatcher.
func (s *Spool) persist(id string, st state, inSeg bool) error {
	if !inSeg {
		if _, err := os.Stat(msgPath(s.o.Dir, id)); err != nil {
			return err
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return writeFile(s.dir, id+stateSuffix, s.syncDir, b)
}

// moveOut writes m to a file of its own (ID.msg) and marks its record done. On failure
// it stays in its segment, which then stays too.
func (s *Spool) moveOut(m *message, data []byte) {
	line, err := encodeEnvelope(envelope{From: rawString(m.from), To: m.to, Received: m.received, Size: len(data), CRC: checksum(data)})
	if err == nil {
		err = writeFile(s.dir, m.id+msgSuffix, s.syncDir, line, data)
	}
	if err != nil {
		s.log.Error("spool: move a deferred message out of its segment", "id", m.id, "err", err)
		return
	}
	s.release(m, true)
}

// readData reads the message of m from its segment or its file.
func (s *Spool) readData(m *message) ([]byte, error) {
	s.mu.Lock()
	seg, off, crc := m.seg, m.off, m.crc
	s.mu.Unlock()
	if seg != nil {
		return readChecked(seg.f, seg.id, off, m.size, crc)
	}
	_, data, err := readMessage(msgPath(s.o.Dir, m.id))
	return data, err
}

// forget drops m from memory, its file being gone.
func (s *Spool) forget(m *message, why string) {
	s.mu.Lock()
	retire := s.dropLocked(m)
	s.mu.Unlock()
	if retire != nil {
		s.retire(retire)
	}
	s.log.Info("spool: message dropped", "id", m.id, "reason", why)
}

// dropLocked removes m from every in-memory structure, and returns its segment when that
// is to be retired now. s.mu is held.
func (s *Spool) dropLocked(m *message) *segment {
	var retire *segment
	if seg := m.seg; seg != nil {
		m.seg = nil
		if s.unlinkLocked(seg) {
			retire = seg
		}
	}
	m.deleted = true
	m.inflight = false
	if m.index >= 0 {
		heap.Remove(&s.waiting, m.index)
	}
	if m.data != nil {
		s.cached -= len(m.data)
		m.data = nil
	}
	delete(s.msgs, m.id)
	return retire
}

// nextTry is exponential backoff with jitter: RetryMin doubled per attempt up to RetryMax,
// then a random point in its upper half (so retries of many messages after an outage
// spread out), never below RetryMin, and never after the message expires, so that the
// expiry DSN is not late by a whole RetryMax.
func (s *Spool) nextTry(m *message, attempts int, now time.Time) time.Time {
	d := s.o.RetryMin
	for i := 1; i < attempts && d < s.o.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.o.RetryMax)
	d = d/2 + rand.N(d/2+1)
	d = max(d, s.o.RetryMin)
	next := now.Add(d)
	if exp := m.received.Add(s.o.MaxAge); next.After(exp) && exp.After(now) {
		next = exp
	}
	return next
}

func find(results []RcptResult, rcpt string) (RcptResult, bool) {
	for _, r := range results {
		if r.Rcpt == rcpt {
			return r, true
		}
	}
	return RcptResult{}, false
}

// permanent reports whether a transaction-level error is a 5xx. net errors are never
// permanent: their Temporary method is deprecated and false for a refused connection,
// which must be retried, not bounced.
func permanent(err error) bool {
	var t interface{ Temporary() bool }
	if !errors.As(err, &t) {
		return false
	}
	if _, ok := t.(net.Error); ok {
		return false
	}
	return !t.Temporary()
}

// statusOf is the RFC 3463 status of a reply: its enhanced code when it has a consistent
// one, else class.0.0.
func statusOf(code int, enh [3]int) [3]int {
	class := code / 100
	if enh[0] != class {
		return [3]int{class, 0, 0}
	}
	return enh
}

// replyText renders a reply as Diagnostic-Code text, on one line.
func replyText(code int, enh [3]int, msg string) string {
	st := statusOf(code, enh)
	return oneLine(fmt.Sprintf("%d %d.%d.%d %s", code, st[0], st[1], st[2], msg))
}

// errorText is the status and diagnostic for a transaction-level error: the upstream's
// reply when there was one, else the fault (4.4.1, RFC 3463 "no answer from host").
func errorText(err error) (status [3]int, diag string, reply bool) {
	var de *deliver.Error
	if errors.As(err, &de) && de.Code/100 >= 4 {
		return statusOf(de.Code, de.Enhanced), replyText(de.Code, de.Enhanced, de.Msg), true
	}
	if permanent(err) {
		return [3]int{5, 0, 0}, oneLine(err.Error()), false
	}
	return [3]int{4, 4, 1}, oneLine(err.Error()), false
}

// oneLine makes s fit a header field: no CR, LF or other control characters.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 900 {
		s = s[:900] + "..."
	}
	return s
}

func rcpts(outs []outcome) []string {
	var r []string
	for _, o := range outs {
		r = append(r, o.rcpt)
	}
	return r
}

func nextField(left int, t time.Time) any {
	if left == 0 {
		return nil
	}
	return t
}

// timeHeap orders messages by their next try.
type timeHeap []*message

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i].st.NextTry.Before(h[j].st.NextTry) }
func (h timeHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *timeHeap) Push(x any) {
	m := x.(*message)
	m.index = len(*h)
	*h = append(*h, m)
}
func (h *timeHeap) Pop() any {
	old := *h
	m := old[len(old)-1]
	old[len(old)-1] = nil
	m.index = -1
	*h = old[:len(old)-1]
	return m
}
