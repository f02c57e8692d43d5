package resolver

import (
	"cmp"
	"context"
	"net"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Querier is what the record lookups below ask: a *Resolver, or a *Memo in front of one.
type Querier interface {
	Lookup(ctx context.Context, name string, qtype uint16) (Answer, error)
}

// The methods below give *Resolver the method set of *net.Resolver that
// blitiri.com.ar/go/spf asks of its DNSResolver, for callers that want plain lookups.
// The SPF check itself goes through package spf's view of a Querier instead, which
// checks every SPF record before the library reads it.

// LookupTXT returns the TXT records of name, the strings of each record joined without
// separator (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return TXT(ctx, r, name)
}

// LookupMX returns the MX records of name, by preference.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return MX(ctx, r, name)
}

// LookupIPAddr returns the A and AAAA records of host.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return IP(ctx, r, host, true, true)
}

// LookupAddr returns the PTR names of addr (an IP address), fully qualified.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return PTR(ctx, r, addr)
}

// notFound is how net.Resolver reports NXDOMAIN; the SPF library counts it as a void
// lookup and, for the SPF record itself, as result "none".
func notFound(name string) error {
	return &net.DNSError{Err: "no such host", Name: strings.TrimSuffix(name, "."), IsNotFound: true}
}

// TXT asks q for the TXT records of name and returns their text (Answer.TXT). NXDOMAIN
// is a *net.DNSError with IsNotFound, as net.Resolver reports it; NODATA is no record
// and no error.
func TXT(ctx context.Context, q Querier, name string) ([]string, error) {
	ans, err := q.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	if ans.NXDomain {
		return nil, notFound(name)
	}
	return ans.TXT(), nil
}

// TXT is the text of each TXT record of the answer: its character-strings joined without
// separator (RFC 7208 §3.3, RFC 6376 §3.6.2.2), presentation escapes undone.
func (a Answer) TXT() []string {
	txts := make([]string, 0, len(a.Records))
	for _, rr := range a.Records {
		if t, ok := rr.(*dns.TXT); ok {
			txts = append(txts, txtString(t.Txt))
		}
	}
	return txts
}

// MX asks q for the MX records of name and returns them by preference, the hosts as text
// (fully qualified). NXDOMAIN is as for TXT.
func MX(ctx context.Context, q Querier, name string) ([]*net.MX, error) {
	ans, err := q.Lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	if ans.NXDomain {
		return nil, notFound(name)
	}
	mxs := make([]*net.MX, 0, len(ans.Records))
	for _, rr := range ans.Records {
		mx := rr.(*dns.MX)
		mxs = append(mxs, &net.MX{Host: textName(mx.Mx), Pref: mx.Preference})
	}
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return cmp.Compare(a.Pref, b.Pref) })
	return mxs, nil
}

// IP asks q for the A records of host when v4 and its AAAA records when v6, both at
// once. RFC 7208 §5.3-5.5 makes the type of the checked IP choose the record type, except
// that "exists" always asks for A; package spf asks for the right set for each IP.
//
// Errors are strict: when one query fails temporarily the lookup fails even if the
// other one gave addresses. Returning the partial list instead (as net.Resolver does)
// could skip a "-a" and let a later "+all" pass. NXDOMAIN (of every type asked) is as
// for TXT.
func IP(ctx context.Context, q Querier, host string, v4, v6 bool) ([]net.IPAddr, error) {
	var a4, a6 Answer
	var e4, e6 error
	switch {
	case v4 && v6:
		var wg sync.WaitGroup
		wg.Go(func() { a6, e6 = q.Lookup(ctx, host, dns.TypeAAAA) })
		a4, e4 = q.Lookup(ctx, host, dns.TypeA)
		wg.Wait()
	case v4:
		a4, e4 = q.Lookup(ctx, host, dns.TypeA)
	default:
		a6, e6 = q.Lookup(ctx, host, dns.TypeAAAA)
	}
	for _, err := range []error{e4, e6} {
		if d, ok := err.(*net.DNSError); ok && d.Temporary() {
			return nil, err
		}
	}
	if e4 != nil {
		return nil, e4
	}
	if e6 != nil {
		return nil, e6
	}
	ips := make([]net.IPAddr, 0, len(a4.Records)+len(a6.Records))
	for _, rr := range a4.Records {
		ips = append(ips, net.IPAddr{IP: rr.(*dns.A).A})
	}
	for _, rr := range a6.Records {
		ips = append(ips, net.IPAddr{IP: rr.(*dns.AAAA).AAAA})
	}
	if len(ips) == 0 && (a4.NXDomain || !v4) && (a6.NXDomain || !v6) {
		return nil, notFound(host)
	}
	return ips, nil
}

// PTR asks q for the PTR records of addr (an IP address) and returns the names, as text
// (fully qualified). NXDOMAIN is as for TXT.
func PTR(ctx context.Context, q Querier, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	ans, err := q.Lookup(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	if ans.NXDomain {
		return nil, notFound(rev)
	}
	names := make([]string, 0, len(ans.Records))
	for _, rr := range ans.Records {
		names = append(names, textName(rr.(*dns.PTR).Ptr))
	}
	return names, nil
}

// txtString joins the character-strings of one TXT record. miekg/dns hands them out in
// presentation form (\" \\ and \DDD escapes); SPF and DKIM want the octets.
func txtString(parts []string) string {
	if len(parts) == 1 && !strings.Contains(parts[0], `\`) {
		return parts[0]
	}
	var b strings.Builder
	for _, p := range parts {
		unescape(&b, p)
	}
	return b.String()
}

func unescape(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			v := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if v <= 255 {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i+1])
		i++
	}
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
