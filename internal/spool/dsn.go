package spool

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

// report is what one delivery status notification says: the failures of one attempt of
// one message.
type report struct {
	Hostname string // Reporting-MTA
	ID       string // our queue id
	Sender   string // the original envelope sender: the DSN's recipient
	Arrival  time.Time
	Date     time.Time // of the attempt
	Failed   []outcome
	Header   []byte // the original message's header section
}

// maxDSNHeader bounds the copy of the original header in a DSN: enough for any real
// header, and a DSN of a message with a giant header does not carry it all back.
const maxDSNHeader = 64 << 10

// dsn builds the DSN for the permanent failures of one attempt of m.
func (s *Spool) dsn(m *message, failed []outcome, data []byte, now time.Time) []byte {
	return buildDSN(report{
		Hostname: s.o.Hostname, ID: m.id, Sender: m.from,
		Arrival: m.received, Date: now, Failed: failed, Header: headerSection(data),
	})
}

// buildDSN renders r as an RFC 3464 delivery status notification: a multipart/report
// (RFC 6522) of a human-readable part, a message/delivery-status part and the original
// header as text/rfc822-headers. Non-ASCII addresses use the RFC 6533 types
// (message/global-delivery-status, "utf-8" address type, message/global-headers).
func buildDSN(r report) []byte {
	intl := !isASCII(r.Sender) || !isASCII(string(r.Header))
	for _, f := range r.Failed {
		intl = intl || !isASCII(f.rcpt) || !isASCII(f.diag)
	}
	date := r.Date.Format(time.RFC1123Z)

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	// A boundary from the message's identity: the same report renders the same bytes (the
	// golden tests rely on it), and it is checked against the one part we do not write.
	boundary := fmt.Sprintf("=_dsn_%s_%d", r.ID, r.Date.Unix())
	for bytes.Contains(r.Header, []byte(boundary)) {
		boundary += "="
	}
	if err := mw.SetBoundary(boundary); err != nil {
		// A long id makes it longer than RFC 2046's 70 octets: use a random one.
		mw = multipart.NewWriter(&body)
		boundary = mw.Boundary()
	}

	// Part 1: for humans (RFC 6522 §3).
	var text strings.Builder
	fmt.Fprintf(&text, "This is the mail system at host %s.\r\n\r\n", r.Hostname)
	text.WriteString("Your message could not be delivered to one or more recipients.\r\n")
	text.WriteString("It is attached below (headers only).\r\n\r\n")
	for _, f := range r.Failed {
		why := f.diag
		if f.status == [3]int{4, 4, 7} {
			why = "delivery time expired; last error: " + why
		}
		fmt.Fprintf(&text, "<%s>: %s\r\n", f.rcpt, why)
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
	field(&ds, "Reporting-MTA", "dns; "+r.Hostname)
	field(&ds, "X-Relay-Queue-ID", r.ID)
	field(&ds, "Arrival-Date", r.Arrival.Format(time.RFC1123Z))
	for _, f := range r.Failed {
		ds.WriteString("\r\n")
		addrType := "rfc822"
		if !isASCII(f.rcpt) {
			addrType = "utf-8" // RFC 6533 §3
		}
		field(&ds, "Final-Recipient", addrType+"; "+f.rcpt)
		field(&ds, "Action", "failed")
		field(&ds, "Status", fmt.Sprintf("%d.%d.%d", f.status[0], f.status[1], f.status[2]))
		if f.reply {
			field(&ds, "Diagnostic-Code", "smtp; "+f.diag)
		} else {
			field(&ds, "Diagnostic-Code", "X-Relay; "+f.diag)
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
	pw.Write(r.Header)
	mw.Close()

	var msg bytes.Buffer
	field(&msg, "From", fmt.Sprintf("Mail Delivery System <MAILER-DAEMON@%s>", r.Hostname))
	field(&msg, "To", "<"+r.Sender+">")
	field(&msg, "Subject", "Undelivered Mail Returned to Sender")
	field(&msg, "Date", date)
	field(&msg, "Message-ID", fmt.Sprintf("<%s.%d.dsn@%s>", r.ID, r.Date.UnixNano(), r.Hostname))
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

// headerSection returns the header of a message with CRLF line ends, up to maxDSNHeader
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
		if out.Len()+len(line)+2 > maxDSNHeader {
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
