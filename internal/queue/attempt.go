package queue

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"time"

	"relay/internal/deliver"
	"relay/internal/dsn"
	"relay/internal/metrics"
	"relay/internal/spool"
)

// outcome is what one attempt did to one recipient: its RFC 3463 status and the diagnostic,
// the upstream's reply ("550 5.1.1 no such user") or our own reason. A permanent one goes
// into the DSN as it is.
type outcome = dsn.Recipient

// attempt delivers it once to its pending recipients and records the result: delivered
// recipients are done; permanent failures (5xx, or MaxAge reached) are reported in one DSN
// and then done; the rest wait for the next try. Every state change is on disk before it
// is acted on.
func (q *Queue) attempt(it *item) {
	m := it.m
	q.mu.Lock()
	if m.Deleted() {
		q.mu.Unlock()
		return
	}
	it.inflight = true
	pending := it.pending()
	data := it.data
	q.mu.Unlock()

	ctx := q.abort
	start := time.Now()
	if data == nil {
		var err error
		if data, err = q.sp.Read(m); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				q.forget(it, "removed from the spool directory")
				return
			}
			q.finish(it, data, start, nil, nil, []outcome{{Status: [3]int{4, 3, 0}, Diag: "spool read: " + err.Error()}})
			return
		}
	}
	sent := time.Now()
	results, err := q.o.Sender.Send(ctx, m.From, pending, data)
	q.o.Metrics.Since(metrics.StageDeliver, sent)
	if err != nil && ctx.Err() != nil {
		// Close cut the attempt short: it says nothing about the upstream. The message
		// stays as it is on disk, for the next start.
		q.mu.Lock()
		it.inflight = false
		q.mu.Unlock()
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
			failed = append(failed, outcome{Addr: rcpt, Status: statusOf(r.Code, r.Enhanced), Diag: replyText(r.Code, r.Enhanced, r.Msg), Reply: true})
		case ok && r.Code/100 == 4:
			temp = append(temp, outcome{Addr: rcpt, Status: statusOf(r.Code, r.Enhanced), Diag: replyText(r.Code, r.Enhanced, r.Msg), Reply: true})
		case err != nil:
			// A transaction-level failure (MAIL FROM, DATA, the connection) applies to
			// every recipient that was not refused on its own. With it, even an
			// accepted RCPT is not a delivery: DATA did not complete.
			o := outcome{Addr: rcpt}
			o.Status, o.Diag, o.Reply = errorText(err)
			if permanent(err) {
				failed = append(failed, o)
			} else {
				temp = append(temp, o)
			}
		default:
			// The Sender broke its contract (no result for a recipient): try again.
			temp = append(temp, outcome{Addr: rcpt, Status: [3]int{4, 0, 0}, Diag: "no answer for this recipient"})
		}
	}
	q.finish(it, data, start, delivered, failed, temp)
}

