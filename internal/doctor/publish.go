package doctor

import (
	"strings"

	"relay/internal/names"
)

// maxTXTString is the most one character-string of a TXT record holds (RFC 1035
// §3.3.14); longer values are several strings, which receivers join without a separator
// (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
const maxTXTString = 255

// Record is a DNS record to publish, in the two forms admins need: a zone-file line, and
// the Name / Type / Value a DNS provider's form asks for.
type Record struct {
	// Kind is what it is for: "spf" or "dkim".
	Kind string `json:"kind"`
	// Why says what to do with it, in one line.
	Why string `json:"why"`
	// Name is the owner name, without the final dot.
	Name string `json:"name"`
	// Type is "TXT" or "CNAME".
	Type string `json:"type"`
	// Value is the TXT text (the strings joined) or the CNAME target (without the final
	// dot): what a provider's form takes.
	Value string `json:"value"`
	// Strings is a TXT Value cut into strings of at most 255 bytes, as Zone has them.
	Strings []string `json:"strings"`
	// Zone is the record as a zone-file line.
	Zone string `json:"zone"`
	// Note is advice about it, "" when none.
	Note string `json:"note"`
}

// TXT is a TXT record of name with value.
func TXT(kind, why, name, value string) Record {
	name = strings.TrimSuffix(name, ".")
	strs := SplitTXT(value)
	quoted := make([]string, len(strs))
	for i, s := range strs {
		quoted[i] = QuoteTXT(s)
	}
	return Record{Kind: kind, Why: why, Name: name, Type: "TXT", Value: value, Strings: strs,
		Zone: name + ". IN TXT " + strings.Join(quoted, " ")}
}

// CNAME is a CNAME record of name pointing at target.
func CNAME(kind, why, name, target string) Record {
	name, target = strings.TrimSuffix(name, "."), strings.TrimSuffix(target, ".")
	return Record{Kind: kind, Why: why, Name: name, Type: "CNAME", Value: target,
		Zone: name + ". IN CNAME " + target + "."}
}

func withNote(r Record, note string) Record {
	r.Note = note
	return r
}

// SplitTXT cuts a TXT value into character-strings of at most 255 bytes. The cut is at
// the byte, not at a space: a provider's form that trims each string would otherwise
// drop the space between two SPF terms.
func SplitTXT(s string) []string {
	var parts []string
	for len(s) > maxTXTString {
		parts = append(parts, s[:maxTXTString])
		s = s[maxTXTString:]
	}
	return append(parts, s)
}

// QuoteTXT writes one character-string in zone-file form: in double quotes, with '"'
// and '\\' escaped (RFC 1035 §5.1).
func QuoteTXT(s string) string { return names.Quote(s) }
