// Package resolver owns the relay's DNS lookups, a stub resolver on miekg/dns (servers in
// turn, timeouts, TCP fallback, CNAME chains, the TTL of every record used, failures told
// temporary from permanent), and never interprets what the records say, keeps an answer
// beyond one Memo, or logs.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

const (
	// ednsSize is the UDP payload size we advertise: the DNS Flag Day 2020 value, which
	// avoids IP fragmentation on every common path.
	ednsSize = 1232
	// maxCNAMEs bounds CNAME chasing. RFC 1034 §3.6.2 asks resolvers to detect loops; a
	// bound also stops long chains that exist only to make us do work.
	maxCNAMEs = 8
	// DefaultQueryTimeout applies when New is given 0 ([dns] timeout default).
	DefaultQueryTimeout = 2 * time.Second
)

// Resolver is a stub resolver: it sends recursive queries to the configured servers over
// UDP with EDNS0, retries over TCP when an answer is truncated, moves to the next server
// when one fails, follows CNAME chains, tells NXDOMAIN from NODATA and reports the
// smallest TTL of the records it used. It is safe for concurrent use.
//
// Every lookup error is a *net.DNSError, never wrapped: the SPF library inspects
// IsNotFound, IsTimeout and IsTemporary with a type assertion.
type Resolver struct {
	servers []string // host:port
	timeout time.Duration
	udp     *dns.Client
	tcp     *dns.Client

	// preferred is the index of the server that answered last: a server that failed is
	// not asked first again until another one fails in turn.
	preferred atomic.Uint32
}

// Answer is the outcome of one Lookup.
type Answer struct {
	// Records are the records of the asked type owned by the last name of the CNAME
	// chain (the asked name when there is none).
	Records []dns.RR
	// TTL is the smallest TTL of every record used, CNAMEs included. For NXDOMAIN and
	// NODATA it is the negative-caching TTL of RFC 2308 §5 (min of the SOA TTL and its
	// MINIMUM field), or 0 when the server gave no SOA.
	TTL uint32
	// NXDomain is set when the (last) name does not exist (RCODE 3; RFC 6604 §3 says the
	// RCODE of a chained answer is about the last name). Records is then empty; an empty
	// Records without NXDomain is NODATA.
	NXDomain bool
	// CNAMEs are the targets followed, in order, without the final dot.
	CNAMEs []string
	// Server is the server that gave the final answer.
	Server string
}

// New returns a resolver that asks servers (host:port; a bare host gets port
// 53) in turn, each query waiting at most timeout (0: DefaultQueryTimeout). With no
// servers it uses the nameservers of /etc/resolv.conf.
func New(servers []string, timeout time.Duration) (*Resolver, error) {
	if len(servers) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("dns servers: %w", err)
		}
		for _, s := range cc.Servers {
			servers = append(servers, net.JoinHostPort(s, cc.Port))
		}
		if len(servers) == 0 {
			return nil, errors.New("dns servers: /etc/resolv.conf lists no nameserver")
		}
	}
	r := &Resolver{timeout: timeout}
	if r.timeout <= 0 {
		r.timeout = DefaultQueryTimeout
	}
	for _, s := range servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			if net.ParseIP(s) == nil && strings.Contains(s, ":") {
				return nil, fmt.Errorf("dns server %q: %w", s, err)
			}
			s = net.JoinHostPort(s, "53")
		}
		r.servers = append(r.servers, s)
	}
	r.udp = &dns.Client{Net: "udp", UDPSize: ednsSize, Timeout: r.timeout}
	r.tcp = &dns.Client{Net: "tcp", Timeout: r.timeout}
	return r, nil
}

// Servers returns the servers the resolver asks, in configured order.
func (r *Resolver) Servers() []string { return append([]string(nil), r.servers...) }

