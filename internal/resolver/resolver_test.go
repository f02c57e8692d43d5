package resolver

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"relay/internal/dnstest"
)

var _ spf.DNSResolver = (*Resolver)(nil)

const lookupZone = `
example.org.            300 TXT   "v=spf1 -all"
example.org.            300 TXT   "hello " "world"
example.org.            300 A     192.0.2.1
alias.example.org.      60  CNAME mid.example.org.
mid.example.org.        120 CNAME example.org.
dangling.example.org.   300 CNAME nowhere.example.org.
escaped.example.org.    300 TXT   "caf\195\169 \"quoted\" back\\slash"
mx.example.org.         300 MX    20 b.example.org.
mx.example.org.         300 MX    10 a.example.org.
10.2.0.192.in-addr.arpa. 300 PTR  mail.example.org.
`

func TestLookup(t *testing.T) {
	s := dnstest.New(t, lookupZone)
	r := newResolver(t, 2*time.Second, s.Addr)
	ctx := context.Background()
	tests := []struct {
		name     string
		qname    string
		qtype    uint16
		records  int
		ttl      uint32
		nxdomain bool
		cnames   []string
	}{
		{name: "records", qname: "example.org", qtype: dns.TypeTXT, records: 2, ttl: 300},
		{name: "final dot and case", qname: "EXAMPLE.org.", qtype: dns.TypeA, records: 1, ttl: 300},
		{name: "NODATA", qname: "example.org", qtype: dns.TypeAAAA},
		{name: "NXDOMAIN", qname: "nope.example.org", qtype: dns.TypeTXT, nxdomain: true},
		{name: "CNAME chain, smallest TTL", qname: "alias.example.org", qtype: dns.TypeA, records: 1, ttl: 60,
			cnames: []string{"mid.example.org", "example.org"}},
		{name: "CNAME to nothing", qname: "dangling.example.org", qtype: dns.TypeTXT, nxdomain: true, ttl: 300,
			cnames: []string{"nowhere.example.org"}},
		{name: "CNAME asked for", qname: "alias.example.org", qtype: dns.TypeCNAME, records: 1, ttl: 60},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ans, err := r.Lookup(ctx, tt.qname, tt.qtype)
			require.NoError(t, err)
			require.Len(t, ans.Records, tt.records)
			require.Equal(t, tt.ttl, ans.TTL)
			require.Equal(t, tt.nxdomain, ans.NXDomain)
			require.Equal(t, tt.cnames, ans.CNAMEs)
			require.Equal(t, s.Addr, ans.Server)
		})
	}
}

func TestLookupInvalidName(t *testing.T) {
	s := dnstest.New(t, lookupZone)
	r := newResolver(t, 2*time.Second, s.Addr)
	for _, name := range []string{"", ".", "a..example.org", ".example.org", strings.Repeat("a", 64) + ".example.org"} {
		_, err := r.Lookup(context.Background(), name, dns.TypeTXT)
		var d *net.DNSError
		require.ErrorAs(t, err, &d, name)
		require.True(t, d.IsNotFound, name)
	}
	require.Zero(t, s.Total(), "invalid names must not be sent")
}

func TestLookupMethods(t *testing.T) {
	s := dnstest.New(t, lookupZone)
	r := newResolver(t, 2*time.Second, s.Addr)
	ctx := context.Background()

	txts, err := r.LookupTXT(ctx, "example.org")
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"v=spf1 -all", "hello world"}, txts, "strings of one record are joined")

	txts, err = r.LookupTXT(ctx, "escaped.example.org")
	require.NoError(t, err)
	require.Equal(t, []string{`café "quoted" back\slash`}, txts, "presentation escapes are undone")

	_, err = r.LookupTXT(ctx, "nope.example.org")
	var d *net.DNSError
	require.ErrorAs(t, err, &d)
	require.True(t, d.IsNotFound)

	txts, err = r.LookupTXT(ctx, "mx.example.org")
	require.NoError(t, err, "NODATA is no error")
	require.Empty(t, txts)

	mxs, err := r.LookupMX(ctx, "mx.example.org")
	require.NoError(t, err)
	require.Equal(t, []*net.MX{{Host: "a.example.org.", Pref: 10}, {Host: "b.example.org.", Pref: 20}}, mxs)

	ips, err := r.LookupIPAddr(ctx, "alias.example.org")
	require.NoError(t, err)
	require.Len(t, ips, 1)
	require.Equal(t, "192.0.2.1", ips[0].IP.String())

	_, err = r.LookupIPAddr(ctx, "nope.example.org")
	require.ErrorAs(t, err, &d)
	require.True(t, d.IsNotFound)

	names, err := r.LookupAddr(ctx, "192.0.2.10")
	require.NoError(t, err)
	require.Equal(t, []string{"mail.example.org."}, names)
}

