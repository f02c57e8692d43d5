package httpd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode"

	"relay/internal/names"
	"relay/internal/pipeline"
	"relay/internal/policy"
	"relay/internal/preview"
	"relay/internal/rewrite"
)

// DNS checks: at most dnsParallel at once (each makes a few dozen queries), each bounded
// by dnsTimeout, and a request waits at most dnsWait for its turn.
const (
	dnsParallel = 2
	dnsTimeout  = 20 * time.Second
	dnsWait     = 2 * time.Second
)

// maxUnit bounds the unit parameter; a longer one names no unit anyone configured.
const maxUnit = 256

// inputError is a request the client can fix: 400 with its text.
type inputError struct{ msg string }

func (e *inputError) Error() string { return e.msg }

func badInput(format string, args ...any) error { return &inputError{fmt.Sprintf(format, args...)} }

// apiPreview is GET /api/preview?from=ADDR&unit=U: the decision for a message from ADDR,
// exactly as `relay send -dry-run -json` prints it (package preview writes both).
func (s *Server) apiPreview(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d, err := s.preview(r.Context(), q.Get("from"), q.Get("unit"), clientIP(r))
	if err != nil {
		code, msg := s.errorStatus(err)
		writeError(w, code, msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	preview.WriteJSON(w, d)
}

// preview runs a sample message from `from` through the server's pipeline as it is now,
// as a dry run: decided, rewritten and signed, neither spooled nor sent.
func (s *Server) preview(ctx context.Context, from, unit, client string) (preview.Decision, error) {
	if err := preview.CheckAddress(from); err != nil {
		return preview.Decision{}, badInput("from: %v", err)
	}
	st := s.o.Pipeline.State()
	if err := checkUnit(st, unit); err != nil {
		return preview.Decision{}, err
	}
	p := pipeline.New(st, nil, s.log)
	res, err := p.Process(ctx, pipeline.Input{
		Envelope: from,
		Data:     preview.SampleMessage(from, nil, time.Now()),
		Unit:     unit,
		Received: rewrite.Received{Helo: "localhost", ClientIP: client, Proto: "HTTP"},
		Client:   client,
	})
	if err != nil {
		return preview.Decision{}, err
	}
	return preview.Of(res), nil
}

func checkUnit(st *pipeline.State, unit string) error {
	switch {
	case unit == "":
		return nil
	case len(unit) > maxUnit:
		return badInput("unit: %d octets; at most %d", len(unit), maxUnit)
	case strings.ContainsFunc(unit, unicode.IsControl):
		return badInput("unit: contains control characters")
	case policy.FindUnit(st.Config, unit) == nil:
		return badInput("unknown business unit %q", unit)
	}
	return nil
}

// errorStatus maps an error of a preview or DNS check to a status and the text the client
// sees: its input (400), a decision that cannot be made now (503: an SPF temperror with
// on_temperror = "defer"), a refused sample (400, as SMTP would refuse it), or a fault
// (500, detail in the log only).
func (s *Server) errorStatus(err error) (int, string) {
	var ie *inputError
	if errors.As(err, &ie) {
		return http.StatusBadRequest, ie.msg
	}
	var uu *policy.UnknownUnitError
	if errors.As(err, &uu) {
		return http.StatusBadRequest, err.Error()
	}
	var rep interface{ SMTPReply() (int, [3]int, string) }
	if errors.As(err, &rep) {
		code, _, msg := rep.SMTPReply()
		if code/100 == 4 {
			return http.StatusServiceUnavailable, msg
		}
		return http.StatusBadRequest, msg
	}
	s.log.Error("http: preview failed", "err", err)
	return http.StatusInternalServerError, "internal error (see the relay's log)"
}

// apiDNS is GET /api/dns?domain=D[&unit=U]: the DNS doctor's JSON for one domain (the
// `relay dns -json` object).
func (s *Server) apiDNS(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	out, err := s.dns(r.Context(), q.Get("domain"), q.Get("unit"))
	if err != nil {
		code, msg := s.dnsErrorStatus(err)
		writeError(w, code, msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(out)
}

var (
	errNoDoctor = errors.New("the DNS doctor is not available here")
	errDNSBusy  = errors.New("busy: other DNS checks are running; try again in a few seconds")
)

func (s *Server) dnsErrorStatus(err error) (int, string) {
	switch {
	case errors.Is(err, errNoDoctor):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, errDNSBusy):
		return http.StatusServiceUnavailable, err.Error()
	}
	var ie *inputError
	if errors.As(err, &ie) {
		return http.StatusBadRequest, ie.msg
	}
	s.log.Error("http: dns check failed", "err", err)
	return http.StatusInternalServerError, "internal error (see the relay's log)"
}

// dns runs the doctor for one domain, at most dnsParallel at a time.
func (s *Server) dns(ctx context.Context, domain, unit string) ([]byte, error) {
	if s.o.DNS == nil {
		return nil, errNoDoctor
	}
	if len(domain) > 253 || strings.ContainsFunc(domain, unicode.IsControl) {
		return nil, badInput("domain: not a domain name")
	}
	d, err := names.Hostname(domain)
	if err != nil {
		return nil, badInput("domain: %v", err)
	}
	st := s.o.Pipeline.State()
	if err := checkUnit(st, unit); err != nil {
		return nil, err
	}
	t := time.NewTimer(dnsWait)
	defer t.Stop()
	select {
	case s.dnsSlots <- struct{}{}:
		defer func() { <-s.dnsSlots }()
	case <-t.C:
		return nil, errDNSBusy
	case <-ctx.Done():
		return nil, errDNSBusy
	}
	ctx, cancel := context.WithTimeout(ctx, dnsTimeout)
	defer cancel()
	var buf bytes.Buffer
	if err := s.o.DNS(ctx, st.Config, d, unit, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeError is the API's error answer: {"error": "..."}.
func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	preview.WriteJSON(w, struct {
		Error string `json:"error"`
	}{msg})
}

func isAPI(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/") }

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
