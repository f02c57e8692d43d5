package spf

import (
	"context"
	"net/netip"
	"strconv"
	"strings"

	"relay/internal/resolver"
)

// The SPF library (blitiri.com.ar/go/spf) evaluates every record, but it reads the record
// that view.LookupTXT hands it, not the published one. That record is the published one
// after Parse accepted all of it, rewritten so that the library's reading is RFC
// 7208's:
//
//   - every macro is expanded here (§7.3), including %{p}, which the library always
//     expands to "unknown", and "/" delimiters, which it rejects;
//   - the names are in libName form, so that a "/" inside a domain-spec
//     ("a:foo:bar/baz.example.com", §7.1) is not taken for a CIDR length;
//   - exp= and unknown modifiers are left out: the library ignores them anyway, and the
//     relay has no use for an explanation (their syntax was checked).
//
// The names the library then asks view for come back through realName.

// macroEnv is what the macros of one check_host expand to, apart from the record's own
// domain (%{d}) and the validated name of the IP (%{p}).
type macroEnv struct {
	ip                          netip.Addr
	sender, local, domain, helo string
}

// newMacroEnv splits the sender as RFC 7208 §4.3 does: a sender without local part is
// postmaster at its domain, one without domain is postmaster@helo (§2.4).
func newMacroEnv(ip netip.Addr, helo, sender string) macroEnv {
	env := macroEnv{ip: ip, helo: helo}
	i := strings.LastIndexByte(sender, '@')
	if i >= 0 && i+1 < len(sender) {
		env.local, env.domain = sender[:i], sender[i+1:]
	} else {
		env.domain = helo
	}
	env.sender = sender
	if env.local == "" {
		env.local = "postmaster"
		env.sender = env.local + "@" + env.domain
	}
	return env
}

// expand returns the domain-spec with its macros expanded for the record of domain
// (§7.3), and truncated on the left to 253 octets when it is longer (§7.3: "by
// removing successive domain labels").
func (v *view) expand(ctx context.Context, spec, domain string) string {
	if strings.IndexByte(spec, '%') < 0 {
		return spec
	}
	parts, _ := parseMacroString(spec, false) // Parse has checked it
	var b strings.Builder
	for _, p := range parts {
		switch p.kind {
		case 0:
			b.WriteString(p.text)
		case '%':
			b.WriteByte('%')
		case '_':
			b.WriteByte(' ')
		case '-':
			b.WriteString("%20")
		case '{':
			s := transform(v.macroValue(ctx, p.letter|0x20, domain), p)
			if 'A' <= p.letter && p.letter <= 'Z' {
				s = urlEscape(s)
			}
			b.WriteString(s)
		}
	}
	name := b.String()
	for len(name) > 253 {
		i := strings.IndexByte(name, '.')
		if i < 0 {
			break
		}
		name = name[i+1:]
	}
	return name
}

func (v *view) macroValue(ctx context.Context, letter byte, domain string) string {
	switch letter {
	case 's':
		return v.env.sender
	case 'l':
		return v.env.local
	case 'o':
		return v.env.domain
	case 'd':
		return domain
	case 'i':
		return macroIP(v.env.ip)
	case 'p':
		return v.validatedName(ctx, domain)
	case 'v':
		if v.env.ip.Is4() {
			return "in-addr"
		}
		return "ip6"
	case 'h':
		return v.env.helo
	}
	return "" // c, r, t: exp text only, which Parse does not let into a domain-spec
}

// macroIP is %{i}: dotted quad, or the 32 nibbles of an IPv6 address (§7.3).
func macroIP(ip netip.Addr) string {
	if ip.Is4() {
		return ip.String()
	}
	const hex = "0123456789abcdef"
	b := make([]byte, 0, 63)
	for i, x := range ip.As16() {
		if i > 0 {
			b = append(b, '.')
		}
		b = append(b, hex[x>>4], '.', hex[x&0xf])
	}
	return string(b)
}

// transform applies the transformers and delimiters of a macro (§7.3): split on the
// delimiters ("." by default), reverse, keep the right-most parts, join with ".".
// Without any of them the value is used as it is.
func transform(value string, p macroPart) string {
	if p.digits == 0 && !p.reverse && p.delims == "" {
		return value
	}
	delims := p.delims
	if delims == "" {
		delims = "."
	}
	parts := strings.FieldsFunc(value, func(r rune) bool {
		return r < 0x80 && strings.IndexByte(delims, byte(r)) >= 0
	})
	if p.reverse {
		for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
			parts[i], parts[j] = parts[j], parts[i]
		}
	}
	if p.digits > 0 && p.digits < len(parts) {
		parts = parts[len(parts)-p.digits:]
	}
	return strings.Join(parts, ".")
}

