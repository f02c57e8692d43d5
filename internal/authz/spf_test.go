package authz

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dnstest"
	"relay/internal/policy"
)

var (
	ip4 = netip.MustParseAddr("203.0.113.10")
	ip6 = netip.MustParseAddr("2001:db8::10")
)

// testConfig is a configuration with both live checks on, asking server.
func testConfig(server string, ips ...netip.Addr) *config.Config {
	strs := make([]string, len(ips))
	for i, ip := range ips {
		strs[i] = ip.String()
	}
	return &config.Config{
		Hostname: "relay.example.net",
		Sender:   config.Sender{Fallback: "noreply@relay.example.net"},
		SPF: config.SPF{
			Enabled: true, SendingIPs: strs, IPs: ips, Timeout: dur(5 * time.Second), OnTempError: "fallback",
			CacheMinTTL: dur(time.Minute), CacheMaxTTL: dur(time.Hour),
		},
		DNS:  config.DNS{Servers: []string{server}, Timeout: dur(2 * time.Second)},
		DKIM: config.DKIM{Selector: "default", DelegationCheck: true},
	}
}

func newAuthorizer(t testing.TB, cfg *config.Config) *Authorizer {
	t.Helper()
	return New(cfg, newResolver(t, cfg.DNS.Timeout.Duration, cfg.DNS.Servers...), nil)
}

const spfZone = `
pass.example.           TXT "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all"
include.example.        TXT "v=spf1 include:_spf.include.example -all"
_spf.include.example.   TXT "v=spf1 ip4:203.0.113.0/24 include:_spf6.include.example ~all"
_spf6.include.example.  TXT "v=spf1 ip6:2001:db8::/32 -all"
redirect.example.       TXT "v=spf1 redirect=_spf.provider.example"
_spf.provider.example.  TXT "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all"
a.example.              TXT "v=spf1 a -all"
a.example.              A    203.0.113.10
a.example.              AAAA 2001:db8::10
mx.example.             TXT "v=spf1 mx:mx.example -all"
mx.example.             MX 10 mail1.mx.example.
mx.example.             MX 20 mail2.mx.example.
mail1.mx.example.       A    203.0.113.10
mail2.mx.example.       AAAA 2001:db8::10
ptr.example.            TXT "v=spf1 ptr -all"
10.113.0.203.in-addr.arpa. PTR out.ptr.example.
0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR out.ptr.example.
out.ptr.example.        A    203.0.113.10
out.ptr.example.        AAAA 2001:db8::10
macro.example.          TXT "v=spf1 exists:%{ir}.%{v}._spf.%{d} -all"
10.113.0.203.in-addr._spf.macro.example. A 127.0.0.2
0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.macro.example. A 127.0.0.2
v4only.example.         TXT "v=spf1 ip4:203.0.113.10 ~all"
softfail.example.       TXT "v=spf1 ~all"
neutral.example.        TXT "v=spf1 ?all"
fail.example.           TXT "v=spf1 -all"
two.example.            TXT "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all"
two.example.            TXT "v=spf1 -all"
nospf.example.          TXT "google-site-verification=abc"
loop.example.           TXT "v=spf1 include:loop.example -all"
syntax.example.         TXT "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all moo"
badinclude.example.     TXT "v=spf1 include:_spf.badinclude.example -all"
_spf.badinclude.example. TXT "v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 ~all exp=%{r}.badinclude.example"
ptrmacro.example.       TXT "v=spf1 exists:%{p}._spf.ptrmacro.example -all"
out.ptr.example._spf.ptrmacro.example. A 127.0.0.2
voids.example.          TXT "v=spf1 a:n1.voids.example a:n2.voids.example a:n3.voids.example ip4:203.0.113.10 ip6:2001:db8::10 -all"
`

