package authz

import (
	"context"
	"crypto/ed25519"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/dnstest"
	"relay/internal/policy"
)

const cacheZone = `
unknown.example.       300 TXT "v=spf1 include:_spf.unknown.example -all"
_spf.unknown.example.  120 TXT "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all"
short.example.         5   TXT "v=spf1 ip4:203.0.113.10 -all"
long.example.          86400 TXT "v=spf1 ip4:203.0.113.10 -all"
a.example.             300 TXT "v=spf1 -all"
b.example.             300 TXT "v=spf1 -all"
c.example.             300 TXT "v=spf1 -all"
`

func cachedAuthorizer(t *testing.T, s *dnstest.Server) (*Authorizer, *fakeClock) {
	t.Helper()
	a := newAuthorizer(t, testConfig(s.Addr, ip4, ip6))
	clock := newClock()
	a.Clock = clock.Now
	return a, clock
}

// 1,000 concurrent checks of one unknown domain make one evaluation; within the TTL
// (the smallest of the records consulted: 120 s) no more; after it, one again.
func TestCacheSharesOneEvaluation(t *testing.T) {
	s := dnstest.New(t, cacheZone)
	a, clock := cachedAuthorizer(t, s)
	ctx := context.Background()

	const n = 1000
	var wg sync.WaitGroup
	results := make([]policy.Check, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			results[i] = a.SPF(ctx, "unknown.example")
		})
	}
	close(start)
	wg.Wait()
	want := policy.Check{OK: true, Detail: "spf pass for 203.0.113.10, 2001:db8::10"}
	for _, c := range results {
		require.Equal(t, want, c)
	}
	require.Equal(t, 1, s.Queries("unknown.example", 0))
	require.Equal(t, 1, s.Queries("_spf.unknown.example", 0))
	require.Equal(t, 2, s.Total(), "one evaluation: one query per name")
	require.Equal(t, uint64(1), a.Stats().Evaluations)

	clock.Advance(119 * time.Second)
	require.Equal(t, want, a.SPF(ctx, "unknown.example"))
	require.Equal(t, 2, s.Total(), "within the TTL: no query")

	clock.Advance(time.Second)
	require.Equal(t, want, a.SPF(ctx, "unknown.example"))
	require.Equal(t, 4, s.Total(), "after the TTL: one evaluation again")
	require.Equal(t, Stats{Checks: n + 2, Evaluations: 2}, a.Stats())
}

func TestCacheLifetime(t *testing.T) {
	tests := []struct {
		name     string
		domain   string
		servfail bool
		life     time.Duration
	}{
		{name: "TTL under cache_min_ttl", domain: "short.example", life: time.Minute},
		{name: "TTL over cache_max_ttl", domain: "long.example", life: time.Hour},
		{name: "NXDOMAIN without SOA", domain: "nothing.example", life: time.Minute},
		{name: "temperror", domain: "long.example", servfail: true, life: time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dnstest.New(t, cacheZone)
			s.SetServFail(tt.domain, tt.servfail)
			a, clock := cachedAuthorizer(t, s)
			ctx := context.Background()
			first := a.SPF(ctx, tt.domain)
			require.Equal(t, tt.servfail, first.Temporary)
			queries := s.Total()
			require.NotZero(t, queries)

			clock.Advance(tt.life - time.Second)
			require.Equal(t, first, a.SPF(ctx, tt.domain))
			require.Equal(t, queries, s.Total(), "still cached")

			clock.Advance(time.Second)
			a.SPF(ctx, tt.domain)
			require.Equal(t, 2*queries, s.Total(), "expired after %v", tt.life)
		})
	}
}

