package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"relay/internal/spf"
)

// WriteJSON writes res as one indented JSON object (the shape is Result's; the README
// documents it).
func WriteJSON(w io.Writer, res *Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(res)
}

// WriteText writes res for an admin: per domain the verdict first, then what each area
// found, the problems, and the records to publish.
func WriteText(w io.Writer, res *Result) error {
	t := &textWriter{w: w}
	t.f("Resolver %s; sending IPs %s", strings.Join(res.Resolvers, ", "), orNone(strings.Join(res.SendingIPs, ", ")))
	if res.SPFInclude != "" {
		t.f("; SPF include %s", res.SPFInclude)
	}
	t.f("\n")
	for _, f := range res.Findings {
		t.f("%s: %s\n", f.Severity, f.Text)
	}
	for _, e := range res.DNSErrors {
		t.f("DNS error: %s\n", dnsErrorText(e))
	}
	for i := range res.Domains {
		t.f("\n")
		t.report(&res.Domains[i])
	}
	var ready, notReady, unknown int
	for _, r := range res.Domains {
		switch r.Status {
		case StatusReady:
			ready++
		case StatusNotReady:
			notReady++
		default:
			unknown++
		}
	}
	t.f("\n%d ready, %d not ready, %d unknown (DNS failure)\n", ready, notReady, unknown)
	return t.err
}

type textWriter struct {
	w   io.Writer
	err error
}

func (t *textWriter) f(format string, args ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, args...)
	}
}

// field writes a labelled block: the label in a column of its own, every line of the
// value after it.
func (t *textWriter) field(label string, lines ...string) {
	for i, l := range lines {
		if i > 0 {
			label = ""
		}
		t.f("  %-7s %s\n", label, l)
	}
}

func (t *textWriter) report(r *Report) {
	t.f("%s: %s\n", r.Domain, r.Verdict)
	if r.Decision.Detail != "" {
		t.f("  why: %s\n", r.Decision.Detail)
	}
	if r.Unit != "" {
		t.f("  unit: %s\n", r.Unit)
	}
	t.f("\n")
	t.field("SPF", spfLines(r)...)
	t.field("DKIM", dkimLines(r)...)
	t.field("DMARC", dmarcLines(r)...)
	if b := r.Bounce; b.Address != "" {
		t.field("Bounce", bounceLine(b))
	}
	for _, e := range r.DNSErrors {
		t.field("DNS", "lookup failed: "+dnsErrorText(e))
	}

	if len(r.Findings) > 0 {
		t.f("\n")
		for _, f := range r.Findings {
			t.f("  %-7s %s: %s\n", f.Severity, f.Area, f.Text)
		}
	}
	if len(r.Publish) > 0 {
		t.f("\n")
		switch {
		case r.Status == StatusNotReady && hasKinds(r.Publish, "spf", "dkim"):
			t.f("  Publish (the SPF or the DKIM record makes the domain ready; both are best):\n")
		default:
			t.f("  Publish:\n")
		}
		for i, p := range r.Publish {
			t.f("  %d. %s\n", i+1, p.Why)
			t.f("       %s\n", p.Zone)
			t.f("       Name:  %s\n", p.Name)
			t.f("       Type:  %s\n", p.Type)
			t.f("       Value: %s\n", p.Value)
			if len(p.Strings) > 1 {
				t.f("       (%d bytes: a form that wants strings of at most 255 takes the %d of the zone line)\n", len(p.Value), len(p.Strings))
			}
			if p.Note != "" {
				t.f("       Note: %s\n", p.Note)
			}
		}
	}
}

func spfLines(r *Report) []string {
	s := r.SPF
	var lines []string
	switch {
	case !s.Exists && len(s.Results) == 0 && s.Tree == nil && len(r.DNSErrors) > 0:
		return []string{"unknown"}
	case len(s.Records) == 0:
		lines = append(lines, "no SPF record")
	default:
		lines = append(lines, s.Records...)
	}
	if res := resultLine(s.Results); res != "" {
		lines = append(lines, res)
	}
	if s.Tree != nil {
		l := fmt.Sprintf("%d of %d DNS lookups, %d of %d void", s.Lookups, spf.MaxLookups, s.VoidLookups, spf.MaxVoidLookups)
		if len(s.Records) > 1 {
			l += " (the merged record)"
		}
		lines = append(lines, l)
		lines = append(lines, treeLines(s.Tree, "  ")...)
	}
	return lines
}

