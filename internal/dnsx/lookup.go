package dnsx

import (
	"cmp"
	"context"
	"net"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// The methods below make *Resolver a blitiri.com.ar/go/spf DNSResolver (the method set
// of *net.Resolver). The SPF checks of the Authorizer go through an evaluation instead,
// which adds TTL tracking, shares lookups between the IPs of one check and checks every
// SPF record with ParseSPF before the library reads it (view, in evaluation.go).

// LookupTXT returns the TXT records of name, the strings of each record joined without
// separator (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return lookupTXT(ctx, r.Lookup, name)
}

// LookupMX returns the MX records of name, by preference.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return lookupMX(ctx, r.Lookup, name)
}

// LookupIPAddr returns the A and AAAA records of host.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return lookupIP(ctx, r.Lookup, host, true, true)
}

// LookupAddr returns the PTR names of addr (an IP address), fully qualified.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return lookupAddr(ctx, r.Lookup, addr)
}

type lookupFunc func(ctx context.Context, name string, qtype uint16) (Answer, error)

// notFound is how net.Resolver reports NXDOMAIN; the SPF library counts it as a void
// lookup and, for the SPF record itself, as result "none".
func notFound(name string) error {
	return &net.DNSError{Err: "no such host", Name: strings.TrimSuffix(name, "."), IsNotFound: true}
}

func lookupTXT(ctx context.Context, q lookupFunc, name string) ([]string, error) {
	ans, err := q(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	if ans.NXDomain {
		return nil, notFound(name)
	}
	txts := make([]string, 0, len(ans.Records))
	for _, rr := range ans.Records {
		txts = append(txts, txtString(rr.(*dns.TXT).Txt))
	}
	return txts, nil
}

func lookupMX(ctx context.Context, q lookupFunc, name string) ([]*net.MX, error) {
	ans, err := q(ctx, name, dns.TypeMX)
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

// lookupIP asks for A and/or AAAA records. RFC 7208 §5.3-5.5 makes the type of the
// checked IP choose the record type, except that "exists" always asks for A; see
// evaluation.view for how each IP gets the right set. Both queries run at once.
//
// Errors are strict: when one query fails temporarily the lookup fails even if the
// other one gave addresses. Returning the partial list instead (as net.Resolver does)
// could skip a "-a" and let a later "+all" pass.
func lookupIP(ctx context.Context, q lookupFunc, host string, v4, v6 bool) ([]net.IPAddr, error) {
	var a4, a6 Answer
	var e4, e6 error
	switch {
	case v4 && v6:
		var wg sync.WaitGroup
		wg.Go(func() { a6, e6 = q(ctx, host, dns.TypeAAAA) })
		a4, e4 = q(ctx, host, dns.TypeA)
		wg.Wait()
	case v4:
		a4, e4 = q(ctx, host, dns.TypeA)
	default:
		a6, e6 = q(ctx, host, dns.TypeAAAA)
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

func lookupAddr(ctx context.Context, q lookupFunc, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	ans, err := q(ctx, rev, dns.TypePTR)
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
