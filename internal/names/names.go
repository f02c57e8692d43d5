// Package names owns the syntax in which the relay compares and checks names: domains
// (lower-case A-labels, SPEC §4), the domain of an address, and header field names. Every
// stage that compares a domain from the configuration with one from a message, or checks a
// header name, uses these functions, so both sides are normalised alike. It has no state
// and imports no other package of the relay.
package names

import (
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// Registration validation, no mapping: a domain must already be in its proper U-label (or
// A-label) form. With UTS 46 mapping, "ｅｘａｍｐｌｅ.com" (full-width) would compare equal to
// example.com and be kept as written, but receivers compare the From domain with the DKIM
// d= without mapping: the message would fail DMARC alignment. Unmapped, it matches nothing
// and is rewritten.
var idnaProfile = idna.New(idna.ValidateForRegistration(), idna.StrictDomainName(false))

// Domain lower-cases d and converts it to its A-label (punycode) form, dropping a final
// dot, so domains from the file and from messages compare alike (SPEC §4).
func Domain(d string) (string, error) {
	d = strings.TrimSuffix(strings.TrimSpace(d), ".")
	ascii := true
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToLower(d), nil
	}
	a, err := idnaProfile.ToASCII(strings.ToLower(d))
	if err != nil {
		return "", fmt.Errorf("domain %q: %w", d, err)
	}
	return strings.ToLower(a), nil
}

// AddressDomain returns the normalised domain of addr (after its last '@'), or "" when it
// has none or the domain is not valid IDNA.
func AddressDomain(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	d, err := Domain(addr[i+1:])
	if err != nil {
		return ""
	}
	return d
}

// FieldName reports whether s can be used as a header field name the relay writes or
// signs: printable ASCII except ':' (RFC 5322 §2.2), and except ';', which RFC 5322 allows
// but which would end the h= tag of a DKIM-Signature (RFC 6376 §3.2).
func FieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == ':' || s[i] == ';' {
			return false
		}
	}
	return true
}

// Hostname is Domain for a name typed by a person (relay dns, the HTTP API): it must also
// be a host name a mail domain can be (RFC 1123 §2.1, RFC 5321 §2.3.5): at least two
// labels of letters, digits and inner hyphens, each 1 to 63 octets, 253 in all.
func Hostname(d string) (string, error) {
	a, err := Domain(d)
	if err != nil {
		return "", err
	}
	if a == "" || len(a) > 253 {
		return "", fmt.Errorf("%q is not a domain name", d)
	}
	labels := strings.Split(a, ".")
	if len(labels) < 2 {
		return "", fmt.Errorf("%q is not a domain name (one label)", d)
	}
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("%q is not a domain name (label %q)", d, l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", fmt.Errorf("%q is not a domain name (character %q)", d, c)
			}
		}
	}
	return a, nil
}

// Quote writes s in double quotes with '"' and '\\' escaped by a backslash: the form of
// both an RFC 5322 quoted-string (of printable ASCII) and an RFC 1035 §5.1
// character-string in a zone file.
func Quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 4)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}
