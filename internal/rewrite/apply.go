package rewrite

import (
	"bytes"
	"mime"
	"net/mail"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"relay/internal/names"
)

// Received is the trace information of the Received field the relay prepends
// (RFC 5321 §4.4).
type Received struct {
	Helo     string    // the client's EHLO/HELO argument
	ClientIP string    // the client's IP address; "" omits the TCP-info
	Proto    string    // ESMTP, ESMTPS, ESMTPA or ESMTPSA (RFC 3848)
	ID       string    // the relay's id for the message, e.g. the spool id
	For      string    // the recipient; set only when there is exactly one (RFC 5321 §7.2)
	Time     time.Time // when the message was received; zero means Options.Now
}

// Options is what the caller decided for one message.
type Options struct {
	Rewrite         bool          // replace the From
	NewFrom         string        // the effective From address (used when Rewrite)
	Original        *mail.Address // the original From (nil when the message had none)
	DisplayName     string        // template: {name} {address} {unit}
	Unit            string
	ReplyToOriginal bool
	OriginalHeader  string // e.g. "X-Original-From"; "" (or an invalid field name) omits it
	// SenderAllowed is asked, on rewrite, about the address of every Sender field; a Sender
	// it does not allow, or cannot be asked about (nil, unparsable Sender), is removed.
	SenderAllowed func(addr string) bool
	Hostname      string // for Received "by" and Message-ID's right side; "" is "localhost"
	Received      Received
	Now           time.Time // for an added Date (Apply reads no clock: set it)
	// MessageID is the id-left part of an added Message-ID; the caller supplies the
	// randomness. When empty, Received.ID is used; when both are empty none is added.
	MessageID string
}

// maxLine is the line length RFC 5322 §2.1.1 asks for (SHOULD, excluding the CRLF); the
// hard limit of 998 is kept by never writing a word longer than an encoded-word.
const maxLine = 78

// maxWord is the longest ASCII word written as it is in a display name. A longer word could
// not be folded, so such a name is written as encoded-words, which RFC 2047 §2 limits to 75
// characters and which can be folded between each other.
const maxWord = 75

// Apply returns the outgoing message for m (SPEC §5). Always: a Received field is prepended,
// Bcc and X-Relay-Unit fields are dropped, Date and Message-ID are added at the end of the
// header block when missing. With o.Rewrite: the From field is replaced in place (or added
// first when there was none), followed by Reply-To and the original-From record when asked
// for; Sender fields whose address is not allowed are dropped, and so are fields the client
// wrote under the name of the original-From record, which would pass for the relay's. Every
// other field, the empty line and the body are copied byte for byte; the fields Apply writes
// end in CRLF.
func Apply(m *Message, o Options) []byte { return AppendApply(nil, m, o) }