// Lookup resolves name (with or without the final dot) for qtype, following CNAMEs. A
// name that does not exist is not an error: Answer.NXDomain says so. Errors are
// *net.DNSError: IsTimeout for timeouts (per query, or ctx's deadline), IsTemporary for
// SERVFAIL, REFUSED and network faults, IsNotFound for a name that is not a valid domain
// name (RFC 7208 §4.3 treats those as nonexistent), neither for a CNAME loop or a chain
// longer than 8.
func (r *Resolver) Lookup(ctx context.Context, name string, qtype uint16) (Answer, error) {
	fqdn, ok := FQDN(name)
	if !ok {
		return Answer{}, &net.DNSError{Err: "invalid domain name", Name: name, IsNotFound: true}
	}
	ans := Answer{TTL: math.MaxUint32}
	cur := fqdn
	var chain []string // the targets followed, in presentation form
	for {
		msg, server, err := r.exchange(ctx, cur, qtype)
		if err != nil {
			err.Name = textName(strings.TrimSuffix(cur, "."))
			return Answer{}, err
		}
		ans.Server = server
		asked := cur
		// Walk the chain inside this answer: a recursive server returns the CNAMEs it
		// followed, then the data of the last name.
		for qtype != dns.TypeCNAME && !hasData(msg, cur, qtype) {
			target, ttl, found := cname(msg, cur)
			if !found {
				break
			}
			if len(ans.CNAMEs) == maxCNAMEs || strings.EqualFold(target, fqdn) || containsFold(chain, target) {
				kind := "CNAME loop"
				if len(ans.CNAMEs) == maxCNAMEs {
					kind = fmt.Sprintf("more than %d CNAMEs", maxCNAMEs)
				}
				return Answer{}, &net.DNSError{Err: kind, Name: strings.TrimSuffix(name, "."), Server: server}
			}
			ans.TTL = min(ans.TTL, ttl)
			chain = append(chain, target)
			ans.CNAMEs = append(ans.CNAMEs, textName(strings.TrimSuffix(target, ".")))
			cur = target
		}
		for _, rr := range msg.Answer {
			h := rr.Header()
			if h.Rrtype == qtype && h.Class == dns.ClassINET && strings.EqualFold(h.Name, cur) {
				ans.Records = append(ans.Records, rr)
				ans.TTL = min(ans.TTL, h.Ttl)
			}
		}
		if len(ans.Records) > 0 {
			break
		}
		soaTTL, hasSOA := negativeTTL(msg)
		if msg.Rcode == dns.RcodeNameError {
			ans.NXDomain = true
		} else if cur != asked && !hasSOA {
			// The chain left the server's data without saying what is at its end (an
			// authoritative server answers only for its zones): ask for the target.
			continue
		}
		if hasSOA {
			ans.TTL = min(ans.TTL, soaTTL)
		}
		break
	}
	if ans.TTL == math.MaxUint32 {
		ans.TTL = 0
	}
	return ans, nil
}