// finish records an attempt: expiry turns the remaining temporary failures into permanent
// ones, the DSN goes out, the state is persisted, and the message is removed or
// rescheduled. A temp outcome without Addr applies to every pending recipient.
func (q *Queue) finish(it *item, data []byte, start time.Time, delivered []string, failed, temp []outcome) {
	m := it.m
	now := q.o.Now()
	q.mu.Lock()
	pending := it.pending()
	attempts := it.st.Attempts + 1
	q.mu.Unlock()
	if len(temp) == 1 && temp[0].Addr == "" {
		t := temp[0]
		temp = temp[:0]
		for _, r := range pending {
			temp = append(temp, outcome{Addr: r, Status: t.Status, Diag: t.Diag, Reply: t.Reply})
		}
	}
	if len(temp) > 0 && now.Sub(m.Received) >= q.o.MaxAge {
		// SPEC §8: max_age reached. RFC 3463 4.4.7: delivery time expired; the last
		// reply stays as the diagnostic.
		for _, t := range temp {
			failed = append(failed, outcome{Addr: t.Addr, Status: [3]int{4, 4, 7}, Diag: t.Diag, Reply: t.Reply})
		}
		temp = nil
	}

	var bounced []string
	if len(failed) > 0 {
		if m.From == "" {
			// RFC 3464 §2 / RFC 5321 §6.1: never a DSN about a DSN (null sender).
			for _, f := range failed {
				bounced = append(bounced, f.Addr)
			}
		} else {
			r := dsn.Report{ID: m.ID, Sender: m.From, Arrival: m.Received, Date: now, Failed: failed, Message: data}
			if err := q.o.Bouncer.Bounce(q.abort, r); err != nil {
				// Without its DSN a failure cannot be final: try the recipients again
				// later, which either delivers or fails them again with a new DSN.
				q.log.Error("spool: DSN not sent; recipients kept for a retry", "id", m.ID, "to", m.From, "err", err)
				for _, f := range failed {
					temp = append(temp, outcome{Addr: f.Addr, Status: f.Status, Diag: f.Diag + "; DSN failed: " + oneLine(err.Error()), Reply: f.Reply})
				}
			} else {
				for _, f := range failed {
					bounced = append(bounced, f.Addr)
				}
			}
		}
	}

	q.mu.Lock()
	deleted := m.Deleted()
	it.inflight = false
	it.st.Attempts = attempts
	it.st.LastTry = now
	it.st.Delivered = append(it.st.Delivered, delivered...)
	it.st.Bounced = append(it.st.Bounced, bounced...)
	if len(temp) > 0 {
		it.st.LastError = fmt.Sprintf("<%s>: %s", temp[0].Addr, temp[0].Diag)
	} else if len(failed) > 0 {
		it.st.LastError = fmt.Sprintf("<%s>: %s", failed[0].Addr, failed[0].Diag)
	}
	left := len(it.pending())
	if left > 0 {
		it.st.NextTry = q.nextTry(m, attempts, now)
	}
	st := it.st
	st.Delivered = append([]string(nil), st.Delivered...)
	st.Bounced = append([]string(nil), st.Bounced...)
	if it.data != nil {
		// Retries read the spool: memory is for the fast path only.
		q.cached -= len(it.data)
		it.data = nil
	}
	q.mu.Unlock()

	q.delivered.Add(int64(len(delivered)))
	q.bounced.Add(int64(len(bounced)))
	if left > 0 {
		q.deferred.Add(1)
	}
	// Per recipient: temp holds every recipient left for a retry, a failed one whose DSN
	// could not be sent included.
	q.o.Metrics.Deliveries(len(delivered), len(temp), len(bounced))
	q.log.Info("delivery",
		"id", m.ID, "from", m.From, "attempt", attempts,
		"delivered", delivered, "bounced", bounced, "deferred", rcpts(temp),
		"reply", st.LastError, "next_try", nextField(left, st.NextTry),
		"duration", time.Since(start).Round(time.Millisecond))
	if q.o.Observe != nil {
		q.o.Observe(Outcome{ID: m.ID, From: m.From, Attempt: attempts, Delivered: delivered, Bounced: bounced,
			Deferred: rcpts(temp), Reply: st.LastError, Time: now, Duration: time.Since(start)})
	}

	if deleted {
		q.forget(it, "deleted during delivery")
		return
	}
	if left == 0 {
		if err := q.sp.Done(m); err != nil {
			// The message will be loaded again at the next start with the recipients
			// of its last persisted state: at-least-once.
			q.log.Error("spool: remove delivered message", "id", m.ID, "err", err)
		}
		q.mu.Lock()
		if q.msgs[m.ID] == it {
			delete(q.msgs, m.ID)
		}
		q.mu.Unlock()
		return
	}
	if err := q.sp.Defer(m, st, data); err != nil {
		// The message stays queued in memory and on disk; what is lost is only the
		// record of this attempt, so a restart may repeat deliveries, never drop one.
		q.log.Error("spool: persist state", "id", m.ID, "err", err)
	}
	q.mu.Lock()
	if !m.Deleted() {
		q.schedule(it, now)
	}
	q.mu.Unlock()
}

// forget drops it, whose files are gone, from the spool's memory and the queue's.
func (q *Queue) forget(it *item, why string) {
	q.sp.Forget(it.m)
	q.mu.Lock()
	q.dropLocked(it)
	q.mu.Unlock()
	q.log.Info("spool: message dropped", "id", it.m.ID, "reason", why)
}

// nextTry is exponential backoff with jitter: RetryMin doubled per attempt up to RetryMax,
// then a random point in its upper half (so retries of many messages after an outage
// spread out), never below RetryMin, and never after the message expires, so that the
// expiry DSN is not late by a whole RetryMax.
func (q *Queue) nextTry(m *spool.Message, attempts int, now time.Time) time.Time {
	d := q.o.RetryMin
	for i := 1; i < attempts && d < q.o.RetryMax; i++ {
		d *= 2
	}
	d = min(d, q.o.RetryMax)
	d = d/2 + rand.N(d/2+1)
	d = max(d, q.o.RetryMin)
	next := now.Add(d)
	if exp := m.Received.Add(q.o.MaxAge); next.After(exp) && exp.After(now) {
		next = exp
	}
	return next
}

func find(results []deliver.RcptResult, rcpt string) (deliver.RcptResult, bool) {
	for _, r := range results {
		if r.Rcpt == rcpt {
			return r, true
		}
	}
	return deliver.RcptResult{}, false
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
		r = append(r, o.Addr)
	}
	return r
}

func nextField(left int, t time.Time) any {
	if left == 0 {
		return nil
	}
	return t
}
