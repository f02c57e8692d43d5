// Package rewrite owns the header block of a message on its way through the relay: it
// parses the header fields of a received message and produces the outgoing message of
// SPEC §5 (Received prepended, Bcc and X-Relay-Unit removed, Date and Message-ID added when
// missing, the From rewritten when the caller says so), leaving every other header line and
// the body byte-for-byte as received. It performs no I/O and decides nothing: whether and how
// to rewrite comes in as Options built from the policy decision.
package rewrite

import (
	"bytes"
	"fmt"
	"net/mail"
	"strings"
	"unicode/utf8"
)

// Field is one header field exactly as received: Raw holds the name, colon, value, folded
// continuation lines and the final line ending (absent only for a last header line that ends
// the data without one). Raw points into the data given to Parse.
type Field struct {
	Name string
	Raw  []byte
}

// Value returns the field body as received: everything after the colon, folding and final
// line ending included.
func (f Field) Value() []byte {
	return f.Raw[bytes.IndexByte(f.Raw, ':')+1:]
}

// Message is a parsed message: the header fields in order and the body (everything after the
// empty line that ends the header block; the empty line itself is not part of either).
// Fields and Body point into the data given to Parse, which must not change while the
// Message is in use.
type Message struct {
	Fields []Field
	Body   []byte
	// Separator is the empty line that ended the header block, as received: "\r\n", or "\n"
	// in a message with bare-LF line ends. It is nil when the message is all header.
	Separator []byte
}

// ParseError is a header block the relay refuses to forward (SPEC §7: 550 5.6.0 with the
// reason). Err, when set, is the net/mail error behind it.
type ParseError struct {
	Reason string
	Err    error
}

func (e *ParseError) Error() string { return e.Reason }

func (e *ParseError) Unwrap() error { return e.Err }

// SMTPReply answers 550 5.6.0 (media error: the content is unacceptable), with the reason.
func (e *ParseError) SMTPReply() (int, [3]int, string) {
	return 550, [3]int{5, 6, 0}, e.Reason
}

// Parse splits data into header fields and body. It copies nothing: Raw and Body slice data.
//
// The header block ends at the first empty line (RFC 5322 §2.1); a message without one is all
// header. A field starts with a name of printable ASCII other than ':' (§2.2) followed by the
// colon; optional white space between name and colon is accepted as the obsolete syntax of
// §4.5 requires. Lines starting with SP or HTAB continue the field before them (§2.2.3). Any
// other line, a continuation with no field before it, or more than one From field (§3.6
// allows exactly one) is a *ParseError.
func Parse(data []byte) (*Message, error) {
	m := &Message{Fields: make([]Field, 0, 24)}
	froms, start := 0, 0
	for pos, line := 0, 1; pos < len(data); line++ {
		next := len(data)
		if i := bytes.IndexByte(data[pos:], '\n'); i >= 0 {
			next = pos + i + 1
		}
		l := data[pos:next]
		switch {
		case len(l) == 1 && l[0] == '\n', len(l) == 2 && l[0] == '\r' && l[1] == '\n':
			m.Separator = l[:len(l):len(l)]
			m.Body = data[next:len(data):len(data)]
			pos = len(data)
			continue
		case l[0] == ' ' || l[0] == '\t':
			if len(m.Fields) == 0 {
				return nil, &ParseError{Reason: fmt.Sprintf("header line %d is a continuation line without a field before it", line)}
			}
			m.Fields[len(m.Fields)-1].Raw = data[start:next:next]
		default:
			n := nameLen(l)
			if n == 0 {
				return nil, &ParseError{Reason: fmt.Sprintf("malformed header line %d", line)}
			}
			name := internName(l[:n])
			if strings.EqualFold(name, "From") {
				froms++
			}
			start = pos
			m.Fields = append(m.Fields, Field{Name: name, Raw: data[start:next:next]})
		}
		pos = next
	}
	if froms > 1 {
		return nil, &ParseError{Reason: fmt.Sprintf("message has %d From headers", froms)}
	}
	return m, nil
}

