package spf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"go.yaml.in/yaml/v3"
	"relay/internal/dnstest"

	"relay/internal/resolver"
)

// The RFC 7208 test suite (openspf.org, maintained with pyspf; the copy shipped in the
// testdata of blitiri.com.ar/go/spf v1.6.0) runs here through a real DNS server on
// loopback that serves each scenario's zone data, internal/resolver's Resolver and Memo,
// and CheckHost, exactly as internal/authz's Authorizer uses them. Every case must pass; SPF-SUITE.md
// says how, and states the number of cases (checked here).

// suiteQueryTimeout is how long the resolver waits for the suite's TIMEOUT names, which
// the server never answers. It is far above a loopback round trip, even under -race.
const suiteQueryTimeout = 400 * time.Millisecond

type suite struct {
	Description string
	Tests       map[string]suiteTest
	ZoneData    map[string][]yaml.Node `yaml:"zonedata"`
}

type suiteTest struct {
	Description string
	Spec        yaml.Node
	Helo        string
	Host        string
	MailFrom    string `yaml:"mailfrom"`
	Result      yaml.Node
	Skip        string
}

func loadSuite(t testing.TB, path string) []suite {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []suite
	dec := yaml.NewDecoder(f)
	for {
		var s suite
		err := dec.Decode(&s)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, s)
	}
	return out
}

// scalars returns a scalar node's value, or a sequence's values.
func scalars(n *yaml.Node) []string {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil
		}
		return []string{n.Value}
	case yaml.SequenceNode:
		var out []string
		for _, c := range n.Content {
			out = append(out, c.Value)
		}
		return out
	}
	return nil
}

// zoneEntry is one line of a name's zone data, in order: a record, or a fault marker.
type zoneEntry struct {
	rr       dns.RR
	timeout  bool
	servfail bool
}

// suiteZone turns the zone data into records with the semantics of pyspf's test driver
// (test/testspf.py), for which the suite was written:
//   - SPF entries are served as type SPF (99) and, when the name has no TXT entry at
//     all, also as TXT records appended after every other entry;
//   - "TXT: NONE" is no record, but still stops that copying;
//   - a list value of TXT or SPF is one record of several strings (RFC 7208 §3.3);
//   - TIMEOUT makes the server stay silent for the types that have no record before it
//     in the list; the others get the records listed before it;
//   - CNAMELOOP (added in the blitiri copy) is a CNAME of the name to itself.
func suiteZone(t *testing.T, data map[string][]yaml.Node) map[string][]zoneEntry {
	t.Helper()
	zone := map[string][]zoneEntry{}
	for name, nodes := range data {
		// Keys are in presentation form, as the server sees questions ("a b" is a\032b).
		fqdn, ok := resolver.FQDN(name)
		if !ok {
			t.Logf("zone %q: not a domain name, not served", name)
			continue
		}
		fqdn = strings.ToLower(fqdn)
		hdr := func(rrtype uint16) dns.RR_Header {
			return dns.RR_Header{Name: fqdn, Rrtype: rrtype, Class: dns.ClassINET, Ttl: 300}
		}
		var entries, copies []zoneEntry
		hasTXT := false
		for _, n := range nodes {
			if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
				t.Fatalf("zone %s: entry is not a one-key map (line %d)", name, n.Line)
			}
			typ, vals := n.Content[0].Value, scalars(n.Content[1])
			switch typ {
			case "A", "AAAA":
				for _, v := range vals {
					ip := net.ParseIP(v)
					if ip == nil {
						t.Fatalf("zone %s: bad %s %q", name, typ, v)
					}
					if typ == "A" {
						entries = append(entries, zoneEntry{rr: &dns.A{Hdr: hdr(dns.TypeA), A: ip.To4()}})
					} else {
						entries = append(entries, zoneEntry{rr: &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip}})
					}
				}
			case "MX":
				if len(vals) != 2 {
					t.Fatalf("zone %s: bad MX %v", name, vals)
				}
				var pref uint16
				for _, c := range vals[0] {
					pref = pref*10 + uint16(c-'0')
				}
				entries = append(entries, zoneEntry{rr: &dns.MX{Hdr: hdr(dns.TypeMX), Preference: pref, Mx: dns.Fqdn(vals[1])}})
			case "PTR":
				for _, v := range vals {
					entries = append(entries, zoneEntry{rr: &dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: dns.Fqdn(v)}})
				}
			case "CNAME":
				entries = append(entries, zoneEntry{rr: &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: dns.Fqdn(vals[0])}})
			case "CNAMELOOP":
				entries = append(entries, zoneEntry{rr: &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: fqdn}})
			case "TIMEOUT":
				entries = append(entries, zoneEntry{timeout: true})
			case "SERVFAIL":
				entries = append(entries, zoneEntry{servfail: true})
			case "TXT":
				hasTXT = true
				if len(vals) == 1 && vals[0] == "NONE" {
					continue
				}
				entries = append(entries, zoneEntry{rr: &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: txtStrings(vals)}})
			case "SPF":
				entries = append(entries, zoneEntry{rr: &dns.SPF{Hdr: hdr(dns.TypeSPF), Txt: txtStrings(vals)}})
				copies = append(copies, zoneEntry{rr: &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: txtStrings(vals)}})
			default:
				t.Fatalf("zone %s: unknown record type %q", name, typ)
			}
		}
		if !hasTXT {
			entries = append(entries, copies...)
		}
		zone[fqdn] = append(zone[fqdn], entries...)
	}
	return zone
}