// AppendApply appends the outgoing message of Apply to dst and returns the extended slice,
// growing dst at most once. It lets a caller keep room in front of the message for the
// DKIM-Signature fields, which are made from the message and go before it: pass dst with
// that many bytes of headroom, sign out[len(dst):], and copy the signature in just before
// it, instead of copying the whole message behind the signature. dst must not share memory
// with the data m was parsed from.
func AppendApply(dst []byte, m *Message, o Options) []byte {
	host := keep(o.Hostname, isDomainRune)
	if host == "" {
		host = "localhost"
	}

	// add collects every field the relay writes, so that out can be allocated once:
	// add[:top] is the Received, add[top:fromEnd] the From block, add[fromEnd:] the tail.
	add := make([]byte, 0, 512)
	add = appendReceived(add, o.Received, host, o.Now)
	top := len(add)
	from := -1
	for i := range m.Fields {
		if strings.EqualFold(m.Fields[i].Name, "From") {
			from = i
			break
		}
	}
	if o.Rewrite {
		var name, addr string
		if o.Original != nil {
			name, addr = o.Original.Name, o.Original.Address
		}
		np, ap := fromParts(o.DisplayName, name, addr, o.Unit, o.NewFrom)
		add = appendAddressField(add, "From", np, ap)
		if o.ReplyToOriginal && o.Original != nil && !m.Has("Reply-To") {
			name := o.Original.Name
			if !hasText(name) {
				name = ""
			}
			np, ap := formatAddress(name, o.Original.Address)
			add = appendAddressField(add, "Reply-To", np, ap)
		}
		if from >= 0 && names.FieldName(o.OriginalHeader) {
			add = appendOriginal(add, o.OriginalHeader, m.Fields[from].Value())
		}
	}
	fromEnd := len(add)
	if !m.Has("Date") {
		add = append(add, "Date: "...)
		add = o.Now.AppendFormat(add, time.RFC1123Z) // RFC 5322 §3.3 date-time
		add = append(add, "\r\n"...)
	}
	if !m.Has("Message-ID") {
		id := keep(o.MessageID, isAtextRune)
		if id == "" {
			id = keep(o.Received.ID, isAtextRune)
		}
		if id != "" { // RFC 5322 §3.6.4 msg-id
			add = append(add, "Message-ID: <"...)
			add = append(add, id...)
			add = append(add, '@')
			add = append(add, host...)
			add = append(add, ">\r\n"...)
		}
	}
	tail := add[fromEnd:]
	// The relay owns the original-From record's name on rewrite: a client's field of that
	// name, kept next to ours, would name whatever sender the client liked.
	dropOriginal := o.Rewrite && names.FieldName(o.OriginalHeader)

	// First pass: which fields stay out (their indexes, ascending, in dropped) and the exact
	// size of the output, so that dst grows at most once and only when it must.
	var db [8]int
	dropped := db[:0]
	size := len(add) + len(m.Separator) + len(m.Body)
	for i, f := range m.Fields {
		switch {
		case o.Rewrite && i == from: // replaced by the From block, counted in add
		case strings.EqualFold(f.Name, "Bcc"), strings.EqualFold(f.Name, "X-Relay-Unit"),
			// A second From: Parse refuses those, a hand-built Message may not.
			o.Rewrite && strings.EqualFold(f.Name, "From"),
			o.Rewrite && strings.EqualFold(f.Name, "Sender") && !senderAllowed(f, o.SenderAllowed),
			dropOriginal && strings.EqualFold(f.Name, o.OriginalHeader):
			dropped = append(dropped, i)
		default:
			size += len(f.Raw)
			if len(tail) > 0 && f.Raw[len(f.Raw)-1] != '\n' {
				size += 2
			}
		}
	}

	out := dst
	if cap(dst)-len(dst) < size {
		// Not slices.Grow: under -race it allocates twice, and once is the promise.
		out = make([]byte, len(dst), len(dst)+size)
		copy(out, dst)
	}
	out = append(out, add[:top]...)
	if o.Rewrite && from < 0 {
		out = append(out, add[top:fromEnd]...)
	}
	for i, f := range m.Fields {
		switch {
		case o.Rewrite && i == from:
			out = append(out, add[top:fromEnd]...)
		case len(dropped) > 0 && dropped[0] == i:
			dropped = dropped[1:]
		default:
			out = append(out, f.Raw...)
			if len(tail) > 0 && f.Raw[len(f.Raw)-1] != '\n' {
				// The last line of data that is all header may lack its line end; what
				// follows must not run into it.
				out = append(out, "\r\n"...)
			}
		}
	}
	out = append(out, tail...)
	out = append(out, m.Separator...)
	out = append(out, m.Body...)
	return out
}

func senderAllowed(f Field, allowed func(string) bool) bool {
	if allowed == nil {
		return false
	}
	a, err := parseMailbox(f.Value())
	return err == nil && allowed(a.Address)
}

// appendReceived writes the time-stamp line of RFC 5321 §4.4, folded like the common MTAs
// do: "from" clause, "by ... with ... id ..." clause, "for" clause, then "; date".
func appendReceived(b []byte, r Received, host string, now time.Time) []byte {
	helo := keep(r.Helo, isDomainRune)
	if helo == "" {
		helo = "unknown"
	}
	b = append(b, "Received: from "...)
	b = append(b, helo...)
	if ip, err := netip.ParseAddr(r.ClientIP); err == nil {
		ip = ip.Unmap().WithZone("")
		b = append(b, " (["...)
		if ip.Is6() {
			b = append(b, "IPv6:"...) // RFC 5321 §4.1.3 address literal
		}
		b = ip.AppendTo(b)
		b = append(b, "])"...)
	}
	b = append(b, "\r\n\tby "...)
	b = append(b, host...)
	if p := keep(r.Proto, isAlnumRune); p != "" {
		b = append(b, " with "...)
		b = append(b, p...)
	}
	if id := keep(r.ID, isAtextRune); id != "" {
		b = append(b, " id "...)
		b = append(b, id...)
	}
	if rcpt := keep(r.For, isPathRune); rcpt != "" {
		b = append(b, "\r\n\tfor <"...)
		b = append(b, rcpt...)
		b = append(b, '>')
	}
	t := r.Time
	if t.IsZero() {
		t = now
	}
	if col := len(b) - bytes.LastIndexByte(b, '\n'); col+2+len(time.RFC1123Z) > maxLine {
		b = append(b, ";\r\n\t"...)
	} else {
		b = append(b, "; "...)
	}
	b = t.AppendFormat(b, time.RFC1123Z)
	return append(b, "\r\n"...)
}

