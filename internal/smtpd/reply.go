package smtpd

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// The replies this package gives itself. Texts say what the client can do about it.
var (
	errInternal = reply(451, 4, 3, 0, "Temporary internal error, please try again later")

	errAuthRequired        = reply(530, 5, 7, 0, "Authentication required")
	errAuthFailed          = reply(535, 5, 7, 8, "Authentication credentials invalid")
	errTooManyAuthFailures = reply(421, 4, 7, 0, "Too many authentication failures, closing connection")
	errEncryptionRequired  = reply(538, 5, 7, 11, "Encryption required for requested authentication mechanism") // RFC 4954 §6
	errAuthInTransaction   = reply(503, 5, 5, 1, "AUTH not permitted during a mail transaction")                // RFC 4954 §4
	errBadAuthResponse     = reply(501, 5, 5, 2, "Malformed authentication response")
	errRateLimited         = reply(451, 4, 7, 1, "Rate limit exceeded, try again later")
	errNestedMail          = reply(503, 5, 5, 1, "Nested MAIL command")
	errBadHelo             = reply(501, 5, 5, 2, "Invalid EHLO/HELO argument")
	errBadSender           = reply(501, 5, 1, 7, "Bad sender address syntax")
	errBadRecipient        = reply(501, 5, 1, 3, "Bad destination mailbox address syntax")
	errAuthLocked          = reply(454, 4, 7, 0, "Too many failed authentications, try again later")
	errAuthBusy            = reply(454, 4, 7, 0, "Server busy, try again later")
	errUserGone            = reply(530, 5, 7, 0, "Authentication required: the authenticated user is no longer configured")
	// RFC 5321 §4.5.3.1.3 and §4.5.3.1.1.
	errPathTooLong      = reply(501, 5, 1, 3, fmt.Sprintf("Path too long (limit %d octets)", maxPath))
	errLocalPartTooLong = reply(501, 5, 1, 3, fmt.Sprintf("Local part too long (limit %d octets)", maxLocalPart))
	errBareNewline      = reply(550, 5, 6, 0, "bare CR/LF not allowed")
	errDataTimeout      = reply(421, 4, 4, 2, "Timeout reading message data, closing connection")
	errTooManyConns     = reply(421, 4, 7, 0, "Too many connections, try again later")
	errTooManyConnsIP   = reply(421, 4, 7, 0, "Too many connections from your address, try again later")
	// go-smtp caps a line at maxLineLength octets, its CRLF included; it closes the
	// connection after this reply.
	errLineTooLong = reply(500, 5, 6, 0, fmt.Sprintf("Line too long (limit %d octets), closing connection", maxLineLength-2))
)

func reply(code, a, b, c int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{a, b, c}, Message: msg}
}

// replier is what errors the client can act on implement (policy, pipeline).
type replier interface {
	SMTPReply() (code int, enhanced [3]int, msg string)
}

// toSMTP is the one place an error becomes an SMTP reply. go-smtp type-asserts (not
// errors.As) what a Session returns and sends anything else as a permanent 554, so every
// error leaving this package goes through here: an SMTPReply method or an *smtp.SMTPError
// anywhere in the chain is answered as it says; anything else is an internal fault, a 451
// 4.3.0 the client will retry (the caller logs the real error).
func toSMTP(err error) *smtp.SMTPError {
	if err == nil {
		return nil
	}
	var code int
	var enh [3]int
	var msg string
	var r replier
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &r):
		code, enh, msg = r.SMTPReply()
	case errors.As(err, &se):
		code, enh, msg = se.Code, se.EnhancedCode, se.Message
	default:
		return errInternal
	}
	// Only a failure may come out of an error: a 2xx or 3xx here would tell the client a
	// message went through that did not.
	if code < 400 || code > 599 {
		return errInternal
	}
	if enh[0] != code/100 || enh[1] < 0 || enh[2] < 0 {
		enh = smtp.EnhancedCodeNotSet // go-smtp writes X.0.0
	}
	if msg = oneLine(msg); msg == "" {
		msg = "Error"
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// oneLine makes s safe as the text of a one-line reply: go-smtp splits on "\n" into a
// multi-line reply, and a CR or other control character has no place on the wire. RFC 5321
// §4.5.3.1.5 limits a reply line to 512 octets.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > 480 {
		i := 480
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return s
}

// validText reports whether a command argument is free of control characters (NUL, CR,
// ...) and is valid UTF-8 (SPEC §7: those are syntax errors in commands).
func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// validAddress checks what go-smtp's path parser lets through. It accepts a dot-string
// local part (RFC 5321 §4.1.2, with UTF-8 per RFC 6531) and a domain or address literal;
// go-smtp returns a quoted local part ("a b"@x) unquoted, which could not be sent on
// unchanged, so a local part that needed quoting is refused too.
// RFC 5321 §4.5.3.1: a path is at most 256 octets with its angle brackets, a local part 64.
const (
	maxPath      = 256
	maxLocalPart = 64
)

// addressLimit returns the reply for an address (without its angle brackets) over the
// RFC 5321 size limits, or nil.
func addressLimit(addr string) *smtp.SMTPError {
	if len(addr)+2 > maxPath {
		return errPathTooLong
	}
	if at := strings.LastIndexByte(addr, '@'); at > maxLocalPart {
		return errLocalPartTooLong
	}
	return nil
}

func validAddress(addr string) bool {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || !validText(addr) {
		return false
	}
	local, domain := addr[:at], addr[at+1:]
	if strings.ContainsAny(local, "()<>[]:;@\\,\" \t") {
		return false
	}
	if strings.HasPrefix(domain, "[") {
		return strings.HasSuffix(domain, "]") && !strings.ContainsAny(domain[1:len(domain)-1], "[]\\ ")
	}
	return !strings.ContainsAny(domain, "()<>[]:;@\\,\" \t")
}