// txtStrings writes raw strings in the presentation form miekg/dns packs: only the
// backslash is special; a string over 255 octets is split as a zone file would.
func txtStrings(vals []string) []string {
	out := []string{}
	for _, v := range vals {
		for len(v) > 255 {
			out = append(out, strings.ReplaceAll(v[:255], `\`, `\\`))
			v = v[255:]
		}
		out = append(out, strings.ReplaceAll(v, `\`, `\\`))
	}
	return out
}

// suiteHandler answers like a recursive server in front of the zone: it follows CNAMEs,
// answers NXDOMAIN for names absent from the zone data and NODATA for present names
// without the type, and truncates UDP answers to the client's EDNS0 size.
func suiteHandler(zone map[string][]zoneEntry) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(4096, false)
			size = int(opt.UDPSize())
		}
		name := strings.ToLower(q.Name)
		seen := map[string]bool{}
	chase:
		for !seen[name] {
			seen[name] = true
			entries, ok := zone[name]
			if !ok {
				m.Rcode = dns.RcodeNameError
				break
			}
			var target string
			found := false
			for _, e := range entries {
				switch {
				case e.timeout && !found:
					return // never answer
				case e.timeout:
					break chase
				case e.servfail:
					m.Answer = nil
					m.Rcode = dns.RcodeServerFailure
					break chase
				case e.rr.Header().Rrtype == q.Qtype:
					found = true
					m.Answer = append(m.Answer, e.rr)
				case e.rr.Header().Rrtype == dns.TypeCNAME && target == "":
					m.Answer = append(m.Answer, e.rr)
					target = strings.ToLower(e.rr.(*dns.CNAME).Target)
				}
			}
			if found || target == "" || q.Qtype == dns.TypeCNAME {
				break
			}
			name = target
		}
		if isUDP(w) {
			m.Truncate(size)
		}
		w.WriteMsg(m)
	}
}

func TestRFC7208Suite(t *testing.T) {
	suites := loadSuite(t, "testdata/rfc7208-tests.yml")
	doc, err := os.ReadFile("SPF-SUITE.md")
	if err != nil {
		t.Fatal(err)
	}
	var total, passed atomic.Int32
	t.Cleanup(func() {
		t.Logf("RFC 7208 suite: %d cases, %d pass", total.Load(), passed.Load())
		if want := fmt.Sprintf("**Result: %d cases, all pass.**", total.Load()); !t.Failed() && !strings.Contains(string(doc), want) {
			t.Errorf("SPF-SUITE.md does not say %q", want)
		}
	})
	seen := map[string]bool{}
	for _, s := range suites {
		zone := suiteZone(t, s.ZoneData)
		names := make([]string, 0, len(s.Tests))
		for name := range s.Tests {
			if seen[name] {
				t.Fatalf("case %s appears twice", name)
			}
			seen[name] = true
			names = append(names, name)
		}
		slices.Sort(names)
		t.Run(s.Description, func(t *testing.T) {
			t.Parallel()
			r := newResolver(t, suiteQueryTimeout, dnstest.Serve(t, suiteHandler(zone)))
			for _, name := range names {
				tc := s.Tests[name]
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					total.Add(1)
					ip, err := netip.ParseAddr(tc.Host)
					if err != nil {
						t.Fatalf("host %q: %v", tc.Host, err)
					}
					want := scalars(&tc.Result)
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					res, err := CheckHost(ctx, resolver.NewMemo(r), ip, tc.Helo, tc.MailFrom)
					if !slices.Contains(want, string(res)) {
						t.Errorf("got %s (%v), want %v; spec %v; %s", res, err, want, scalars(&tc.Spec), strings.TrimSpace(tc.Description))
						return
					}
					passed.Add(1)
				})
			}
		})
	}
}