func TestSPF(t *testing.T) {
	s := dnstest.New(t, spfZone)
	tests := []struct {
		domain string
		ips    []netip.Addr
		ok     bool
		detail string
	}{
		{domain: "pass.example", ips: []netip.Addr{ip4, ip6}, ok: true, detail: "spf pass for 203.0.113.10, 2001:db8::10"},
		{domain: "include.example", ips: []netip.Addr{ip4, ip6}, ok: true, detail: "spf pass for 203.0.113.10, 2001:db8::10"},
		{domain: "redirect.example", ips: []netip.Addr{ip4, ip6}, ok: true, detail: "spf pass for 203.0.113.10, 2001:db8::10"},
		{domain: "a.example", ips: []netip.Addr{ip4, ip6}, ok: true, detail: "spf pass for 203.0.113.10, 2001:db8::10"},
		{domain: "mx.example", ips: []netip.Addr{ip4, ip6}, ok: true, detail: "spf pass for 203.0.113.10, 2001:db8::10"},
		{domain: "ptr.example", ips: []netip.Addr{ip4, ip6}, ok: true, detail: "spf pass for 203.0.113.10, 2001:db8::10"},
		{domain: "macro.example", ips: []netip.Addr{ip4, ip6}, ok: true, detail: "spf pass for 203.0.113.10, 2001:db8::10"},
		{domain: "pass.example", ips: []netip.Addr{ip6}, ok: true, detail: "spf pass for 2001:db8::10"},
		{domain: "v4only.example", ips: []netip.Addr{ip4, ip6}, detail: "spf softfail for 2001:db8::10 (pass for 203.0.113.10)"},
		{domain: "softfail.example", ips: []netip.Addr{ip4, ip6}, detail: "spf softfail for 203.0.113.10, 2001:db8::10"},
		{domain: "neutral.example", ips: []netip.Addr{ip4}, detail: "spf neutral for 203.0.113.10"},
		{domain: "fail.example", ips: []netip.Addr{ip4}, detail: "spf fail for 203.0.113.10"},
		{domain: "two.example", ips: []netip.Addr{ip4, ip6}, detail: "spf permerror: multiple SPF records"},
		{domain: "nospf.example", ips: []netip.Addr{ip4, ip6}, detail: "spf none (no SPF record)"},
		{domain: "nxdomain.example", ips: []netip.Addr{ip4, ip6}, detail: "spf none (no SPF record)"},
		{domain: "loop.example", ips: []netip.Addr{ip4}, detail: "spf permerror: more than 10 DNS lookups"},
		{domain: "voids.example", ips: []netip.Addr{ip4}, detail: "spf permerror: more than 2 void DNS lookups"},
		// A syntax error anywhere in any record consulted is a permerror, even after a
		// term that matched (RFC 7208 §4.6), as strict receivers see it.
		{domain: "syntax.example", ips: []netip.Addr{ip4, ip6}, detail: `spf permerror: SPF record of syntax.example: term "moo": unknown mechanism "moo"`},
		{domain: "badinclude.example", ips: []netip.Addr{ip4}, detail: `spf permerror: SPF record of _spf.badinclude.example: term "exp=%{r}.badinclude.example": macro "%{r}": letter 'r' is allowed only in exp text (RFC 7208 §7.1)`},
		// %{p} is the validated PTR name (the library alone would expand it to "unknown").
		{domain: "ptrmacro.example", ips: []netip.Addr{ip4, ip6}, ok: true, detail: "spf pass for 203.0.113.10, 2001:db8::10"},
	}
	for _, tt := range tests {
		t.Run(tt.domain+"/"+tt.detail, func(t *testing.T) {
			a := newAuthorizer(t, testConfig(s.Addr, tt.ips...))
			c := a.SPF(context.Background(), tt.domain)
			require.Equal(t, policy.Check{OK: tt.ok, Detail: tt.detail}, c)
		})
	}
}

func TestSPFTemporary(t *testing.T) {
	t.Run("SERVFAIL", func(t *testing.T) {
		s := dnstest.New(t, spfZone)
		s.SetServFail("pass.example", true)
		a := newAuthorizer(t, testConfig(s.Addr, ip4, ip6))
		c := a.SPF(context.Background(), "pass.example")
		require.False(t, c.OK)
		require.True(t, c.Temporary)
		require.Equal(t, "spf temperror: lookup pass.example on "+s.Addr+": SERVFAIL", c.Detail)
	})
	t.Run("include fails", func(t *testing.T) {
		s := dnstest.New(t, spfZone)
		s.SetServFail("_spf6.include.example", true)
		a := newAuthorizer(t, testConfig(s.Addr, ip4, ip6))
		c := a.SPF(context.Background(), "include.example")
		require.Equal(t, policy.Check{Temporary: true, Detail: "spf temperror for 2001:db8::10: lookup _spf6.include.example on " + s.Addr + ": SERVFAIL (pass for 203.0.113.10)"}, c)
	})
}

