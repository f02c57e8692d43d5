package spf

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// This file is the SPF record parser: the whole of RFC 7208 §12's ABNF, checked term by
// term before anything is evaluated (§4.6: a syntax error anywhere in a record is a
// permerror, even after a term that matched). CheckHost runs it on every record the SPF
// library reads; the DNS doctor (SPEC §9) uses it to report and rewrite records.

// Record is an SPF record that passed Parse: every term, in the order written.
type Record struct {
	Terms []Term
}

// Term is one directive (qualifier and mechanism) or modifier of an SPF record.
type Term struct {
	// Raw is the term as written.
	Raw string
	// IsModifier is set for name=value terms (redirect=, exp=, unknown modifiers).
	IsModifier bool
	// Qualifier is '+', '-', '~' or '?' as written, 0 when none was (a mechanism then
	// means '+', RFC 7208 §4.6.2). Modifiers take none.
	Qualifier byte
	// Name is the mechanism (all, include, a, mx, ptr, ip4, ip6, exists) or the modifier
	// name (redirect, exp, or an unknown one), in lower case.
	Name string
	// Value is what follows ":" or "=": a domain-spec (include, a, mx, ptr, exists,
	// redirect, exp), an address without its length (ip4, ip6) or a macro-string
	// (unknown modifier). It is "" when absent (all, and a, mx, ptr without a domain).
	Value string
	// CIDR4 and CIDR6 are the prefix lengths written (CIDR4 for a, mx, ip4; CIDR6 for
	// a, mx, ip6), -1 when none was.
	CIDR4, CIDR6 int
}

// SyntaxError is a term that breaks RFC 7208's grammar, and the rule it breaks.
type SyntaxError struct {
	Term  string // as written; "" when the record has no v=spf1 version
	Index int    // in Record.Terms, -1 for the version
	Rule  string
}

func (e *SyntaxError) Error() string {
	if e.Index < 0 {
		return e.Rule
	}
	return fmt.Sprintf("term %q: %s", e.Term, e.Rule)
}

// IsSPF reports whether a TXT record is an SPF record: "v=spf1" (any case) alone or
// followed by a space (RFC 7208 §4.5). The others are not SPF's business.
func IsSPF(txt string) bool {
	return len(txt) >= 6 && strings.EqualFold(txt[:6], "v=spf1") && (len(txt) == 6 || txt[6] == ' ')
}

// Parse parses an SPF record and checks all of it: version; mechanisms with their
// qualifiers, domain-specs and CIDR lengths (no leading zero, within range); modifiers,
// redirect= and exp= at most once each (§6); macro syntax and the letters allowed
// (§7.1); characters (visible 7-bit ASCII, terms separated by spaces, §3.1, §12). The
// error is a *SyntaxError naming the first term at fault.
func Parse(txt string) (*Record, error) {
	if !IsSPF(txt) {
		return nil, &SyntaxError{Index: -1, Rule: `not an SPF record: it must be "v=spf1" alone or followed by a space (RFC 7208 §4.5)`}
	}
	rec := &Record{Terms: make([]Term, 0, strings.Count(txt, " "))}
	var redirect, exp bool
	for raw := range strings.SplitSeq(txt[6:], " ") {
		if raw == "" {
			continue // terms = *( 1*SP ( directive / modifier ) ), then *SP
		}
		i := len(rec.Terms)
		t, rule := parseTerm(raw)
		switch {
		case rule != "":
		case t.Name == "redirect" && redirect, t.Name == "exp" && exp:
			rule = "a second " + t.Name + "= modifier (RFC 7208 §6: at most one)"
		case t.Name == "redirect":
			redirect = true
		case t.Name == "exp":
			exp = true
		}
		if rule != "" {
			return nil, &SyntaxError{Term: raw, Index: i, Rule: rule}
		}
		rec.Terms = append(rec.Terms, t)
	}
	return rec, nil
}