// nameLen returns the length of the field name that starts line l, or 0 when l does not
// start a field.
func nameLen(l []byte) int {
	n := 0
	for n < len(l) && l[n] > ' ' && l[n] < 0x7f && l[n] != ':' {
		n++
	}
	i := n
	for i < len(l) && (l[i] == ' ' || l[i] == '\t') { // obs-optional, RFC 5322 §4.5.8
		i++
	}
	if n == 0 || i == len(l) || l[i] != ':' {
		return 0
	}
	return n
}

// commonNames spares Parse an allocation per field for the names nearly every message uses.
// It is read-only.
var commonNames = func() map[string]string {
	m := map[string]string{}
	for _, n := range []string{
		"Received", "Return-Path", "From", "To", "Cc", "Bcc", "Subject", "Date",
		"Message-ID", "Message-Id", "MIME-Version", "Mime-Version", "Content-Type",
		"Content-Transfer-Encoding", "Content-Disposition", "Content-Language", "Reply-To",
		"Sender", "In-Reply-To", "References", "DKIM-Signature", "X-Mailer", "User-Agent",
		"List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "X-Relay-Unit",
		"Authentication-Results", "Auto-Submitted", "Precedence", "X-Priority", "Importance",
		"Thread-Topic", "Thread-Index", "Feedback-ID", "X-Original-From",
	} {
		m[n] = n
	}
	return m
}()

func internName(b []byte) string {
	if s, ok := commonNames[string(b)]; ok { // the lookup does not allocate
		return s
	}
	return string(b)
}

func (m *Message) field(name string) *Field {
	for i := range m.Fields {
		if strings.EqualFold(m.Fields[i].Name, name) {
			return &m.Fields[i]
		}
	}
	return nil
}

// Has reports whether the message has a field with this name (case-insensitive).
func (m *Message) Has(name string) bool { return m.field(name) != nil }

// Get returns the unfolded value of the first field with this name (case-insensitive),
// without the surrounding white space.
func (m *Message) Get(name string) (string, bool) {
	f := m.field(name)
	if f == nil {
		return "", false
	}
	return unfold(f.Value()), true
}

// unfold removes the line breaks of a folded field body (RFC 5322 §2.2.3: the CRLF before
// the continuation's white space goes, the white space stays) and trims it.
func unfold(v []byte) string {
	v = bytes.Trim(v, " \t\r\n")
	if bytes.IndexByte(v, '\n') < 0 {
		return string(v)
	}
	var b strings.Builder
	b.Grow(len(v))
	for len(v) > 0 {
		i := bytes.IndexByte(v, '\n')
		if i < 0 {
			b.Write(v)
			break
		}
		line := v[:i]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		b.Write(line)
		v = v[i+1:]
	}
	return b.String()
}

// From returns the mailbox of the From field; nil, nil when the message has none. A From
// that net/mail cannot parse, or that names no or several mailboxes, is a *ParseError:
// the relay can neither judge nor rewrite such a sender.
func (m *Message) From() (*mail.Address, error) {
	f := m.field("From")
	if f == nil {
		return nil, nil
	}
	a, err := parseMailbox(f.Value())
	if err != nil {
		return nil, err
	}
	return a, nil
}

// parseMailbox parses a From or Sender field body into its single mailbox. Raw 8-bit bytes
// that are not UTF-8 (legacy mailers) are read as Windows-1252, a superset of Latin-1,
// rather than refused: net/mail rejects invalid UTF-8 outright.
func parseMailbox(v []byte) (*mail.Address, *ParseError) {
	s := unfold(v)
	if !utf8.ValidString(s) {
		s = decodeCP1252([]byte(s))
	}
	p := mail.AddressParser{WordDecoder: wordDecoder()}
	list, err := p.ParseList(s)
	switch {
	case err != nil:
		return nil, &ParseError{Reason: "unparsable From header: " + shorten(strings.TrimPrefix(err.Error(), "mail: ")), Err: err}
	case len(list) == 0:
		return nil, &ParseError{Reason: "From header without an address"}
	case len(list) > 1:
		return nil, &ParseError{Reason: "From header with more than one address"}
	}
	return list[0], nil
}

// shorten bounds a net/mail error, which may quote the whole header, so that the SMTP reply
// built from it stays one short line.
func shorten(s string) string {
	const max = 120
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}