// appendOriginal writes the original From field body under another name, folded as it was
// received. Only the CR and LF of its line ends survive, as CRLF: a stray CR would otherwise
// become part of a field the relay wrote.
func appendOriginal(b []byte, name string, v []byte) []byte {
	b = append(b, name...)
	b = append(b, ':')
	for {
		i := bytes.IndexByte(v, '\n')
		line := v
		if i >= 0 {
			line = v[:i]
		}
		for _, c := range line {
			if c != '\r' {
				b = append(b, c)
			}
		}
		b = append(b, "\r\n"...)
		if i < 0 || i == len(v)-1 {
			return b
		}
		v = v[i+1:]
	}
}

// fromParts returns the two parts of the rewritten From field: the display-name template
// expanded ({name} is the original display name, or the original address when there is
// none or it shows nothing; {address}; {unit}), cleaned (control characters removed, every
// '@' written " at " so that no address appears in it, white space collapsed), encoded as
// RFC 2047 encoded-words when not ASCII or quoted when it is; and newAddr in angle
// brackets: `"Alice via Sales"`, `<sales@example.com>`. An empty display name leaves just
// the address, and so does an original with neither name nor address (a message without
// From and with the null envelope sender): the template would only say "via Example" of
// nobody.
func fromParts(template, name, address, unit, newAddr string) (namePart, addrPart string) {
	if !hasText(name) {
		if !hasText(address) {
			return formatAddress("", newAddr)
		}
		name = address
	}
	return formatAddress(cleanDisplayName(expand(template, name, address, unit)), newAddr)
}

// expand substitutes the placeholders in one pass, so that a name containing "{unit}"
// stays as it is.
func expand(template, name, address, unit string) string {
	if strings.IndexByte(template, '{') < 0 {
		return template
	}
	var b strings.Builder
	b.Grow(len(template) + len(name) + len(address) + len(unit))
	for {
		i := strings.IndexByte(template, '{')
		if i < 0 {
			b.WriteString(template)
			return b.String()
		}
		b.WriteString(template[:i])
		t := template[i:]
		switch {
		case strings.HasPrefix(t, "{name}"):
			b.WriteString(name)
			template = t[len("{name}"):]
		case strings.HasPrefix(t, "{address}"):
			b.WriteString(address)
			template = t[len("{address}"):]
		case strings.HasPrefix(t, "{unit}"):
			b.WriteString(unit)
			template = t[len("{unit}"):]
		default:
			b.WriteByte('{')
			template = t[1:]
		}
	}
}

// cleanDisplayName applies SPEC §5 to an expanded display name: CR, LF and the other
// control characters go (a tab counts as white space), so do the Unicode bidi controls
// that can make a name read backwards; '@' and its full-width and small look-alikes become
// " at " (receivers treat a foreign address in the display name as spoofing); runs of white
// space become one space, none at either end; invalid UTF-8 becomes U+FFFD.
func cleanDisplayName(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 8)
	space := false // a space is due before the next visible character
	for _, r := range s {
		switch {
		case r == '@' || r == '＠' || r == '﹫':
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString("at")
			space = true
		case r == '\t':
			space = b.Len() > 0
		case unicode.IsControl(r) || isBidiControl(r):
		case unicode.IsSpace(r):
			space = b.Len() > 0
		default:
			if space {
				b.WriteByte(' ')
				space = false
			}
			b.WriteRune(r)
		}
	}
	return b.String()
}

// hasText reports whether a display name shows anything: one made only of white space,
// controls and U+FFFD (what an undecodable charset leaves) counts as no name.
func hasText(s string) bool {
	for _, r := range s {
		if !unicode.IsSpace(r) && !unicode.IsControl(r) && !isBidiControl(r) && r != utf8.RuneError {
			return true
		}
	}
	return false
}

func isBidiControl(r rune) bool {
	return r == '\u061c' || r == '\u200e' || r == '\u200f' ||
		'\u202a' <= r && r <= '\u202e' || '\u2066' <= r && r <= '\u2069'
}