// ParseTerm parses one term, as Parse does inside a record.
func ParseTerm(raw string) (Term, error) {
	t, rule := parseTerm(raw)
	if rule != "" {
		return Term{}, &SyntaxError{Term: raw, Rule: rule}
	}
	return t, nil
}

// String is the record as published: v=spf1 and every term as written, in order,
// separated by single spaces.
func (r *Record) String() string {
	n := 6
	for _, t := range r.Terms {
		n += 1 + len(t.Raw)
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString("v=spf1")
	for _, t := range r.Terms {
		b.WriteByte(' ')
		b.WriteString(t.Raw)
	}
	return b.String()
}

// CostsLookup reports whether evaluating the term counts against the limit of 10 DNS
// lookups (RFC 7208 §4.6.4): include, a, mx, ptr, exists and redirect=.
func (t Term) CostsLookup() bool {
	switch t.Name {
	case "include", "a", "mx", "ptr", "exists":
		return !t.IsModifier
	case "redirect":
		return t.IsModifier
	}
	return false
}

// AllIndex is the index of the first "all" mechanism, where evaluation ends whatever the
// IP (terms after it are never evaluated, and redirect= is then ignored, §5.1, §6.1);
// -1 when the record has none.
func (r *Record) AllIndex() int {
	for i, t := range r.Terms {
		if !t.IsModifier && t.Name == "all" {
			return i
		}
	}
	return -1
}

// Modifier returns the modifier called name (lower case: "redirect", "exp"), if any.
func (r *Record) Modifier(name string) (Term, bool) {
	for _, t := range r.Terms {
		if t.IsModifier && t.Name == name {
			return t, true
		}
	}
	return Term{}, false
}

// Lookups counts the terms of this record (not of those it includes) that cost a DNS
// lookup when evaluation reaches them: the mechanisms before the first all, and
// redirect= when there is no all.
func (r *Record) Lookups() int {
	n := 0
	all := r.AllIndex()
	for i, t := range r.Terms {
		if all >= 0 && (i > all || t.IsModifier) {
			continue
		}
		if t.CostsLookup() {
			n++
		}
	}
	return n
}

// InsertIndex is where a new mechanism takes effect without changing what the record
// already says: before the first all, else before redirect=, else after the last
// mechanism (modifiers such as exp= stay at the end).
func (r *Record) InsertIndex() int {
	if i := r.AllIndex(); i >= 0 {
		return i
	}
	after := 0
	for i, t := range r.Terms {
		if t.IsModifier && t.Name == "redirect" {
			return i
		}
		if !t.IsModifier {
			after = i + 1
		}
	}
	return after
}

// Insert returns a copy of the record with the mechanism (for example
// "ip4:203.0.113.10" or "include:_spf.example.net") inserted at InsertIndex: the
// record to publish instead of a second one (SPEC §9). r is not changed.
func (r *Record) Insert(mechanism string) (*Record, error) {
	t, err := ParseTerm(mechanism)
	if err != nil {
		return nil, err
	}
	if t.IsModifier {
		return nil, &SyntaxError{Term: mechanism, Rule: "a modifier, not a mechanism"}
	}
	i := r.InsertIndex()
	terms := make([]Term, 0, len(r.Terms)+1)
	terms = append(terms, r.Terms[:i]...)
	terms = append(terms, t)
	terms = append(terms, r.Terms[i:]...)
	return &Record{Terms: terms}, nil
}

// mechanisms are the names of RFC 7208 §5, as constants so that parsing allocates no
// lower-cased copy.
var mechanisms = []string{"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}

// parseTerm parses one term; rule says what is wrong with it, "" when nothing is.
func parseTerm(raw string) (t Term, rule string) {
	t = Term{Raw: raw, CIDR4: -1, CIDR6: -1}
	// §3.1, §12: a term is visible 7-bit ASCII (macro-literal, name, qualifier...); a
	// space ends it, so any other control character is inside one.
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c >= 0x80:
			return t, fmt.Sprintf("non-ASCII byte 0x%02X (SPF records are 7-bit ASCII, RFC 7208 §3.1)", c)
		case c < 0x21 || c == 0x7F:
			return t, fmt.Sprintf("control character 0x%02X (terms are visible ASCII separated by spaces, RFC 7208 §12)", c)
		}
	}
	// §4.6.1: a modifier is a name followed by "=", before any ":" or "/".
	if name, value, ok := modifierName(raw); ok {
		return parseModifier(t, name, value)
	}
	rest := raw
	switch rest[0] {
	case '+', '-', '~', '?':
		t.Qualifier = rest[0]
		rest = rest[1:]
		if _, _, ok := modifierName(rest); ok {
			return t, "a modifier takes no qualifier"
		}
	}
	end := strings.IndexAny(rest, ":/")
	if end < 0 {
		end = len(rest)
	}
	name, arg := rest[:end], rest[end:]
	for _, m := range mechanisms {
		if strings.EqualFold(name, m) {
			t.Name = m
			break
		}
	}
	switch t.Name {
	case "":
		if name == "" {
			return t, "no mechanism after the qualifier"
		}
		return t, fmt.Sprintf("unknown mechanism %q", name)
	case "all":
		if arg != "" {
			return t, "all takes no argument"
		}
	case "include", "exists":
		if arg == "" || arg[0] != ':' {
			return t, t.Name + " needs \":\" and a domain-spec"
		}
		t.Value = arg[1:]
		return t, checkDomainSpec(t.Value)
	case "ptr":
		if arg == "" {
			return t, ""
		}
		if arg[0] != ':' {
			return t, "ptr takes no CIDR length"
		}
		t.Value = arg[1:]
		return t, checkDomainSpec(t.Value)
	case "a", "mx":
		if arg == "" {
			return t, ""
		}
		if arg[0] == '/' {
			return t, parseDualCIDR(&t, arg)
		}
		spec := arg[1:]
		// The CIDR lengths end the term; a "/" before them belongs to the domain-spec,
		// whose domain-end cannot contain one (§5.3: "a:foo:bar/baz.example.com").
		if i := strings.LastIndex(spec, "//"); i >= 0 && digits(spec[i+2:]) {
			if rule := cidrLength(spec[i+2:], 128, &t.CIDR6); rule != "" {
				return t, rule
			}
			spec = spec[:i]
		}
		if i := strings.LastIndexByte(spec, '/'); i >= 0 && digits(spec[i+1:]) {
			if rule := cidrLength(spec[i+1:], 32, &t.CIDR4); rule != "" {
				return t, rule
			}
			spec = spec[:i]
		}
		t.Value = spec
		return t, checkDomainSpec(spec)
	case "ip4", "ip6":
		if arg == "" || arg[0] != ':' || len(arg) == 1 {
			return t, t.Name + " needs \":\" and an address"
		}
		addr, length, hasLength := strings.Cut(arg[1:], "/")
		t.Value = addr
		if t.Name == "ip4" {
			if !ip4Network(addr) {
				return t, fmt.Sprintf("%q is not an IPv4 address (dotted quad, no leading zeros)", addr)
			}
			if hasLength {
				return t, cidrLength(length, 32, &t.CIDR4)
			}
		} else {
			if !ip6Network(addr) {
				return t, fmt.Sprintf("%q is not an IPv6 address", addr)
			}
			if hasLength {
				return t, cidrLength(length, 128, &t.CIDR6)
			}
		}
	}
	return t, ""
}