// resultLine groups the check_host results: "pass for 203.0.113.10; softfail for
// 2001:db8::10".
func resultLine(rs []IPResult) string {
	var order []string
	by := map[string][]string{}
	why := map[string]string{}
	for _, r := range rs {
		if _, ok := by[r.Result]; !ok {
			order = append(order, r.Result)
		}
		by[r.Result] = append(by[r.Result], r.IP)
		if r.Why != "" {
			why[r.Result] = r.Why
		}
	}
	parts := make([]string, len(order))
	for i, res := range order {
		parts[i] = res + " for " + strings.Join(by[res], ", ")
		if why[res] != "" {
			parts[i] += " (" + why[res] + ")"
		}
	}
	return strings.Join(parts, "; ")
}

// treeLines draws what costs lookups: each include with what it costs, indented by depth,
// and the notes on single terms.
func treeLines(n *spf.Node, indent string) []string {
	var lines []string
	for _, note := range n.Notes {
		lines = append(lines, indent+note)
	}
	for _, c := range n.Includes {
		l := fmt.Sprintf("%s%s: %d", indent, c.Term, c.Lookups+1)
		if c.Error != "" {
			l += " (" + c.Error + ")"
		}
		lines = append(lines, l)
		lines = append(lines, treeLines(c, indent+"  ")...)
	}
	return lines
}

func dkimLines(r *Report) []string {
	if len(r.DKIM) == 0 {
		return []string{"no key record to check"}
	}
	var lines []string
	for _, k := range r.DKIM {
		l := k.Name + ": "
		switch k.State {
		case "match":
			l += "the relay's key"
		case "missing":
			l += "no record"
		case "other-key":
			l += "another key"
		case "revoked":
			l += "revoked key (empty p=)"
		case "malformed":
			l += "malformed"
			if k.Tag != "" {
				l += " (tag " + k.Tag + ")"
			}
		case "several":
			l += "several records"
		case "dns-error":
			l += "lookup failed"
		}
		if k.KeyType != "" {
			l += fmt.Sprintf(", %s %d", k.KeyType, k.KeyBits)
		}
		if len(k.CNAMEs) > 0 {
			l += ", via CNAME " + strings.Join(k.CNAMEs, " -> ")
		}
		l += " [" + k.Role + "]"
		lines = append(lines, l)
	}
	return lines
}

func dmarcLines(r *Report) []string {
	d := r.DMARC
	var lines []string
	switch {
	case d.Unknown:
		lines = append(lines, d.Name+": unknown (lookup failed)")
	case d.FoundAt == "" && d.Error == "":
		lines = append(lines, d.Name+": no record")
	default:
		where := d.FoundAt
		if d.Inherited {
			where += " (organizational domain)"
		}
		if d.Record != "" {
			lines = append(lines, where+": "+d.Record)
		} else {
			lines = append(lines, where)
		}
		if d.Error != "" {
			lines = append(lines, "error: "+d.Error)
		} else {
			l := fmt.Sprintf("applies p=%s; adkim=%s aspf=%s pct=%d", d.Applied, d.ADKIM, d.ASPF, d.Pct)
			if len(d.RUA) > 0 {
				l += " rua=" + strings.Join(d.RUA, ",")
			}
			lines = append(lines, l)
		}
	}
	if d.Forecast.Text != "" {
		lines = append(lines, "relay's mail: "+d.Forecast.Text)
	}
	return lines
}

func bounceLine(b Bounce) string {
	l := b.Address + ": "
	switch {
	case b.Unknown:
		l += "unknown (lookup failed)"
	case b.NullMX:
		l += "null MX"
	case len(b.MX) > 0:
		l += "MX " + strings.Join(b.MX, ", ")
	case b.HasAddress:
		l += "no MX, an address record"
	case b.OK:
	default:
		l += "no MX, no address"
	}
	return l
}

func dnsErrorText(e DNSError) string {
	return fmt.Sprintf("%s %s at %s: %s", e.Name, e.Type, e.Server, e.Error)
}

func hasKinds(rs []Record, kinds ...string) bool {
	for _, k := range kinds {
		found := false
		for _, r := range rs {
			found = found || r.Kind == k
		}
		if !found {
			return false
		}
	}
	return true
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