// urlEscape is the escaping of upper-case macros: every octet outside RFC 3986's
// unreserved set (ALPHA DIGIT - . _ ~) as %XX (§7.3). url.QueryEscape would write a
// space as "+".
func urlEscape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlpha(c) || isDigit(c) || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// validatedName is %{p} for the record of domain (§7.3): of the IP's PTR names that
// resolve back to it (§5.5, the first 10), domain itself, else a subdomain of it, else
// the first; "unknown" when there is none or DNS failed. The names are looked up once
// per check, and only for a record that uses %{p}.
func (v *view) validatedName(ctx context.Context, domain string) string {
	if !v.ptrDone {
		v.ptrDone = true
		names, err := resolver.PTR(ctx, v.q, v.env.ip.String())
		if err != nil {
			return "unknown"
		}
		for _, n := range names[:min(len(names), 10)] {
			ips, err := resolver.IP(ctx, v.q, n, v.env.ip.Is4(), v.env.ip.Is6())
			if err != nil {
				continue
			}
			for _, a := range ips {
				if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == v.env.ip {
					v.ptrNames = append(v.ptrNames, strings.TrimSuffix(n, "."))
					break
				}
			}
		}
	}
	domain = strings.TrimSuffix(domain, ".")
	sub := ""
	for _, n := range v.ptrNames {
		if strings.EqualFold(n, domain) {
			return n
		}
		if sub == "" && len(n) > len(domain)+1 && n[len(n)-len(domain)-1] == '.' && strings.EqualFold(n[len(n)-len(domain):], domain) {
			sub = n
		}
	}
	switch {
	case sub != "":
		return sub
	case len(v.ptrNames) > 0:
		return v.ptrNames[0]
	}
	return "unknown"
}

// libraryRecord is the record the library evaluates for rec, the record of domain: see
// the top of this file.
func (v *view) libraryRecord(ctx context.Context, rec *Record, domain string) string {
	n := 6
	for _, t := range rec.Terms {
		n += 1 + len(t.Raw)
	}
	var b strings.Builder
	b.Grow(n + 8) // room for a few escapes or expansions before it grows
	b.WriteString("v=spf1")
	for _, t := range rec.Terms {
		if t.IsModifier && t.Name != "redirect" {
			continue
		}
		b.WriteByte(' ')
		if t.Qualifier != 0 {
			b.WriteByte(t.Qualifier)
		}
		b.WriteString(t.Name)
		switch {
		case t.Name == "redirect":
			b.WriteByte('=')
			b.WriteString(libName(v.expand(ctx, t.Value, domain)))
		case t.Name == "ip4" || t.Name == "ip6":
			b.WriteByte(':')
			b.WriteString(t.Value)
			if l := max(t.CIDR4, t.CIDR6); l >= 0 {
				b.WriteByte('/')
				b.WriteString(strconv.Itoa(l))
			}
			continue
		case t.Value != "":
			b.WriteByte(':')
			b.WriteString(libName(v.expand(ctx, t.Value, domain)))
		}
		if t.CIDR4 >= 0 {
			b.WriteByte('/')
			b.WriteString(strconv.Itoa(t.CIDR4))
		}
		if t.CIDR6 >= 0 {
			b.WriteString("//")
			b.WriteString(strconv.Itoa(t.CIDR6))
		}
	}
	return b.String()
}

// libEscape starts the escapes of libName. The library splits a record on spaces,
// takes "/" for the start of a CIDR length and "%" for a macro, so a name it reads may
// contain none of them; the escape byte itself is escaped, so that any name (DNS names
// are octet strings) survives the round trip.
const libEscape = '\x1f'

// libName writes a name in the form the library reads (see libEscape); realName
// undoes it.
func libName(name string) string {
	if strings.IndexAny(name, "\x1f/% ") < 0 {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case libEscape:
			b.WriteString("\x1fe")
		case '/':
			b.WriteString("\x1fs")
		case '%':
			b.WriteString("\x1fp")
		case ' ':
			b.WriteString("\x1f_")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func realName(name string) string {
	if strings.IndexByte(name, libEscape) < 0 {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c != libEscape || i+1 == len(name) {
			b.WriteByte(c)
			continue
		}
		i++
		switch name[i] {
		case 'e':
			b.WriteByte(libEscape)
		case 's':
			b.WriteByte('/')
		case 'p':
			b.WriteByte('%')
		case '_':
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
			b.WriteByte(name[i])
		}
	}
	return b.String()
}
