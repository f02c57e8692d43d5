// Package authz owns the live checks that may authorize a sender domain for package
// policy (SPEC §4: SPF pass for every sending IP, DKIM delegation to the relay's default
// key) and their per-domain cache, and never decides a sender (package policy does),
// parses a record itself (packages spf and dkimkey do) or logs.
package authz

import (
	"context"
	"crypto"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/metrics"
	"relay/internal/policy"
	"relay/internal/resolver"
)

// DefaultSPFTimeout bounds a whole check when [spf] timeout is unset.
const DefaultSPFTimeout = 5 * time.Second

// Authorizer runs the live checks of SPEC §4 for package policy and caches their results
// per domain: for the smallest TTL of the records consulted, clamped to [spf]
// cache_min_ttl..cache_max_ttl, and temporary failures for cache_min_ttl at most.
// Concurrent checks of one domain share one evaluation. It is safe for concurrent use.
type Authorizer struct {
	// Clock returns the current time for cache expiry; nil means time.Now. Set it before
	// the first check (tests move it forward instead of sleeping).
	Clock func() time.Time
	// Metrics, when not nil, counts SPF evaluations and cache hits as they happen (set it
	// before the first check, like Clock).
	Metrics *metrics.Metrics

	state  atomic.Pointer[state]
	reload sync.Mutex // serialises Reload
	cache  *cache
	flight singleflight.Group

	checks, evaluations atomic.Uint64
}

// state is what a check needs from the configuration; Reload swaps it whole.
type state struct {
	r        *resolver.Resolver
	dns      config.DNS
	ips      []netip.Addr
	helo     string
	timeout  time.Duration
	minTTL   time.Duration
	maxTTL   time.Duration
	selector string
	key      crypto.PublicKey
}

// Stats counts, since the start, the checks asked for and the evaluations (checks that
// went to DNS) among them, for the metrics of SPEC §10; the others were answered from
// the cache or by joining another caller's evaluation.
type Stats struct {
	Checks      uint64
	Evaluations uint64
}

var _ policy.Authorizer = (*Authorizer)(nil)

// New returns an Authorizer checking with r under cfg's [spf] and [dkim]
// settings; defaultKey is the public half of [dkim] private_key (a crypto.Signer is
// accepted too), nil when there is none.
func New(cfg *config.Config, r *resolver.Resolver, defaultKey crypto.PublicKey) *Authorizer {
	a := &Authorizer{cache: newCache(defaultCacheSize)}
	a.state.Store(newState(cfg, r, defaultKey))
	return a
}

func newState(cfg *config.Config, r *resolver.Resolver, key crypto.PublicKey) *state {
	if s, ok := key.(crypto.Signer); ok {
		key = s.Public()
	}
	st := &state{
		r:        r,
		dns:      cfg.DNS,
		ips:      slices.Clone(cfg.SPF.IPs),
		helo:     cfg.Hostname,
		timeout:  cfg.SPF.Timeout.Duration,
		minTTL:   cfg.SPF.CacheMinTTL.Duration,
		maxTTL:   max(cfg.SPF.CacheMaxTTL.Duration, cfg.SPF.CacheMinTTL.Duration),
		selector: cfg.DKIM.Selector,
		key:      key,
	}
	if st.timeout <= 0 {
		st.timeout = DefaultSPFTimeout
	}
	if st.selector == "" {
		st.selector = "default"
	}
	return st
}

// Reload applies a new configuration and default key. Cached SPF results survive unless
// [spf] changed (sending IPs, timeout, TTL bounds) or the hostname did (it feeds the
// %{h} macro); delegation results survive unless the selector or the key changed. When
// [dns] changed, a new resolver replaces the old one and the whole cache is dropped;
// if that resolver cannot be made, Reload returns the error and changes nothing.
func (a *Authorizer) Reload(cfg *config.Config, defaultKey crypto.PublicKey) error {
	a.reload.Lock()
	defer a.reload.Unlock()
	old := a.state.Load()
	r := old.r
	dnsChanged := !slices.Equal(cfg.DNS.Servers, old.dns.Servers) || cfg.DNS.Timeout != old.dns.Timeout
	if dnsChanged {
		var err error
		if r, err = resolver.New(cfg.DNS.Servers, cfg.DNS.Timeout.Duration); err != nil {
			return err
		}
	}
	st := newState(cfg, r, defaultKey)
	spfChanged := dnsChanged || !slices.Equal(st.ips, old.ips) || st.helo != old.helo ||
		st.timeout != old.timeout || st.minTTL != old.minTTL || st.maxTTL != old.maxTTL
	dkimChanged := dnsChanged || st.selector != old.selector || st.timeout != old.timeout ||
		st.minTTL != old.minTTL || st.maxTTL != old.maxTTL || !sameKey(st.key, old.key)
	a.state.Store(st)
	switch {
	case spfChanged && dkimChanged:
		a.cache.drop(kindSPF, kindDKIM)
	case spfChanged:
		a.cache.drop(kindSPF)
	case dkimChanged:
		a.cache.drop(kindDKIM)
	}
	return nil
}

