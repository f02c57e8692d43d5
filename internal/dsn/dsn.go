// Package dsn owns delivery status notifications (RFC 3464): the report of the recipients
// of a message that failed for good, built from the original message, their status and
// diagnostic and the reporting MTA; and the step that sends it back to the envelope sender
// through the relay's own pipeline (Sender). It never decides that a recipient failed
// (internal/queue does), and never talks SMTP or writes a file: the pipeline rewrites, signs
// and spools the report like any other message.
package dsn

import (
	"bytes"
	"fmt"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"strings"
	"time"
	"unicode/utf8"
)

// Report is what one delivery status notification says: the permanent failures of one
// delivery attempt of one message.
type Report struct {
	ID      string // the original's queue id
	Sender  string // the original envelope sender: the report's recipient
	Arrival time.Time
	Date    time.Time // of the attempt
	Failed  []Recipient
	// Message is the original message; its header section is quoted, up to maxHeader
	// octets. Nil when it could not be read.
	Message []byte
}

// Recipient is one failed recipient.
type Recipient struct {
	Addr   string
	Status [3]int // RFC 3463; 4.4.7 when the message expired (SPEC §8 max_age)
	Diag   string // the upstream's reply ("550 5.1.1 no such user") or our own reason, one line
	Reply  bool   // Diag is an SMTP reply: Diagnostic-Code type "smtp", else "X-Relay"
}

// maxHeader bounds the copy of the original header in a DSN: enough for any real header,
// and a DSN of a message with a giant header does not carry it all back.
const maxHeader = 64 << 10

// Build renders r as an RFC 3464 delivery status notification from reportingMTA, the
// relay's host name: a multipart/report (RFC 6522) of a human-readable part, a
// message/delivery-status part and the original header as text/rfc822-headers. Non-ASCII
// addresses use the RFC 6533 types (message/global-delivery-status, "utf-8" address type,
// message/global-headers). The same report renders the same bytes.
func Build(r Report, reportingMTA string) []byte {
	header := headerSection(r.Message)
	intl := !isASCII(r.Sender) || !isASCII(string(header))
	for _, f := range r.Failed {
		intl = intl || !isASCII(f.Addr) || !isASCII(f.Diag)
	}
	date := r.Date.Format(time.RFC1123Z)

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	// A boundary from the message's identity: the same report renders the same bytes (the
	// golden tests rely on it), and it is checked against the one part we do not write.
	boundary := fmt.Sprintf("=_dsn_%s_%d", r.ID, r.Date.Unix())
	for bytes.Contains(header, []byte(boundary)) {
		boundary += "="
	}
	if err := mw.SetBoundary(boundary); err != nil {
		// A long id makes it longer than RFC 2046's 70 octets: use a random one.
		mw = multipart.NewWriter(&body)
		boundary = mw.Boundary()
	}

	// Part 1: for humans (RFC 6522 §3).
	var text strings.Builder
	fmt.Fprintf(&text, "This is the mail system at host %s.\r\n\r\n", reportingMTA)
	text.WriteString("Your message could not be delivered to one or more recipients.\r\n")
	text.WriteString("It is attached below (headers only).\r\n\r\n")
	for _, f := range r.Failed {
		why := f.Diag
		if f.Status == [3]int{4, 4, 7} {
			why = "delivery time expired; last error: " + why
		}
		fmt.Fprintf(&text, "<%s>: %s\r\n", f.Addr, why)
	}
	h := textproto.MIMEHeader{}
	if intl {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Transfer-Encoding", "quoted-printable")
	} else {
		h.Set("Content-Type", "text/plain; charset=us-ascii")
	}
	h.Set("Content-Description", "Notification")
	pw, _ := mw.CreatePart(h)
	if intl {
		qw := quotedprintable.NewWriter(pw)
		qw.Write([]byte(text.String()))
		qw.Close()
	} else {
		pw.Write([]byte(text.String()))
	}

	// Part 2: the machine-readable status (RFC 3464 §2.2, §2.3).
	var ds strings.Builder
	field(&ds, "Reporting-MTA", "dns; "+reportingMTA)
	field(&ds, "X-Relay-Queue-ID", r.ID)
	field(&ds, "Arrival-Date", r.Arrival.Format(time.RFC1123Z))
	for _, f := range r.Failed {
		ds.WriteString("\r\n")
		addrType := "rfc822"
		if !isASCII(f.Addr) {
			addrType = "utf-8" // RFC 6533 §3
		}
		field(&ds, "Final-Recipient", addrType+"; "+f.Addr)
		field(&ds, "Action", "failed")
		field(&ds, "Status", fmt.Sprintf("%d.%d.%d", f.Status[0], f.Status[1], f.Status[2]))
		if f.Reply {
			field(&ds, "Diagnostic-Code", "smtp; "+f.Diag)
		} else {
			field(&ds, "Diagnostic-Code", "X-Relay; "+f.Diag)
		}
		field(&ds, "Last-Attempt-Date", date)
	}
	h = textproto.MIMEHeader{}
	if intl {
		h.Set("Content-Type", "message/global-delivery-status")
	} else {
		h.Set("Content-Type", "message/delivery-status")
	}
	h.Set("Content-Description", "Delivery report")
	pw, _ = mw.CreatePart(h)
	pw.Write([]byte(ds.String()))

	// Part 3: the original header (RFC 3462 text/rfc822-headers).
	h = textproto.MIMEHeader{}
	if intl {
		h.Set("Content-Type", "message/global-headers")
	} else {
		h.Set("Content-Type", "text/rfc822-headers")
	}
	h.Set("Content-Description", "Undelivered message headers")
	pw, _ = mw.CreatePart(h)
	pw.Write(header)
	mw.Close()

	var msg bytes.Buffer
	field(&msg, "From", fmt.Sprintf("Mail Delivery System <MAILER-DAEMON@%s>", reportingMTA))
	field(&msg, "To", "<"+r.Sender+">")
	field(&msg, "Subject", "Undelivered Mail Returned to Sender")
	field(&msg, "Date", date)
	field(&msg, "Message-ID", fmt.Sprintf("<%s.%d.dsn@%s>", r.ID, r.Date.UnixNano(), reportingMTA))
	field(&msg, "Auto-Submitted", "auto-replied") // RFC 3834 §5
	field(&msg, "MIME-Version", "1.0")
	field(&msg, "Content-Type", fmt.Sprintf("multipart/report; report-type=delivery-status; boundary=%q", boundary))
	msg.WriteString("\r\n")
	msg.Write(body.Bytes())
	return msg.Bytes()
}

// field writes one header field, folded at spaces to keep lines near 78 octets
// (RFC 5322 §2.1.1); a value without spaces stays whole (it is at most ~900 octets,
// within the 998 limit).
func field(w interface{ WriteString(string) (int, error) }, name, value string) {
	line := name + ":"
	n := len(line)
	w.WriteString(line)
	for i, word := range strings.Split(value, " ") {
		if i > 0 && n+1+len(word) > 78 {
			w.WriteString("\r\n\t")
			n = 1
		} else {
			w.WriteString(" ")
			n++
		}
		w.WriteString(word)
		n += len(word)
	}
	w.WriteString("\r\n")
}

// headerSection returns the header of a message with CRLF line ends, up to maxHeader
// octets of whole lines.
func headerSection(data []byte) []byte {
	var out bytes.Buffer
	for len(data) > 0 {
		line := data
		rest := []byte(nil)
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, rest = data[:i], data[i+1:]
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if out.Len()+len(line)+2 > maxHeader {
			break
		}
		out.Write(line)
		out.WriteString("\r\n")
		data = rest
	}
	return out.Bytes()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