// FQDN returns name, taken as text (every octet literal, no escapes), as a fully
// qualified name in miekg/dns presentation form when it is a valid domain name: at least
// one label, no empty label, labels of at most 63 and names of at most 255 octets.
//
// Names reach Lookup as text because the SPF library builds them from records and
// macros (%_ makes a space); answers come back in presentation form (\032), so both
// sides must be in that form to be compared.
func FQDN(name string) (string, bool) {
	if name == "" || name == "." || name[0] == '.' {
		return "", false
	}
	plain := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			plain = false
			break
		}
	}
	if plain {
		if _, ok := dns.IsDomainName(name); !ok {
			return "", false
		}
		return dns.Fqdn(name), true
	}
	// Let miekg/dns write the presentation form: a wire round trip escapes exactly as
	// its answers do.
	var buf [256]byte
	off, err := dns.PackDomainName(dns.Fqdn(strings.ReplaceAll(name, `\`, `\\`)), buf[:], 0, nil, false)
	if err != nil {
		return "", false
	}
	pres, _, err := dns.UnpackDomainName(buf[:off], 0)
	if err != nil || pres == "." {
		return "", false
	}
	return pres, true
}

// textName is the inverse of FQDN: a presentation-form name from an answer, as text
// without the escapes, for callers that hand it back to Lookup (the SPF library).
func textName(name string) string {
	if !strings.Contains(name, `\`) {
		return name
	}
	var b strings.Builder
	unescape(&b, name)
	return b.String()
}

func hasData(msg *dns.Msg, name string, qtype uint16) bool {
	for _, rr := range msg.Answer {
		h := rr.Header()
		if h.Rrtype == qtype && strings.EqualFold(h.Name, name) {
			return true
		}
	}
	return false
}

func cname(msg *dns.Msg, name string) (target string, ttl uint32, ok bool) {
	for _, rr := range msg.Answer {
		if c, isC := rr.(*dns.CNAME); isC && strings.EqualFold(c.Hdr.Name, name) {
			return c.Target, c.Hdr.Ttl, true
		}
	}
	return "", 0, false
}

// negativeTTL is how long a negative answer may be cached (RFC 2308 §5).
func negativeTTL(msg *dns.Msg) (uint32, bool) {
	for _, rr := range msg.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl), true
		}
	}
	return 0, false
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// exchange asks the servers in turn, starting with the preferred one, until one gives a
// usable answer (NOERROR or NXDOMAIN for the question asked).
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, string, *net.DNSError) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(ednsSize, false)

	n := uint32(len(r.servers))
	start := r.preferred.Load()
	var last *net.DNSError
	for i := range n {
		if err := ctx.Err(); err != nil {
			return nil, "", ctxError(err, last)
		}
		idx := (start + i) % n
		server := r.servers[idx]
		resp, err := r.exchangeOne(ctx, m, server)
		if err == nil {
			if i > 0 {
				r.preferred.CompareAndSwap(start, idx)
			}
			return resp, server, nil
		}
		err.Server = server
		last = err
	}
	return nil, "", last
}

// exchangeOne is one question to one server: UDP, then TCP when the answer is truncated
// (RFC 7766 §5), then once more without EDNS0 when the server does not understand it
// (RFC 6891 §7).
func (r *Resolver) exchangeOne(ctx context.Context, m *dns.Msg, server string) (*dns.Msg, *net.DNSError) {
	qctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	resp, _, err := r.udp.ExchangeContext(qctx, m, server)
	if err == nil && resp.Truncated {
		resp, _, err = r.tcp.ExchangeContext(qctx, m, server)
	}
	if err == nil && resp.Rcode == dns.RcodeFormatError && m.IsEdns0() != nil {
		plain := m.Copy()
		plain.Extra = nil
		resp, _, err = r.udp.ExchangeContext(qctx, plain, server)
		if err == nil && resp.Truncated {
			resp, _, err = r.tcp.ExchangeContext(qctx, plain, server)
		}
	}
	if err != nil {
		if qctx.Err() != nil || isTimeout(err) {
			return nil, &net.DNSError{Err: "timeout", IsTimeout: true}
		}
		return nil, &net.DNSError{Err: err.Error(), IsTemporary: true}
	}
	q := m.Question[0]
	if len(resp.Question) != 1 || resp.Question[0].Qtype != q.Qtype || !strings.EqualFold(resp.Question[0].Name, q.Name) {
		return nil, &net.DNSError{Err: "answer does not match the question", IsTemporary: true}
	}
	switch resp.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return resp, nil
	default:
		return nil, &net.DNSError{Err: dns.RcodeToString[resp.Rcode], IsTemporary: true}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ctxError turns the end of the caller's context into a DNS error: a deadline is a
// timeout (SPF temperror), as is a cancellation, since either way no answer came.
func ctxError(err error, last *net.DNSError) *net.DNSError {
	if last != nil && !last.IsTimeout {
		return last
	}
	if errors.Is(err, context.Canceled) {
		return &net.DNSError{Err: "canceled", IsTimeout: true}
	}
	return &net.DNSError{Err: "timeout", IsTimeout: true}
}