func TestCacheDelegation(t *testing.T) {
	s := dnstest.New(t, dkimZone(t))
	cfg := testConfig(s.Addr, ip4)
	a := New(cfg, newResolver(t, cfg.DNS.Timeout.Duration, s.Addr), testKeys(t)["ours"])
	clock := newClock()
	a.Clock = clock.Now
	ctx := context.Background()
	require.True(t, a.Delegated(ctx, "cname.example").OK)
	require.Equal(t, 1, s.Total(), "the server follows the CNAME: one query")
	clock.Advance(299 * time.Second)
	require.True(t, a.Delegated(ctx, "cname.example").OK)
	require.Equal(t, 1, s.Total())
	clock.Advance(time.Second)
	require.True(t, a.Delegated(ctx, "cname.example").OK)
	require.Equal(t, 2, s.Total())
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	s := dnstest.New(t, cacheZone)
	a, _ := cachedAuthorizer(t, s)
	a.cache = newCache(2)
	ctx := context.Background()
	a.SPF(ctx, "a.example")
	a.SPF(ctx, "b.example")
	a.SPF(ctx, "a.example") // a is now the most recently used
	a.SPF(ctx, "c.example") // evicts b
	require.Equal(t, 2, a.cache.len())
	require.Equal(t, 3, s.Total())
	a.SPF(ctx, "a.example")
	require.Equal(t, 3, s.Total(), "a stayed")
	a.SPF(ctx, "b.example")
	require.Equal(t, 4, s.Total(), "b was evicted")
}

// A caller that gives up does not cancel the evaluation the others share: its result is
// cached for them.
func TestCacheCallerGivesUp(t *testing.T) {
	s := dnstest.New(t, cacheZone)
	a, _ := cachedAuthorizer(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// The caller gets the timeout, or the result if the evaluation won the race.
	if c := a.SPF(ctx, "unknown.example"); !c.OK {
		require.Equal(t, policy.Check{Temporary: true, Detail: "spf temperror: timeout"}, c)
	}
	require.True(t, a.SPF(context.Background(), "unknown.example").OK)
	require.Equal(t, uint64(1), a.Stats().Evaluations)
}

func TestReload(t *testing.T) {
	s := dnstest.New(t, cacheZone+dkimZone(t))
	other := dnstest.New(t, cacheZone+dkimZone(t))
	ctx := context.Background()
	ours := testKeys(t)["ours"]
	cfg := testConfig(s.Addr, ip4, ip6)
	a := New(cfg, newResolver(t, cfg.DNS.Timeout.Duration, s.Addr), ours)
	warm := func() {
		a.SPF(ctx, "unknown.example")
		a.Delegated(ctx, "cname.example")
	}
	warm()
	require.Equal(t, 3, s.Total())

	// Unrelated changes keep the cache; so does the same key as a private key.
	cfg2 := testConfig(s.Addr, ip4, ip6)
	cfg2.Sender.Fallback = "other@relay.example.net"
	cfg2.DKIM.Headers = []string{"From"}
	priv := ed25519.NewKeyFromSeed(append([]byte{1}, make([]byte, ed25519.SeedSize-1)...))
	require.NoError(t, a.Reload(cfg2, priv))
	warm()
	require.Equal(t, 3, s.Total(), "cache kept")

	// [spf] changed: SPF results go, delegation results stay.
	cfg3 := testConfig(s.Addr, ip4)
	require.NoError(t, a.Reload(cfg3, ours))
	require.Equal(t, "spf pass for 203.0.113.10", a.SPF(ctx, "unknown.example").Detail)
	a.Delegated(ctx, "cname.example")
	require.Equal(t, 5, s.Total(), "SPF evaluated again, delegation cached")

	// Another key: delegation results go, SPF results stay.
	require.NoError(t, a.Reload(cfg3, testKeys(t)["other"]))
	require.False(t, a.Delegated(ctx, "cname.example").OK)
	a.SPF(ctx, "unknown.example")
	require.Equal(t, 6, s.Total(), "delegation checked again, SPF cached")

	// Another selector: delegation results go.
	cfg4 := testConfig(s.Addr, ip4)
	cfg4.DKIM.Selector = "selector2"
	require.NoError(t, a.Reload(cfg4, ours))
	a.Delegated(ctx, "cname.example")
	require.Equal(t, 7, s.Total())

	// Other DNS servers: a new resolver, and nothing cached survives.
	cfg5 := testConfig(other.Addr, ip4)
	cfg5.DKIM.Selector = "selector2"
	require.NoError(t, a.Reload(cfg5, ours))
	a.SPF(ctx, "unknown.example")
	a.Delegated(ctx, "cname.example")
	require.Equal(t, 7, s.Total())
	require.Equal(t, 3, other.Total())
}