// modifierName splits name=value when raw is a modifier: name = ALPHA *( ALPHA / DIGIT
// / "-" / "_" / "." ) (§12), "=" before any ":" or "/".
func modifierName(raw string) (name, value string, ok bool) {
	i := strings.IndexAny(raw, "=:/")
	if i <= 0 || raw[i] != '=' || !isAlpha(raw[0]) {
		return "", "", false
	}
	for j := 1; j < i; j++ {
		if c := raw[j]; !isAlpha(c) && !isDigit(c) && c != '-' && c != '_' && c != '.' {
			return "", "", false
		}
	}
	return raw[:i], raw[i+1:], true
}

func parseModifier(t Term, name, value string) (Term, string) {
	t.IsModifier = true
	t.Value = value
	switch {
	case strings.EqualFold(name, "redirect"):
		t.Name = "redirect"
	case strings.EqualFold(name, "exp"):
		t.Name = "exp"
	default:
		t.Name = strings.ToLower(name)
		// unknown-modifier = name "=" macro-string. Its value is never expanded, so the
		// exp-only letters c, r, t are accepted: rejecting them would make a record
		// using a future modifier a permerror.
		if _, err := parseMacroString(value, true); err != "" {
			return t, err
		}
		return t, ""
	}
	if value == "" {
		return t, t.Name + "= needs a domain-spec"
	}
	return t, checkDomainSpec(value)
}