// authoritative answers like an authoritative server: only its own records, without
// following CNAMEs, with the SOA in negative answers.
func authoritative(records map[string][]dns.RR, queries *atomic.Int32) dns.HandlerFunc {
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 3600},
		Ns: "ns.example.org.", Mbox: "hostmaster.example.org.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 45}
	return func(w dns.ResponseWriter, r *dns.Msg) {
		queries.Add(1)
		q := r.Question[0]
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		rrs, ok := records[strings.ToLower(q.Name)]
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
		if len(m.Answer) == 0 {
			m.Ns = []dns.RR{soa}
			if !ok {
				m.Rcode = dns.RcodeNameError
			}
		}
		w.WriteMsg(m)
	}
}

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	require.NoError(t, err)
	return r
}

func TestLookupFollowsCNAMEsAcrossQueries(t *testing.T) {
	records := map[string][]dns.RR{
		"a.example.org.":     {rr(t, "a.example.org. 100 CNAME b.example.org.")},
		"b.example.org.":     {rr(t, "b.example.org. 50 CNAME c.example.org.")},
		"c.example.org.":     {rr(t, "c.example.org. 300 TXT \"end\"")},
		"loop1.example.org.": {rr(t, "loop1.example.org. 300 CNAME loop2.example.org.")},
		"loop2.example.org.": {rr(t, "loop2.example.org. 300 CNAME loop1.example.org.")},
		"gone.example.org.":  {rr(t, "gone.example.org. 300 CNAME missing.example.org.")},
		"empty.example.org.": {rr(t, "empty.example.org. 300 CNAME c.example.org.")},
	}
	for i := range maxCNAMEs + 1 {
		name := "long" + string(rune('a'+i)) + ".example.org."
		records[name] = []dns.RR{rr(t, name+" 300 CNAME long"+string(rune('a'+i+1))+".example.org.")}
	}
	var queries atomic.Int32
	r := newResolver(t, 2*time.Second, dnstest.Serve(t, authoritative(records, &queries)))
	ctx := context.Background()

	ans, err := r.Lookup(ctx, "a.example.org", dns.TypeTXT)
	require.NoError(t, err)
	require.Equal(t, []string{"b.example.org", "c.example.org"}, ans.CNAMEs)
	require.Len(t, ans.Records, 1)
	require.Equal(t, uint32(50), ans.TTL)
	require.Equal(t, int32(3), queries.Load(), "one query per name of the chain")

	ans, err = r.Lookup(ctx, "gone.example.org", dns.TypeTXT)
	require.NoError(t, err)
	require.True(t, ans.NXDomain, "NXDOMAIN of the chain's end")
	require.Equal(t, uint32(45), ans.TTL, "negative TTL: SOA MINIMUM (RFC 2308)")

	ans, err = r.Lookup(ctx, "empty.example.org", dns.TypeA)
	require.NoError(t, err)
	require.False(t, ans.NXDomain, "NODATA at the chain's end")
	require.Empty(t, ans.Records)

	_, err = r.Lookup(ctx, "loop1.example.org", dns.TypeTXT)
	var d *net.DNSError
	require.ErrorAs(t, err, &d)
	require.Equal(t, "CNAME loop", d.Err)
	require.False(t, d.Temporary())

	_, err = r.Lookup(ctx, "longa.example.org", dns.TypeTXT)
	require.ErrorAs(t, err, &d)
	require.Contains(t, d.Err, "more than 8 CNAMEs")
}

func TestLookupTruncatedRetriesOverTCP(t *testing.T) {
	var zone strings.Builder
	for i := range 12 {
		zone.WriteString("big.example.org. 300 TXT \"" + strings.Repeat(string(rune('a'+i)), 200) + "\"\n")
	}
	zone.WriteString("small.example.org. 300 TXT \"small\"\n")
	s := dnstest.New(t, zone.String())
	r := newResolver(t, 2*time.Second, s.Addr)

	ans, err := r.Lookup(context.Background(), "big.example.org", dns.TypeTXT)
	require.NoError(t, err)
	require.Len(t, ans.Records, 12, "a 2.5 kB answer does not fit in %d bytes of UDP", ednsSize)

	s.SetTruncate(true)
	ans, err = r.Lookup(context.Background(), "small.example.org", dns.TypeTXT)
	require.NoError(t, err)
	require.Len(t, ans.Records, 1, "TC set: the records come over TCP")
}

func TestLookupSendsEDNS0(t *testing.T) {
	var mu sync.Mutex
	var sizes []uint16
	var tcp int
	big := strings.Repeat("x", 250)
	addr := dnstest.Serve(t, func(w dns.ResponseWriter, r *dns.Msg) {
		mu.Lock()
		if opt := r.IsEdns0(); opt != nil {
			sizes = append(sizes, opt.UDPSize())
		} else {
			sizes = append(sizes, 0)
		}
		if !isUDP(w) {
			tcp++
		}
		mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		for range 3 { // ~800 bytes: over 512, under 1232
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{big}})
		}
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), false)
			m.Truncate(int(opt.UDPSize()))
		} else {
			m.Truncate(dns.MinMsgSize)
		}
		w.WriteMsg(m)
	})
	r := newResolver(t, 2*time.Second, addr)
	ans, err := r.Lookup(context.Background(), "example.org", dns.TypeTXT)
	require.NoError(t, err)
	require.Len(t, ans.Records, 3)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []uint16{ednsSize}, sizes, "one query, advertising %d bytes", ednsSize)
	require.Zero(t, tcp, "an 800-byte answer fits in EDNS0 UDP")
}

