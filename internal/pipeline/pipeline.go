// Package pipeline owns the path of one message through the middle of the relay: parse the
// header, decide the effective sender (policy), rewrite, sign, and hand the result to a
// Submitter (the spool, direct delivery, or nothing in dry-run). The SMTP front end, `relay
// send` and any preview all go through Process, so there is exactly one way a message is
// decided and built. It owns no sockets and no files.
package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/mail"
	"strings"
	"sync/atomic"
	"time"

	"relay/internal/config"
	"relay/internal/policy"
	"relay/internal/queueid"
	"relay/internal/rewrite"
	"relay/internal/signer"
)

// sigRoom is the space kept in front of a message for its DKIM-Signature fields: an RSA-2048
// and an Ed25519 signature together take about 1 KB; a larger set is copied once.
const sigRoom = 2048

// Submitter takes a finished message on its way out. It returns only once the message is
// safe (durable in the spool, or accepted upstream in direct mode).
type Submitter interface {
	Submit(ctx context.Context, id, from string, to []string, data []byte) error
}

// State is the part of the pipeline that a configuration reload replaces as one value, so
// a message never sees the policy of one config and the keys of another.
type State struct {
	Config *config.Config
	Auth   policy.Authorizer // nil when SPF and delegation checks are off
	Signer *signer.Signer
}

// Pipeline processes messages. Its fields are set once by the caller; Swap replaces State.
type Pipeline struct {
	state  atomic.Pointer[State]
	Submit Submitter // nil: dry run, nothing leaves
	Log    *slog.Logger
	Now    func() time.Time
}

// New returns a pipeline over st submitting to sub (nil for a dry run).
func New(st *State, sub Submitter, log *slog.Logger) *Pipeline {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pipeline{Submit: sub, Log: log, Now: time.Now}
	p.state.Store(st)
	return p
}

// Swap installs a new configuration, authorizer and signer for the messages that follow.
func (p *Pipeline) Swap(st *State) { p.state.Store(st) }

// State is the configuration messages are processed with now.
func (p *Pipeline) State() *State { return p.state.Load() }

// Input is one message as a client handed it over.
type Input struct {
	ID       string // queue id; made here when empty
	Envelope string // MAIL FROM, "" for <>
	To       []string
	Data     []byte // CRLF line ends
	// Unit is the business unit the sender is entitled to (an AUTH user's unit, or the
	// -unit flag); UnitHeader allows the X-Relay-Unit header to name it when Unit is "".
	Unit       string
	UnitHeader bool
	Received   rewrite.Received
	Client     string // for the log: client IP
	User       string // for the log: authenticated user
}

// Result is what Process decided and built.
type Result struct {
	ID         string
	Decision   policy.Decision
	FromHeader string // the effective From header value
	ReplyTo    string // the Reply-To the message leaves with, "" when none
	DKIM       []signer.KeyInfo
	Message    []byte // the outgoing message, signed
}

