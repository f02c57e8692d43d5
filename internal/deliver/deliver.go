// Package deliver owns the upstream side of the relay: the go-smtp client, the pool of
// reused connections to the smarthost and the file outbox (SPEC §8). It sends what it is
// given and reports the upstream's answer; it never retries later, queues or bounces (the
// queue does), and never turns an answer into a reply to our own clients (smtpd does, through
// Error.SMTPReply).
package deliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"relay/internal/config"
)

// RcptResult is the upstream's answer for one recipient. An accepted recipient has Code 250
// and nothing else: go-smtp's client does not pass on the text of a positive reply.
type RcptResult struct {
	Rcpt     string
	Code     int // 250 when accepted
	Enhanced [3]int
	Msg      string
}

// Accepted reports whether the upstream took the recipient.
func (r RcptResult) Accepted() bool { return r.Code/100 == 2 }

// Error is a transaction-level failure: an upstream reply (Code set) or a
// connection/TLS/protocol fault (Code 0). Faults while setting a connection up (greeting,
// EHLO, STARTTLS, AUTH) are faults too, even when the upstream answered with a code: a bad
// password or a TLS mismatch is the operator's to fix, and the mail must wait for it, not
// bounce.
type Error struct {
	Code     int
	Enhanced [3]int
	Msg      string
	Err      error

	// local marks a failure of this machine (the file outbox could not be written), not of
	// an upstream: the client is told 451 4.3.0, like any internal fault.
	local bool
}

func (e *Error) Error() string {
	if e.Err != nil {
		return "upstream: " + e.Err.Error()
	}
	return fmt.Sprintf("upstream: %d %d.%d.%d %s", e.Code, e.Enhanced[0], e.Enhanced[1], e.Enhanced[2], e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether sending again later may succeed: a 4xx reply or a fault.
func (e *Error) Temporary() bool { return e.Code/100 != 5 }

// SMTPReply is the reply our own client gets for this failure: the upstream's 4xx or 5xx
// passed on with its text, and 451 4.4.1 for a fault (RFC 3463: 4.4.1 "no answer from
// host"), so that the client retries and never bounces because of our link.
func (e *Error) SMTPReply() (int, [3]int, string) {
	if e.local {
		return 451, [3]int{4, 3, 0}, "local error, try again later"
	}
	class := e.Code / 100
	if class != 4 && class != 5 {
		return 451, [3]int{4, 4, 1}, "upstream unavailable"
	}
	enh := e.Enhanced
	if enh[0] != class {
		// No ENHANCEDSTATUSCODES upstream, or a class that contradicts the reply code:
		// the basic code is authoritative (RFC 3463 §2).
		enh = [3]int{class, 0, 0}
	}
	return e.Code, enh, "upstream: " + e.Msg
}

// fault wraps a connection, TLS or protocol failure.
func fault(err error) *Error { return &Error{Err: err} }

// localFault wraps a failure of this machine's own storage.
func localFault(err error) *Error { return &Error{Err: err, local: true} }

// Sender sends one message to the upstream. When err == nil, results has one entry per
// recipient; DATA was sent only if at least one recipient was accepted, and the message
// counts as delivered for exactly the accepted ones.
type Sender interface {
	Send(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error)
	Close() error
}

// atomicSender is a Sender that can abort a transaction before DATA when any recipient is
// refused, so that a message is delivered to all of its recipients or to none.
type atomicSender interface {
	sendAll(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error)
}

// New returns the Sender for cfg.Upstream.Address: an *Outbox for "file:DIR" (relative to
// the config file's directory), else a *Pool. log may be nil.
func New(cfg *config.Config, log *slog.Logger) (Sender, error) {
	if dir, ok := strings.CutPrefix(cfg.Upstream.Address, "file:"); ok {
		if dir == "" {
			return nil, errors.New(`upstream.address "file:": missing directory`)
		}
		if !filepath.IsAbs(dir) && cfg.Dir != "" {
			dir = filepath.Join(cfg.Dir, dir)
		}
		return NewOutbox(dir)
	}
	return NewPool(cfg, log)
}

// Direct turns a Sender into the front end's submitter for [queue] mode = "direct": the
// reply is 250 only after the upstream accepted; if ANY recipient is rejected, the
// transaction is RSET before DATA (nothing is half-sent) and that recipient's reply is
// returned as the error.
type Direct struct{ Sender Sender }

// Submit sends the message and returns nil only when every recipient was accepted. Errors
// carry an *Error (errors.As) whose SMTPReply is the answer for our client. When several
// recipients are refused, a permanent refusal wins over a temporary one: a retry of the whole
// message could never succeed.
//
// A Sender from outside this package cannot abort before DATA; with one, a refused recipient
// still fails the submission but the others may already have the message.
func (d *Direct) Submit(ctx context.Context, id, from string, to []string, data []byte) error {
	var res []RcptResult
	var err error
	if a, ok := d.Sender.(atomicSender); ok {
		res, err = a.sendAll(ctx, from, to, data)
	} else {
		res, err = d.Sender.Send(ctx, from, to, data)
	}
	if err != nil {
		return fmt.Errorf("direct delivery %s: %w", id, err)
	}
	var refused *RcptResult
	for i := range res {
		r := &res[i]
		if r.Accepted() {
			continue
		}
		if refused == nil || (refused.Code/100 != 5 && r.Code/100 == 5) {
			refused = r
		}
	}
	if refused != nil {
		return fmt.Errorf("direct delivery %s: %w", id, &Error{
			Code: refused.Code, Enhanced: refused.Enhanced,
			Msg: fmt.Sprintf("<%s>: %s", refused.Rcpt, refused.Msg),
		})
	}
	return nil
}