func TestLookupRotatesServers(t *testing.T) {
	dead := dnstest.New(t, "")
	dead.SetSilent(true)
	broken := dnstest.New(t, "example.org. 300 TXT \"x\"")
	broken.SetServFail("example.org", true)
	good := dnstest.New(t, "example.org. 300 TXT \"v=spf1 -all\"")
	r := newResolver(t, 200*time.Millisecond, dead.Addr, broken.Addr, good.Addr)
	ctx := context.Background()

	ans, err := r.Lookup(ctx, "example.org", dns.TypeTXT)
	require.NoError(t, err)
	require.Equal(t, good.Addr, ans.Server)
	require.Equal(t, 1, dead.Total())
	require.Equal(t, 1, broken.Total())

	// The server that answered is asked first from now on.
	for range 3 {
		ans, err = r.Lookup(ctx, "example.org", dns.TypeTXT)
		require.NoError(t, err)
		require.Equal(t, good.Addr, ans.Server)
	}
	require.Equal(t, 1, dead.Total())
	require.Equal(t, 1, broken.Total())
	require.Equal(t, 4, good.Total())
}

func TestLookupErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("timeout", func(t *testing.T) {
		s := dnstest.New(t, "")
		s.SetSilent(true)
		r := newResolver(t, 100*time.Millisecond, s.Addr)
		_, err := r.Lookup(ctx, "example.org", dns.TypeTXT)
		var d *net.DNSError
		require.ErrorAs(t, err, &d)
		require.True(t, d.IsTimeout)
		require.Equal(t, "example.org", d.Name)
		require.Equal(t, s.Addr, d.Server)
	})
	t.Run("context deadline shorter than the query timeout", func(t *testing.T) {
		s := dnstest.New(t, "")
		s.SetSilent(true)
		r := newResolver(t, time.Minute, s.Addr)
		ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := r.Lookup(ctx, "example.org", dns.TypeTXT)
		var d *net.DNSError
		require.ErrorAs(t, err, &d)
		require.True(t, d.IsTimeout)
		require.Less(t, time.Since(start), 30*time.Second, "the context's deadline bounds the query")
	})
	t.Run("SERVFAIL", func(t *testing.T) {
		s := dnstest.New(t, "example.org. 300 TXT \"x\"")
		s.SetServFail("example.org", true)
		r := newResolver(t, time.Second, s.Addr)
		_, err := r.Lookup(ctx, "example.org", dns.TypeTXT)
		var d *net.DNSError
		require.ErrorAs(t, err, &d)
		require.True(t, d.IsTemporary)
		require.Equal(t, "SERVFAIL", d.Err)
	})
	t.Run("connection refused", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := pc.LocalAddr().String()
		pc.Close()
		r := newResolver(t, time.Second, addr)
		_, err = r.Lookup(ctx, "example.org", dns.TypeTXT)
		var d *net.DNSError
		require.ErrorAs(t, err, &d)
		require.True(t, d.Temporary())
	})
}

func TestNew(t *testing.T) {
	r, err := New([]string{"127.0.0.1", "::1", "192.0.2.1:5353", "[2001:db8::1]:53"}, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"127.0.0.1:53", "[::1]:53", "192.0.2.1:5353", "[2001:db8::1]:53"}, r.Servers())
	require.Equal(t, DefaultQueryTimeout, r.timeout)

	r, err = New(nil, time.Second)
	if err != nil {
		t.Skipf("no usable /etc/resolv.conf here: %v", err)
	}
	require.NotEmpty(t, r.Servers(), "servers from /etc/resolv.conf")
}

func FuzzTXTString(f *testing.F) {
	f.Add([]byte(`v=spf1 ip4:192.0.2.1 -all`))
	f.Add([]byte("caf\xc3\xa9 \"q\" \\ \x00\x7f"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 255 {
			raw = raw[:255]
		}
		// What a server sends is raw octets; miekg/dns hands them out escaped and
		// txtString must give the octets back.
		rec := &dns.TXT{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{strings.ReplaceAll(string(raw), `\`, `\\`)}}
		buf := make([]byte, 1024)
		off, err := dns.PackRR(rec, buf, 0, nil, false)
		if err != nil {
			t.Skip()
		}
		got, _, err := dns.UnpackRR(buf[:off], 0)
		require.NoError(t, err)
		require.Equal(t, string(raw), txtString(got.(*dns.TXT).Txt))
	})
}

func FuzzFQDN(f *testing.F) {
	f.Add("example.org")
	f.Add("macro%percent  space%20url-space.example.com")
	f.Add("a\\b.example.org.")
	f.Fuzz(func(t *testing.T, name string) {
		pres, ok := FQDN(name)
		if !ok {
			return
		}
		// The presentation form must be packable, and textName must give back the name.
		_, err := dns.PackDomainName(pres, make([]byte, 256), 0, nil, false)
		require.NoError(t, err)
		require.Equal(t, strings.TrimSuffix(name, "."), strings.TrimSuffix(textName(pres), "."))
	})
}