// parseDualCIDR reads dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]
// when nothing else follows the mechanism name: "/24", "//64", "/24//64".
func parseDualCIDR(t *Term, s string) string {
	v4, v6, both := strings.Cut(s[1:], "//")
	if strings.HasPrefix(s, "//") {
		v4, v6, both = "", s[2:], true
	}
	if v4 != "" || !both {
		if rule := cidrLength(v4, 32, &t.CIDR4); rule != "" {
			return rule
		}
	}
	if both {
		return cidrLength(v6, 128, &t.CIDR6)
	}
	return ""
}

// cidrLength checks ip4-cidr-length or ip6-cidr-length (§5.6, §12): decimal digits, no
// leading zero, at most max.
func cidrLength(s string, max int, out *int) string {
	switch {
	case s == "":
		return "empty CIDR length"
	case !digits(s):
		return fmt.Sprintf("CIDR length %q is not a number", s)
	case len(s) > 1 && s[0] == '0':
		return fmt.Sprintf("CIDR length /%s with a leading zero", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > max {
		return fmt.Sprintf("CIDR length /%s out of range (0-%d)", s, max)
	}
	*out = n
	return ""
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return s != ""
}

func isAlpha(c byte) bool { return 'a' <= c|0x20 && c|0x20 <= 'z' }

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// ip4Network is ip4-network: four qnum (0-255 without leading zeros) joined by dots.
func ip4Network(s string) bool {
	for i := range 4 {
		end := strings.IndexByte(s, '.')
		if i == 3 {
			end = len(s)
		} else if end < 0 {
			return false
		}
		q := s[:end]
		if !digits(q) || len(q) > 3 || len(q) > 1 && q[0] == '0' {
			return false
		}
		if n, _ := strconv.Atoi(q); n > 255 {
			return false
		}
		if i < 3 {
			s = s[end+1:]
		}
	}
	return true
}

// ip6Network is ip6-network, the text forms of RFC 4291 §2.2 (an IPv4 tail allowed, no
// zone).
func ip6Network(s string) bool {
	if strings.IndexByte(s, ':') < 0 || strings.IndexByte(s, '%') >= 0 {
		return false
	}
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6()
}

// macroPart is a piece of a macro-string: literal text, an escape (%%, %_, %-: kind is
// the byte after the %), or a macro-expand %{...} (kind '{').
type macroPart struct {
	kind    byte // 0 literal, '%', '_', '-', '{'
	text    string
	letter  byte // as written: upper case asks for URL escaping (§7.3)
	digits  int  // keep that many right-hand parts; 0 keeps all
	reverse bool
	delims  string // "" splits on "."
}

// parseMacroString reads macro-string (§7.1). crt allows the letters c, r and t, which
// §7.1 reserves for exp text. It returns the parts, or the rule broken.
func parseMacroString(s string, crt bool) ([]macroPart, string) {
	var parts []macroPart
	for len(s) > 0 {
		i := strings.IndexByte(s, '%')
		if i < 0 {
			parts = append(parts, macroPart{text: s})
			break
		}
		if i > 0 {
			parts = append(parts, macroPart{text: s[:i]})
		}
		s = s[i:]
		if len(s) == 1 {
			return nil, "\"%\" at the end (a literal % is written %%, RFC 7208 §7.1)"
		}
		switch c := s[1]; c {
		case '%', '_', '-':
			parts = append(parts, macroPart{kind: c, text: s[:2]})
			s = s[2:]
			continue
		case '{':
		default:
			return nil, fmt.Sprintf("%q: \"%%\" must be followed by \"{\", \"%%\", \"_\" or \"-\" (RFC 7208 §7.1)", s[:2])
		}
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return nil, fmt.Sprintf("%q: macro without its closing \"}\"", s)
		}
		p, rule := parseMacro(s[2:end], crt)
		if rule != "" {
			return nil, fmt.Sprintf("macro %q: %s", s[:end+1], rule)
		}
		p.text = s[:end+1]
		parts = append(parts, p)
		s = s[end+1:]
	}
	return parts, ""
}

// parseMacro reads macro-letter transformers *delimiter, the inside of %{...}.
func parseMacro(body string, crt bool) (macroPart, string) {
	p := macroPart{kind: '{'}
	if body == "" {
		return p, "no macro letter"
	}
	p.letter = body[0]
	switch p.letter | 0x20 {
	case 's', 'l', 'o', 'd', 'i', 'p', 'h', 'v':
	case 'c', 'r', 't':
		if !crt {
			return p, fmt.Sprintf("letter %q is allowed only in exp text (RFC 7208 §7.1)", p.letter)
		}
	default:
		return p, fmt.Sprintf("unknown macro letter %q", p.letter)
	}
	body = body[1:]
	n := 0
	for n < len(body) && isDigit(body[n]) {
		n++
	}
	if n > 0 {
		// More right-hand parts than a name can have (127 labels) keep them all.
		v, err := strconv.Atoi(body[:n])
		if err != nil || v > 128 {
			v = 128
		}
		if v == 0 {
			return p, "the number of parts to keep must not be zero (RFC 7208 §7.3)"
		}
		p.digits = v
		body = body[n:]
	}
	if body != "" && body[0]|0x20 == 'r' {
		p.reverse = true
		body = body[1:]
	}
	for i := 0; i < len(body); i++ {
		if strings.IndexByte(".-+,/_=", body[i]) < 0 {
			return p, fmt.Sprintf("%q is not a delimiter (one of . - + , / _ =)", body[i])
		}
	}
	p.delims = body
	return p, ""
}

// checkDomainSpec checks domain-spec = macro-string domain-end, where domain-end is
// a macro-expand, or "." toplabel with an optional final dot (§7.1). The literal
// domain-end rule is what rejects "museum", "abc.123", "example.-com" and
// "example.com:8080" (§7.1: a domain-spec names a domain with at least two labels).
func checkDomainSpec(spec string) string {
	if spec == "" {
		return "empty domain-spec"
	}
	parts, rule := parseMacroString(spec, false)
	if rule != "" {
		return rule
	}
	last := parts[len(parts)-1]
	if last.kind != 0 {
		return ""
	}
	end := strings.TrimSuffix(last.text, ".")
	dot := strings.LastIndexByte(end, '.')
	if dot < 0 {
		return fmt.Sprintf("domain-spec %q does not end in a macro or in \".\" and a top label (RFC 7208 §7.1)", spec)
	}
	if rule := checkTopLabel(end[dot+1:]); rule != "" {
		return fmt.Sprintf("domain-spec %q: %s", spec, rule)
	}
	return ""
}

// checkTopLabel is toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *(
// alphanum / "-" ) alphanum ): letters, digits and inner hyphens, not all digits.
func checkTopLabel(l string) string {
	if l == "" {
		return "empty top label"
	}
	numeric := true
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case isAlpha(c) || c == '-':
			numeric = false
		case isDigit(c):
		default:
			return fmt.Sprintf("top label %q has %q (only letters, digits and hyphens)", l, c)
		}
	}
	switch {
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Sprintf("top label %q begins or ends with a hyphen", l)
	case numeric:
		return fmt.Sprintf("top label %q is all digits", l)
	}
	return ""
}