func sameKey(a, b crypto.PublicKey) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return dkimkey.Equal(a, b)
}

// Stats returns the counters so far.
func (a *Authorizer) Stats() Stats {
	return Stats{Checks: a.checks.Load(), Evaluations: a.evaluations.Load()}
}

// SPF reports whether domain's SPF record authorizes every [spf] sending_ips address:
// check_host(ip, domain, postmaster@domain) is "pass" for each (SPEC §4 spf-pass).
func (a *Authorizer) SPF(ctx context.Context, domain string) policy.Check {
	return a.check(ctx, kindSPF, domain)
}

// Delegated reports whether domain publishes the relay's default DKIM key at
// <selector>._domainkey.<domain>, directly or through CNAMEs (SPEC §4 dkim-delegated).
func (a *Authorizer) Delegated(ctx context.Context, domain string) policy.Check {
	return a.check(ctx, kindDKIM, domain)
}

func (a *Authorizer) now() time.Time {
	if a.Clock != nil {
		return a.Clock()
	}
	return time.Now()
}

func (a *Authorizer) check(ctx context.Context, kd kind, domain string) policy.Check {
	// The generation is read before the settings: Reload stores the settings before it
	// moves the generation on, so a result computed under old settings is never cached
	// under the new generation.
	gen := a.cache.generation()
	st := a.state.Load()
	switch {
	case kd == kindSPF && len(st.ips) == 0:
		return policy.Check{Detail: "spf not checked: no [spf] sending_ips"}
	case kd == kindDKIM && st.key == nil:
		return policy.Check{Detail: "dkim delegation not checked: no default key"}
	}
	a.checks.Add(1)
	k := cacheKey{kind: kd, domain: domain}
	if c, ok := a.cache.get(k, a.now()); ok {
		a.Metrics.CacheHit()
		return c
	}
	// The generation is part of the key so that a check after a reload never joins an
	// evaluation started under the old settings.
	fk := strconv.Itoa(int(kd)) + "/" + strconv.FormatUint(gen, 10) + "/" + domain
	ch := a.flight.DoChan(fk, func() (any, error) {
		// A flight that ended just before this one began has filled the cache.
		if c, ok := a.cache.get(k, a.now()); ok {
			a.Metrics.CacheHit()
			return c, nil
		}
		a.evaluations.Add(1)
		if kd == kindSPF {
			a.Metrics.SPFEvaluated()
		}
		// The evaluation serves every caller that joins it, so one caller giving up
		// must not cancel it; it has its own deadline, [spf] timeout.
		ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), st.timeout)
		defer cancel()
		var c policy.Check
		var ttl uint32
		var known bool
		if kd == kindSPF {
			m := resolver.NewMemo(st.r)
			c.OK, c.Temporary, c.Detail = spfVerdict(checkIPs(ectx, m, st.ips, helo(st, domain), domain))
			ttl, known = m.TTL()
		} else {
			c, ttl, known = delegation(ectx, st.r, st.selector, domain, st.key)
		}
		if life := st.lifetime(ttl, known, c.Temporary); life > 0 {
			a.cache.put(k, c, a.now().Add(life), gen)
		}
		return c, nil
	})
	select {
	case res := <-ch:
		return res.Val.(policy.Check)
	case <-ctx.Done():
		name := "spf"
		if kd == kindDKIM {
			name = "dkim"
		}
		return policy.Check{Temporary: true, Detail: name + " temperror: timeout"}
	}
}

func helo(st *state, domain string) string {
	if st.helo != "" {
		return st.helo
	}
	return domain
}

// lifetime is how long a result stays cached (SPEC §4): the smallest TTL of the records
// consulted within [minTTL, maxTTL]; a temporary failure for minTTL, so that it is
// retried soon; minTTL too when no record was consulted.
func (st *state) lifetime(ttl uint32, known, temporary bool) time.Duration {
	if temporary || !known {
		return st.minTTL
	}
	return min(max(time.Duration(ttl)*time.Second, st.minTTL), st.maxTTL)
}
