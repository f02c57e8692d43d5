package authz

import (
	"context"
	"testing"

	"relay/internal/dnstest"
	"relay/internal/policy"
)

const benchZone = `
example.org.       300 TXT "v=spf1 include:_spf.example.org -all"
_spf.example.org.  300 TXT "v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 -all"
gmail.example.     300 TXT "v=spf1 redirect=_spf.gmail.example"
_spf.gmail.example. 300 TXT "v=spf1 ip4:192.0.2.0/24 ~all"
`

// BenchmarkDecide is the whole sender decision (policy.Decide with this Authorizer) on a
// warm cache: a From whose SPF passes, and one that fails SPF and delegation and falls
// back (both checks answered from the cache).
func BenchmarkDecide(b *testing.B) {
	s := dnstest.New(b, benchZone+dkimZone(b))
	cfg := testConfig(s.Addr, ip4, ip6)
	a := New(cfg, newResolver(b, cfg.DNS.Timeout.Duration, s.Addr), testKeys(b)["ours"])
	ctx := context.Background()
	for _, bc := range []struct{ name, from string }{
		{"spf-pass", "alice@example.org"},
		{"fallback", "alice@gmail.example"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			in := policy.Input{From: bc.from}
			if _, err := policy.Decide(ctx, cfg, a, in); err != nil {
				b.Fatal(err)
			}
			queries := s.Total()
			b.ReportAllocs()
			for b.Loop() {
				policy.Decide(ctx, cfg, a, in)
			}
			if s.Total() != queries {
				b.Fatal("the cache was not warm")
			}
		})
	}
}

// BenchmarkSPFWarm is one SPF check answered from the cache.
func BenchmarkSPFWarm(b *testing.B) {
	s := dnstest.New(b, benchZone)
	a := newAuthorizer(b, testConfig(s.Addr, ip4, ip6))
	ctx := context.Background()
	a.SPF(ctx, "example.org")
	b.ReportAllocs()
	for b.Loop() {
		a.SPF(ctx, "example.org")
	}
}

// BenchmarkSPFCold is one SPF evaluation against the loopback DNS server: two sending
// IPs, a record with an include, so two queries (the IPs share them).
func BenchmarkSPFCold(b *testing.B) {
	s := dnstest.New(b, benchZone)
	a := newAuthorizer(b, testConfig(s.Addr, ip4, ip6))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		a.cache.drop(kindSPF)
		if !a.SPF(ctx, "example.org").OK {
			b.Fatal("not authorized")
		}
	}
	b.ReportMetric(float64(s.Total())/float64(b.N), "queries/op")
}

// BenchmarkDelegatedCold is one delegation check (a CNAME the server follows) against the
// loopback DNS server.
func BenchmarkDelegatedCold(b *testing.B) {
	s := dnstest.New(b, dkimZone(b))
	cfg := testConfig(s.Addr, ip4)
	a := New(cfg, newResolver(b, cfg.DNS.Timeout.Duration, s.Addr), testKeys(b)["ours"])
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		a.cache.drop(kindDKIM)
		if !a.Delegated(ctx, "cname.example").OK {
			b.Fatal("not delegated")
		}
	}
}
