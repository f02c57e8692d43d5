// Package preview owns what a dry run shows of a message: the decision as the JSON of
// `relay send -dry-run -json` (SPEC §2), which the HTTP API serves too, and the minimal
// message a preview of a bare address runs through the pipeline. One definition, so the
// command line and the HTTP side cannot drift apart. It never decides anything itself:
// the facts come from pipeline.Process.
package preview

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"time"
	"unicode"

	"relay/internal/pipeline"
)

// Decision is the dry-run decision as JSON (SPEC §2): the facts of one pipeline.Result,
// at the top level of one object. FromEffective and ReplyTo are the header values exactly
// as the outgoing message carries them.
type Decision struct {
	FromOriginal  string `json:"from_original"`
	FromEffective string `json:"from_effective"`
	Envelope      string `json:"envelope_from"`
	ReplyTo       string `json:"reply_to"`
	Rewritten     bool   `json:"rewritten"`
	Reason        string `json:"reason"`
	Detail        string `json:"detail"`
	Unit          string `json:"unit"`
	DKIMDomain    string `json:"dkim_domain"`
	// DKIMSelector lists the selectors of every signature, comma-separated.
	DKIMSelector string `json:"dkim_selector"`
}

// Of is the Decision of a processed message.
func Of(res pipeline.Result) Decision {
	d := res.Decision
	sels := make([]string, 0, len(res.DKIM))
	for _, k := range res.DKIM {
		sels = append(sels, k.Selector)
	}
	return Decision{
		FromOriginal: d.FromOriginal, FromEffective: res.FromHeader(), Envelope: d.Envelope,
		ReplyTo: res.ReplyTo(), Rewritten: d.Rewritten, Reason: string(d.Reason), Detail: d.Detail,
		Unit: d.Unit, DKIMDomain: d.DKIMDomain, DKIMSelector: strings.Join(sels, ","),
	}
}

// WriteJSON writes v (a Decision, or the API's error object) as `relay send -dry-run
// -json` prints it: indented by two spaces, HTML characters as they are, one newline.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// MaxAddress is the longest address a preview takes: RFC 5321 §4.5.3.1.3's 256-octet
// path, less the angle brackets, as the SMTP side limits MAIL FROM.
const MaxAddress = 254

// CheckAddress accepts a bare address (local@domain, no display name, no angle brackets)
// that can stand in a message's From and in MAIL FROM: no control characters (the sample
// message is built from it, so a CR or LF would inject a header), at most MaxAddress octets.
func CheckAddress(a string) error {
	switch {
	case a == "":
		return errors.New("no address")
	case len(a) > MaxAddress:
		return fmt.Errorf("address of %d octets; at most %d", len(a), MaxAddress)
	case strings.ContainsFunc(a, unicode.IsControl):
		return errors.New("the address contains control characters")
	case strings.ContainsAny(a, "<> "):
		return fmt.Errorf("%q is not a bare email address (no name, spaces or <>)", a)
	}
	if p, err := mail.ParseAddress(a); err != nil || p.Address != a {
		return fmt.Errorf("%q is not an email address", a)
	}
	return nil
}

// SampleMessage is the minimal message previewed (or sent by `relay send -from`) for an
// address without a message of its own. from must have passed CheckAddress.
func SampleMessage(from string, to []string, now time.Time) []byte {
	rcpt := "undisclosed-recipients:;"
	if len(to) > 0 {
		rcpt = strings.Join(to, ", ")
	}
	return []byte("From: " + from + "\r\n" +
		"To: " + rcpt + "\r\n" +
		"Subject: Test message from relay send\r\n" +
		"Date: " + now.Format(time.RFC1123Z) + "\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"\r\n" +
		"This is a test message sent with `relay send`.\r\n")
}