// A server that never answers: the check ends at [spf] timeout, not at the (longer) DNS
// timeout, and policy falls back or defers as configured.
func TestSPFServerNeverAnswers(t *testing.T) {
	s := dnstest.New(t, spfZone)
	s.SetSilent(true)
	cfg := testConfig(s.Addr, ip4, ip6)
	cfg.DNS.Timeout = dur(time.Minute)
	cfg.SPF.Timeout = dur(300 * time.Millisecond)
	cfg.DKIM.DelegationCheck = false
	ctx := context.Background()

	start := time.Now()
	a := newAuthorizer(t, cfg)
	c := a.SPF(ctx, "pass.example")
	require.Less(t, time.Since(start), 30*time.Second, "bounded by [spf] timeout")
	require.Equal(t, policy.Check{Temporary: true, Detail: "spf temperror: timeout"}, c)

	in := policy.Input{From: "alice@pass.example", Envelope: "alice@pass.example"}
	d, err := policy.Decide(ctx, cfg, a, in)
	require.NoError(t, err)
	require.Equal(t, policy.FallbackGlobal, d.Reason)
	require.Equal(t, "noreply@relay.example.net", d.From)
	require.Equal(t, "pass.example: not listed; spf temperror: timeout", d.Detail)

	cfg.SPF.OnTempError = "defer"
	_, err = policy.Decide(ctx, cfg, newAuthorizer(t, cfg), in)
	var de *policy.DeferError
	require.ErrorAs(t, err, &de)
	code, enh, _ := de.SMTPReply()
	require.Equal(t, 451, code)
	require.Equal(t, [3]int{4, 4, 3}, enh)
}

func TestSPFDecision(t *testing.T) {
	s := dnstest.New(t, spfZone)
	cfg := testConfig(s.Addr, ip4, ip6)
	cfg.DKIM.DelegationCheck = false
	a := newAuthorizer(t, cfg)
	d, err := policy.Decide(context.Background(), cfg, a, policy.Input{From: "alice@include.example", Envelope: "bounce@v4only.example"})
	require.NoError(t, err)
	require.Equal(t, policy.SPFPass, d.Reason)
	require.Equal(t, "alice@include.example", d.From)
	require.Equal(t, "include.example: spf pass for 203.0.113.10, 2001:db8::10", d.Detail)
	require.True(t, d.EnvelopeRewritten)
	require.Equal(t, "v4only.example: not listed; spf softfail for 2001:db8::10 (pass for 203.0.113.10)", d.EnvelopeDetail)

	// A permerror is no temperror: the From falls back even with on_temperror = "defer".
	cfg.SPF.OnTempError = "defer"
	d, err = policy.Decide(context.Background(), cfg, a, policy.Input{From: "alice@two.example"})
	require.NoError(t, err)
	require.Equal(t, policy.FallbackGlobal, d.Reason)
	require.Equal(t, "two.example: not listed; spf permerror: multiple SPF records", d.Detail)
}

// The checks of the IPs of one evaluation share lookups: one query per name and type.
func TestSPFEvaluationAsksOnce(t *testing.T) {
	s := dnstest.New(t, spfZone)
	a := newAuthorizer(t, testConfig(s.Addr, ip4, ip6))
	require.True(t, a.SPF(context.Background(), "include.example").OK)
	require.Equal(t, 1, s.Queries("include.example", 0))
	require.Equal(t, 1, s.Queries("_spf.include.example", 0))
	require.Equal(t, 1, s.Queries("_spf6.include.example", 0))
	require.Equal(t, 3, s.Total())
}

func TestSPFNoSendingIPs(t *testing.T) {
	s := dnstest.New(t, spfZone)
	a := newAuthorizer(t, testConfig(s.Addr))
	require.Equal(t, policy.Check{Detail: "spf not checked: no [spf] sending_ips"}, a.SPF(context.Background(), "pass.example"))
	require.Zero(t, s.Total())
}

func TestSPFVerdict(t *testing.T) {
	timeout := errors.New("x")
	tests := []struct {
		name   string
		rs     []ipResult
		ok     bool
		temp   bool
		detail string
	}{
		{"all pass", []ipResult{{ip4, "pass", nil}, {ip6, "pass", nil}}, true, false, "spf pass for 203.0.113.10, 2001:db8::10"},
		{"worst leads", []ipResult{{ip4, "pass", nil}, {ip6, "fail", nil}}, false, false, "spf fail for 2001:db8::10 (pass for 203.0.113.10)"},
		{"three results", []ipResult{{ip4, "neutral", nil}, {ip6, "softfail", nil}, {netip.MustParseAddr("192.0.2.1"), "pass", nil}}, false, false,
			"spf softfail for 2001:db8::10 (neutral for 203.0.113.10; pass for 192.0.2.1)"},
		{"temperror of one IP", []ipResult{{ip4, "temperror", timeout}, {ip6, "pass", nil}}, false, true, "spf temperror for 203.0.113.10: x (pass for 2001:db8::10)"},
		{"none everywhere", []ipResult{{ip4, "none", nil}, {ip6, "none", nil}}, false, false, "spf none (no SPF record)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, temp, detail := spfVerdict(tt.rs)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.temp, temp)
			require.Equal(t, tt.detail, detail)
		})
	}
}

// fakeClock is the Authorizer's clock in tests: time moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
