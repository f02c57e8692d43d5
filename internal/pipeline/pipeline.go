// Package pipeline owns the path of one message through the middle of the relay: parse the
// header, decide the effective sender (policy), rewrite, sign, and hand the result to a
// Submitter (the queue, which stores it in the spool; direct delivery; or nothing in a dry
// run). The SMTP front end, `relay send`, DSNs and any preview all go through Process, so
// there is exactly one way a message is decided and built. It owns no sockets and no files.
package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/mail"
	"sync/atomic"
	"time"

	"relay/internal/config"
	"relay/internal/metrics"
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
	state   atomic.Pointer[State]
	Submit  Submitter // nil: dry run, nothing leaves
	Log     *slog.Logger
	Now     func() time.Time
	Metrics *metrics.Metrics // nil: not measured; times the policy and sign stages
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
	// -unit flag); NetworkAllowed says the client is in allow_networks, which with
	// trust_unit_header lets the X-Relay-Unit header name it (policy decides).
	Unit           string
	NetworkAllowed bool
	Received       rewrite.Received
	Client         string // for the log: client IP
	User           string // for the log: authenticated user
}

// Result is what Process decided and built.
type Result struct {
	ID       string
	Decision policy.Decision
	DKIM     []signer.KeyInfo
	Message  []byte // the outgoing message, signed
}

// FromHeader is the From field of the outgoing message, unfolded, exactly as the message
// carries it (SPEC §2 from_effective). It reads the message, so previews cost the hot path
// nothing.
func (r Result) FromHeader() string { return r.header("From") }

// ReplyTo is the Reply-To field of the outgoing message, "" when it has none.
func (r Result) ReplyTo() string { return r.header("Reply-To") }

func (r Result) header(name string) string {
	m, err := rewrite.Parse(r.Message)
	if err != nil {
		return ""
	}
	v, _ := m.Get(name)
	return v
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
	// SPEC §7: bare CRs and LFs are written as CRLF before anything reads the header or
	// signs the message, so that the relay judges, signs and transmits the same lines a
	// receiver splitting on CR or LF sees, and no end-of-data look-alike leaves unchanged.
	data := CRLF(in.Data)
	if n, limit := HeaderLen(data), int(cfg.SMTP.MaxHeaderBytes); n > limit {
		return res, &HeaderTooLargeError{Size: n, Limit: limit}
	}
	msg, err := rewrite.Parse(data)
	if err != nil {
		return res, err
	}
	orig, err := msg.From()
	if err != nil {
		return res, err
	}
	pin := policy.Input{Unit: in.Unit, NetworkAllowed: in.NetworkAllowed, Envelope: in.Envelope}
	pin.UnitHeader, _ = msg.Get("X-Relay-Unit")
	if orig != nil {
		pin.From = orig.Address
	}
	t := time.Now()
	d, err := policy.Decide(ctx, cfg, st.Auth, pin)
	p.Metrics.Since(metrics.StagePolicy, t)
	if err != nil {
		return res, err
	}
	res.Decision = d

	if d.AddFrom {
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
		DisplayName:     d.DisplayName,
		Unit:            d.Unit,
		ReplyToOriginal: cfg.Sender.ReplyToOriginal,
		OriginalHeader:  cfg.Sender.OriginalHeader,
		SenderAllowed:   d.SenderAllowed,
		Hostname:        cfg.Hostname,
		Received:        in.Received,
		Now:             now,
		MessageID:       res.ID,
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

	// The message is built once, behind room for the signatures, which then go in front of
	// it without another copy of the body.
	buf := rewrite.AppendApply(make([]byte, sigRoom, sigRoom+len(data)+1024), msg, opts)
	out := buf[sigRoom:]
	t = time.Now()
	sig, err := st.Signer.Sign(ctx, d.DKIMDomain, out)
	p.Metrics.Since(metrics.StageSign, t)
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
		// SPEC §10: a dry run logs the decision as the spool would have.
		p.logMessage("message previewed (dry run: not spooled, not sent)", in, res, start)
		return res, nil
	}
	if err := p.Submit.Submit(ctx, res.ID, d.Envelope, in.To, res.Message); err != nil {
		p.Log.Warn("message not accepted", "id", res.ID, "client", in.Client, "err", err)
		return res, err
	}
	p.logMessage("message accepted", in, res, start)
	return res, nil
}

// logMessage writes the one line per message of SPEC §10. Addresses come from the client,
// so each is quoted at most maxLogValue octets long (SPEC §7).
func (p *Pipeline) logMessage(msg string, in Input, res Result, start time.Time) {
	d := res.Decision
	to := make([]string, 0, min(len(in.To), 11))
	for i, a := range in.To {
		if i == 10 {
			to = append(to, fmt.Sprintf("(%d more)", len(in.To)-10))
			break
		}
		to = append(to, clip(a))
	}
	p.Log.Info(msg,
		"id", res.ID, "client", in.Client, "user", in.User, "unit", d.Unit,
		"from", clip(d.FromOriginal), "effective", d.From, "envelope", clip(d.Envelope),
		"reason", string(d.Reason), "detail", clip(d.Detail), "dkim", d.DKIMDomain,
		"rcpts", len(in.To), "to", to, "size", len(res.Message),
		"duration", time.Since(start).Round(time.Microsecond))
}

// maxLogValue bounds a client-supplied value in a log line.
const maxLogValue = 256

func clip(s string) string {
	if len(s) <= maxLogValue {
		return s
	}
	return s[:maxLogValue] + "..."
}

// CRLF writes every bare LF and every bare CR (one not part of a CRLF) as CRLF: messages
// read from files (`relay send -message`) have LF line ends, and SMTP clients send both in
// DATA. "a\r\r\n" becomes "a\r\n\r\n", never "a\r\r\r\n". b is returned as it is when
// it has no bare line ends (the common case, found with three vectorised counts).
func CRLF(b []byte) []byte {
	pairs := bytes.Count(b, crlf)
	lfs, crs := bytes.Count(b, crlf[1:]), bytes.Count(b, crlf[:1])
	if lfs == pairs && crs == pairs {
		return b
	}
	out := make([]byte, 0, len(b)+(lfs-pairs)+(crs-pairs))
	for len(b) > 0 {
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			out = append(out, b...)
			break
		}
		out = append(append(out, b[:i]...), '\r', '\n')
		if b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n' {
			i++
		}
		b = b[i+1:]
	}
	return out
}

var crlf = []byte("\r\n")

// HeaderLen is the size of the header block of a CRLF message: everything up to and
// including the empty line that ends it, or the whole message when it has none.
func HeaderLen(b []byte) int {
	if bytes.HasPrefix(b, crlf) {
		return len(crlf)
	}
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		return i + 4
	}
	return len(b)
}

// HeaderTooLargeError is a header block over [smtp] max_header_bytes (SPEC §7).
type HeaderTooLargeError struct{ Size, Limit int }

func (e *HeaderTooLargeError) Error() string {
	return fmt.Sprintf("header block of %d octets over max_header_bytes (%d)", e.Size, e.Limit)
}

func (e *HeaderTooLargeError) SMTPReply() (int, [3]int, string) {
	return 552, [3]int{5, 3, 4}, fmt.Sprintf("Message header too large (limit %d octets)", e.Limit)
}