// formatAddress returns the display-name and angle-addr parts of a mailbox, each ready for
// a header. An ASCII name is a quoted-string (RFC 5322 §3.2.4), any other an RFC 2047
// phrase of encoded-words of at most 75 characters (mime splits long names). Two ASCII
// cases are encoded too: a word too long to fold, and "=?", which some clients decode as an
// encoded-word even inside a quoted-string (RFC 2047 §5 forbids it), letting one smuggle an
// address in.
func formatAddress(name, addr string) (namePart, addrPart string) {
	addrPart = (&mail.Address{Address: addr}).String()
	switch {
	case name == "":
		return "", addrPart
	case isPrintableASCII(name):
		if strings.Contains(name, "=?") || longestWord(name) > maxWord {
			return qEncodeASCII(name), addrPart
		}
		return names.Quote(name), addrPart
	case strings.ContainsAny(name, "\"#$%&'(),.:;<>@[\\]^`{|}~"):
		// Q-encoded text in a phrase may hold only letters, digits and "!*+-/" (RFC 2047
		// §5(3)); mime's Q encoder writes the rest of ASCII as it is, which net/mail
		// accepts for atext but not for these. (mail.Address.String forgets the backslash.)
		return mime.BEncoding.Encode("utf-8", name), addrPart
	default:
		return mime.QEncoding.Encode("utf-8", name), addrPart
	}
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if (s[i] < ' ' || s[i] > '~') && s[i] != '\t' {
			return false
		}
	}
	return true
}

func longestWord(s string) int {
	longest, n := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' || s[i] == '\t' {
			n = 0
			continue
		}
		n++
		longest = max(longest, n)
	}
	return longest
}

// qEncodeASCII writes ASCII s as Q encoded-words fit for a phrase (RFC 2047 §4.2, §5(3)),
// each at most 75 characters, separated by spaces (which decoders drop between
// encoded-words, §6.2).
func qEncodeASCII(s string) string {
	const (
		open  = "=?utf-8?q?"
		room  = 75 - len(open) - len("?=")
		upper = "0123456789ABCDEF"
	)
	var b strings.Builder
	b.Grow(len(s)*2 + 16)
	b.WriteString(open)
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		safe := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("!*+-/", c) >= 0
		w := 3
		if safe || c == ' ' {
			w = 1
		}
		if n+w > room {
			b.WriteString("?= " + open)
			n = 0
		}
		switch {
		case safe:
			b.WriteByte(c)
		case c == ' ':
			b.WriteByte('_')
		default:
			b.WriteByte('=')
			b.WriteByte(upper[c>>4])
			b.WriteByte(upper[c&15])
		}
		n += w
	}
	b.WriteString("?=")
	return b.String()
}

// appendAddressField writes "Name: namePart addrPart" and CRLF, folding (RFC 5322 §2.2.3)
// before a word that would take the line past maxLine. It folds only at the spaces of
// namePart and before addrPart: between encoded-words or inside a quoted-string, where
// unfolding gives back the same text, never inside an encoded-word or the address.
func appendAddressField(b []byte, name, namePart, addrPart string) []byte {
	b = append(b, name...)
	b = append(b, ':')
	col := len(name) + 1
	first := true
	word := func(w string) {
		if !first && w != "" && col+1+len(w) > maxLine {
			b = append(b, "\r\n"...)
			col = 0
		}
		b = append(b, ' ')
		b = append(b, w...)
		col += 1 + len(w)
		first = false
	}
	for rest := namePart; rest != ""; {
		w, r, _ := strings.Cut(rest, " ")
		word(w)
		rest = r
	}
	word(addrPart)
	return append(b, "\r\n"...)
}

// keep returns s without the runes ok rejects and without invalid UTF-8, for values that
// reach a header from the client or the configuration. It does not allocate when s is fine.
func keep(s string, ok func(rune) bool) string {
	for i, r := range s {
		if !ok(r) || r == utf8.RuneError {
			var b strings.Builder
			b.WriteString(s[:i])
			for _, r := range s[i:] {
				if ok(r) && r != utf8.RuneError {
					b.WriteRune(r)
				}
			}
			return b.String()
		}
	}
	return s
}

func isAlnumRune(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9'
}

// isDomainRune accepts what a host name, an address literal or an internationalized
// (U-label) name is made of.
func isDomainRune(r rune) bool {
	return isAlnumRune(r) || strings.ContainsRune(".-_:[]", r) || r >= utf8.RuneSelf && !unicode.IsControl(r) && !unicode.IsSpace(r)
}

// isAtextRune accepts RFC 5322 atext and '.', the characters of an id.
func isAtextRune(r rune) bool {
	return isAlnumRune(r) || strings.ContainsRune("!#$%&'*+-/=?^_`{|}~.", r)
}

// isPathRune accepts the printable characters of an address (RFC 6531 allows UTF-8),
// except the angle brackets around it.
func isPathRune(r rune) bool {
	return r >= ' ' && r < 0x7f && r != '<' && r != '>' || r >= utf8.RuneSelf && !unicode.IsControl(r)
}