// Process decides, rewrites and signs in's message, then submits it unless this is a dry
// run. Errors that the client can act on implement SMTPReply (unknown unit, bad header,
// deferred authorization); any other error is an internal fault.
func (p *Pipeline) Process(ctx context.Context, in Input) (Result, error) {
	start := time.Now()
	st := p.state.Load()
	cfg := st.Config
	res := Result{ID: in.ID}
	if res.ID == "" {
		res.ID = queueid.New(time.Now())
	}
	// Bare LFs would reach the upstream as CRLF anyway (SMTP clients write lines), so sign
	// what will be transmitted.
	data := CRLF(in.Data)
	msg, err := rewrite.Parse(data)
	if err != nil {
		return res, err
	}
	orig, err := msg.From()
	if err != nil {
		return res, err
	}
	unit := in.Unit
	if unit == "" && in.UnitHeader {
		if v, ok := msg.Get("X-Relay-Unit"); ok {
			unit = strings.TrimSpace(v)
		}
	}
	pin := policy.Input{Unit: unit, Envelope: in.Envelope}
	if orig != nil {
		pin.From = orig.Address
	}
	d, err := policy.Decide(ctx, cfg, st.Auth, pin)
	if err != nil {
		return res, err
	}
	res.Decision = d

	u := policy.FindUnit(cfg, d.Unit)
	tmpl := cfg.Sender.DisplayName
	if u != nil && u.DisplayName != "" {
		tmpl = u.DisplayName
	}
	if orig == nil && !d.Rewritten && d.From != "" {
		// No From header, and the envelope sender may be used as it is: the message leaves
		// with it as From (RFC 5322 §3.6 requires one, and DKIM signs it).
		data = append([]byte("From: <"+d.From+">\r\n"), data...)
		if msg, err = rewrite.Parse(data); err != nil {
			return res, err
		}
	} else if orig == nil && d.FromOriginal != "" {
		// No From header: the envelope was the candidate, and stands in for it in the new
		// From's display name, Reply-To and original_header alike.
		orig = &mail.Address{Address: d.FromOriginal}
	}
	now := p.Now()
	opts := rewrite.Options{
		Rewrite:         d.Rewritten,
		NewFrom:         d.From,
		Original:        orig,
		DisplayName:     tmpl,
		Unit:            d.Unit,
		ReplyToOriginal: cfg.Sender.ReplyToOriginal,
		OriginalHeader:  cfg.Sender.OriginalHeader,
		SenderAllowed: func(addr string) bool {
			dom := policy.Domain(addr)
			return policy.Match(cfg.Sender.Domains, dom) || (u != nil && policy.Match(u.Domains, dom))
		},
		Hostname:  cfg.Hostname,
		Received:  in.Received,
		Now:       now,
		MessageID: res.ID,
	}
	if opts.Received.ID == "" {
		opts.Received.ID = res.ID
	}
	if opts.Received.Time.IsZero() {
		opts.Received.Time = now
	}
	if opts.Received.For == "" && len(in.To) == 1 {
		opts.Received.For = in.To[0]
	}
	if d.Rewritten {
		name, addr := "", ""
		if orig != nil {
			name, addr = orig.Name, orig.Address
		}
		res.FromHeader = rewrite.FromValue(tmpl, name, addr, d.Unit, d.From)
	} else if orig != nil && orig.Name != "" {
		res.FromHeader = orig.String()
	} else {
		res.FromHeader = d.From
	}
	if v, ok := msg.Get("Reply-To"); ok {
		res.ReplyTo = strings.TrimSpace(v)
	} else if d.Rewritten && cfg.Sender.ReplyToOriginal && orig != nil {
		res.ReplyTo = orig.Address
		if orig.Name != "" {
			res.ReplyTo = orig.String()
		}
	}

	// The message is built once, behind room for the signatures, which then go in front of
	// it without another copy of the body.
	buf := rewrite.AppendApply(make([]byte, sigRoom, sigRoom+len(data)+1024), msg, opts)
	out := buf[sigRoom:]
	sig, err := st.Signer.Sign(d.DKIMDomain, out)
	if err != nil {
		return res, fmt.Errorf("message %s: %w", res.ID, err)
	}
	res.DKIM = st.Signer.Keys(d.DKIMDomain)
	if len(sig) <= sigRoom {
		res.Message = buf[sigRoom-len(sig):]
		copy(res.Message, sig)
	} else {
		res.Message = append(append(make([]byte, 0, len(sig)+len(out)), sig...), out...)
	}

	if p.Submit == nil {
		return res, nil
	}
	if err := p.Submit.Submit(ctx, res.ID, d.Envelope, in.To, res.Message); err != nil {
		p.Log.Warn("message not accepted", "id", res.ID, "client", in.Client, "err", err)
		return res, err
	}
	p.Log.Info("message accepted",
		"id", res.ID, "client", in.Client, "user", in.User, "unit", d.Unit,
		"from", d.FromOriginal, "effective", d.From, "envelope", d.Envelope,
		"reason", string(d.Reason), "detail", d.Detail, "dkim", d.DKIMDomain,
		"rcpts", len(in.To), "to", in.To, "size", len(res.Message),
		"duration", time.Since(start).Round(time.Microsecond))
	return res, nil
}

// CRLF converts bare LF line ends to CRLF: messages read from files (`relay send
// -message`) have them, and SMTP clients send them in DATA.
func CRLF(b []byte) []byte {
	if !bytes.Contains(b, []byte("\n")) {
		return b
	}
	n := bytes.Count(b, []byte("\n")) - bytes.Count(b, []byte("\r\n"))
	if n == 0 {
		return b
	}
	out := make([]byte, 0, len(b)+n)
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}
