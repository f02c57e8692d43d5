package policy

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
)

// answers is a table-driven Authorizer: the policy is pure, so its tests feed it the
// answers the DNS would give (the DNS itself is tested in package authz).
type answers struct {
	spf, dkim map[string]Check
	calls     []string
}

func (a *answers) SPF(_ context.Context, d string) Check {
	a.calls = append(a.calls, "spf:"+d)
	if c, ok := a.spf[d]; ok {
		return c
	}
	return Check{Detail: "spf none"}
}

func (a *answers) Delegated(_ context.Context, d string) Check {
	a.calls = append(a.calls, "dkim:"+d)
	if c, ok := a.dkim[d]; ok {
		return c
	}
	return Check{Detail: "no DKIM record"}
}

func testConfig() *config.Config {
	return &config.Config{
		Sender: config.Sender{
			Domains:  []string{"example.com", "*.example.org", "xn--bcher-kva.example"},
			Fallback: "noreply@relay.example.net",
		},
		Units: []config.Unit{
			{Name: "sales", Fallback: "sales@example.com", Domains: []string{"partner.example"}, BounceAddress: "bounces-sales@example.com"},
			{Name: "ops"}, // no fallback of its own: the global one applies
		},
		SPF:  config.SPF{Enabled: true, OnTempError: "fallback"},
		DKIM: config.DKIM{DelegationCheck: true, Domain: "relay.example.net"},
	}
}

func TestDecide(t *testing.T) {
	auth := &answers{
		spf: map[string]Check{
			"spf-ok.example":   {OK: true, Detail: "spf pass for 203.0.113.10"},
			"softfail.example": {Detail: "spf softfail for 203.0.113.10"},
			"slow.example":     {Temporary: true, Detail: "spf temperror: timeout"},
		},
		dkim: map[string]Check{
			"delegated.example": {OK: true, Detail: "dkim key published at default._domainkey.delegated.example"},
		},
	}
	tests := []struct {
		name   string
		in     Input
		mutate func(*config.Config)
		want   Decision
	}{
		{
			name: "allowed-domain keeps From and envelope",
			in:   Input{From: "alice@example.com", Envelope: "bounce@example.com"},
			want: Decision{FromOriginal: "alice@example.com", From: "alice@example.com", Reason: AllowedDomain,
				Detail: "example.com: listed in [sender] allowed_domains", Envelope: "bounce@example.com",
				EnvelopeDetail: "example.com: listed in [sender] allowed_domains", DKIMDomain: "relay.example.net"},
		},
		{
			name: "domain compare is case-insensitive",
			in:   Input{From: "Alice@EXAMPLE.COM", Envelope: ""},
			want: Decision{FromOriginal: "Alice@EXAMPLE.COM", From: "Alice@EXAMPLE.COM", Reason: AllowedDomain,
				Detail: "example.com: listed in [sender] allowed_domains", DKIMDomain: "relay.example.net"},
		},
		{
			name: "IDNA U-label matches its A-label in the list",
			in:   Input{From: "info@bücher.example"},
			want: Decision{FromOriginal: "info@bücher.example", From: "info@bücher.example", Reason: AllowedDomain,
				Detail: "xn--bcher-kva.example: listed in [sender] allowed_domains", DKIMDomain: "relay.example.net"},
		},
		{
			name: "wildcard matches a subdomain",
			in:   Input{From: "x@mail.example.org"},
			want: Decision{FromOriginal: "x@mail.example.org", From: "x@mail.example.org", Reason: AllowedDomain,
				Detail: "mail.example.org: listed in [sender] allowed_domains", DKIMDomain: "relay.example.net"},
		},
		{
			name: "wildcard does not match the apex",
			in:   Input{From: "x@example.org"},
			want: Decision{FromOriginal: "x@example.org", From: "noreply@relay.example.net", Rewritten: true,
				Reason: FallbackGlobal, Detail: "example.org: not listed; spf none; no DKIM record", DKIMDomain: "relay.example.net"},
		},
		{
			name: "unit-domain",
			in:   Input{Unit: "sales", From: "bob@partner.example", Envelope: "bob@partner.example"},
			want: Decision{Unit: "sales", FromOriginal: "bob@partner.example", From: "bob@partner.example", Reason: UnitDomain,
				Detail: "partner.example: listed in unit sales", Envelope: "bob@partner.example",
				EnvelopeDetail: "partner.example: listed in unit sales", DKIMDomain: "relay.example.net"},
		},
		{
			name: "unit names compare case-insensitively",
			in:   Input{Unit: "SALES", From: "bob@partner.example"},
			want: Decision{Unit: "sales", FromOriginal: "bob@partner.example", From: "bob@partner.example", Reason: UnitDomain,
				Detail: "partner.example: listed in unit sales", DKIMDomain: "relay.example.net"},
		},
		{
			name: "unit domain does not apply without the unit",
			in:   Input{From: "bob@partner.example"},
			want: Decision{FromOriginal: "bob@partner.example", From: "noreply@relay.example.net", Rewritten: true,
				Reason: FallbackGlobal, Detail: "partner.example: not listed; spf none; no DKIM record", DKIMDomain: "relay.example.net"},
		},
		{
			name: "spf-pass keeps From and envelope",
			in:   Input{From: "a@spf-ok.example", Envelope: "a@spf-ok.example"},
			want: Decision{FromOriginal: "a@spf-ok.example", From: "a@spf-ok.example", Reason: SPFPass,
				Detail: "spf-ok.example: spf pass for 203.0.113.10", Envelope: "a@spf-ok.example",
				EnvelopeDetail: "spf-ok.example: spf pass for 203.0.113.10", DKIMDomain: "relay.example.net"},
		},
		{
			name: "dkim-delegated keeps From, signs as the From domain, envelope rewritten",
			in:   Input{From: "a@delegated.example", Envelope: "a@delegated.example"},
			want: Decision{FromOriginal: "a@delegated.example", From: "a@delegated.example", Reason: DKIMDelegated,
				Detail: "delegated.example: dkim key published at default._domainkey.delegated.example", Delegated: true,
				Envelope: "noreply@relay.example.net", EnvelopeRewritten: true,
				EnvelopeDetail: "delegated.example: not listed; spf none", DKIMDomain: "delegated.example"},
		},
		{
			name: "fallback-unit with unit bounce address",
			in:   Input{Unit: "sales", From: "alice@gmail.com", Envelope: "alice@gmail.com"},
			want: Decision{Unit: "sales", FromOriginal: "alice@gmail.com", From: "sales@example.com", Rewritten: true,
				Reason: FallbackUnit, Detail: "gmail.com: not listed; spf none; no DKIM record",
				Envelope: "bounces-sales@example.com", EnvelopeRewritten: true,
				EnvelopeDetail: "gmail.com: not listed; spf none", DKIMDomain: "relay.example.net"},
		},
		{
			name: "unit without fallback uses the global one",
			in:   Input{Unit: "ops", From: "alice@gmail.com"},
			want: Decision{Unit: "ops", FromOriginal: "alice@gmail.com", From: "noreply@relay.example.net", Rewritten: true,
				Reason: FallbackGlobal, Detail: "gmail.com: not listed; spf none; no DKIM record", DKIMDomain: "relay.example.net"},
		},
		{
			name: "fallback-global names the spf result",
			in:   Input{From: "a@softfail.example", Envelope: "a@softfail.example"},
			want: Decision{FromOriginal: "a@softfail.example", From: "noreply@relay.example.net", Rewritten: true,
				Reason: FallbackGlobal, Detail: "softfail.example: not listed; spf softfail for 203.0.113.10; no DKIM record",
				Envelope: "noreply@relay.example.net", EnvelopeRewritten: true,
				EnvelopeDetail: "softfail.example: not listed; spf softfail for 203.0.113.10", DKIMDomain: "relay.example.net"},
		},
		{
			name:   "global bounce address replaces a disallowed envelope",
			in:     Input{From: "alice@example.com", Envelope: "app@gmail.com"},
			mutate: func(c *config.Config) { c.Sender.BounceAddress = "bounces@relay.example.net" },
			want: Decision{FromOriginal: "alice@example.com", From: "alice@example.com", Reason: AllowedDomain,
				Detail: "example.com: listed in [sender] allowed_domains", Envelope: "bounces@relay.example.net",
				EnvelopeRewritten: true, EnvelopeDetail: "gmail.com: not listed; spf none", DKIMDomain: "relay.example.net"},
		},
		{
			name: "null envelope sender is kept",
			in:   Input{From: "alice@gmail.com", Envelope: ""},
			want: Decision{FromOriginal: "alice@gmail.com", From: "noreply@relay.example.net", Rewritten: true,
				Reason: FallbackGlobal, Detail: "gmail.com: not listed; spf none; no DKIM record", DKIMDomain: "relay.example.net"},
		},
		{
			name: "no From header: the envelope is the candidate",
			in:   Input{Envelope: "alice@example.com"},
			want: Decision{FromOriginal: "alice@example.com", From: "alice@example.com", Reason: AllowedDomain,
				Detail: "example.com: listed in [sender] allowed_domains", Envelope: "alice@example.com",
				EnvelopeDetail: "example.com: listed in [sender] allowed_domains", DKIMDomain: "relay.example.net", AddFrom: true},
		},
		{
			name: "neither From nor envelope: fallback",
			in:   Input{},
			want: Decision{From: "noreply@relay.example.net", Rewritten: true, Reason: FallbackGlobal,
				Detail: "no From header and null envelope sender", DKIMDomain: "relay.example.net"},
		},
		{
			name: "temperror falls back by default",
			in:   Input{From: "a@slow.example"},
			want: Decision{FromOriginal: "a@slow.example", From: "noreply@relay.example.net", Rewritten: true,
				Reason: FallbackGlobal, Detail: "slow.example: not listed; spf temperror: timeout; no DKIM record", DKIMDomain: "relay.example.net"},
		},
		{
			name:   "own [[dkim.keys]] key signs as the From domain",
			in:     Input{From: "alice@example.com"},
			mutate: func(c *config.Config) { c.DKIM.Keys = []config.DKIMKey{{Domain: "Example.com", Selector: "s1"}} },
			want: Decision{FromOriginal: "alice@example.com", From: "alice@example.com", Reason: AllowedDomain,
				Detail: "example.com: listed in [sender] allowed_domains", DKIMDomain: "example.com"},
		},
		{
			name:   "a subdomain is signed with its parent's own key (relaxed alignment)",
			in:     Input{From: "x@mail.example.org"},
			mutate: func(c *config.Config) { c.DKIM.Keys = []config.DKIMKey{{Domain: "example.org"}, {Domain: "org"}} },
			want: Decision{FromOriginal: "x@mail.example.org", From: "x@mail.example.org", Reason: AllowedDomain,
				Detail: "mail.example.org: listed in [sender] allowed_domains", DKIMDomain: "example.org"},
		},
		{
			name:   "a key for a lookalike suffix does not count",
			in:     Input{From: "x@mail.example.org"},
			mutate: func(c *config.Config) { c.DKIM.Keys = []config.DKIMKey{{Domain: "le.org"}} },
			want: Decision{FromOriginal: "x@mail.example.org", From: "x@mail.example.org", Reason: AllowedDomain,
				Detail: "mail.example.org: listed in [sender] allowed_domains", DKIMDomain: "relay.example.net"},
		},
		{
			name:   "dkim domain defaults to the fallback's domain",
			in:     Input{From: "alice@gmail.com"},
			mutate: func(c *config.Config) { c.DKIM.Domain = "" },
			want: Decision{FromOriginal: "alice@gmail.com", From: "noreply@relay.example.net", Rewritten: true,
				Reason: FallbackGlobal, Detail: "gmail.com: not listed; spf none; no DKIM record", DKIMDomain: "relay.example.net"},
		},
		{
			name:   "live checks off: only lists count",
			in:     Input{From: "a@spf-ok.example"},
			mutate: func(c *config.Config) { c.SPF.Enabled = false; c.DKIM.DelegationCheck = false },
			want: Decision{FromOriginal: "a@spf-ok.example", From: "noreply@relay.example.net", Rewritten: true,
				Reason: FallbackGlobal, Detail: "spf-ok.example: not listed", DKIMDomain: "relay.example.net"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			if tt.mutate != nil {
				tt.mutate(cfg)
			}
			got, err := Decide(context.Background(), cfg, auth, tt.in)
			require.NoError(t, err)
			got.senderLists = nil // TestSenderAllowed
			require.Equal(t, tt.want, got)
		})
	}
}

func TestDecideListedDomainsSkipLiveChecks(t *testing.T) {
	auth := &answers{}
	_, err := Decide(context.Background(), testConfig(), auth, Input{From: "a@example.com", Envelope: "b@example.com"})
	require.NoError(t, err)
	require.Empty(t, auth.calls, "a listed domain must not cost a DNS lookup")
}

func TestDecideEnvelopeIgnoresDelegation(t *testing.T) {
	auth := &answers{dkim: map[string]Check{"delegated.example": {OK: true}}}
	_, err := Decide(context.Background(), testConfig(), auth, Input{Envelope: "x@delegated.example", From: "y@example.com"})
	require.NoError(t, err)
	require.Equal(t, []string{"spf:delegated.example"}, auth.calls)
}

func TestDecideErrors(t *testing.T) {
	auth := &answers{spf: map[string]Check{"slow.example": {Temporary: true, Detail: "spf temperror: timeout"}}}

	_, err := Decide(context.Background(), testConfig(), auth, Input{Unit: "marketing", From: "a@example.com"})
	var uerr *UnknownUnitError
	require.ErrorAs(t, err, &uerr)
	code, enh, msg := uerr.SMTPReply()
	require.Equal(t, 550, code)
	require.Equal(t, [3]int{5, 7, 1}, enh)
	require.Equal(t, `unknown business unit "marketing"`, msg)

	cfg := testConfig()
	cfg.SPF.OnTempError = "defer"
	_, err = Decide(context.Background(), cfg, auth, Input{From: "a@slow.example"})
	var derr *DeferError
	require.ErrorAs(t, err, &derr)
	code, enh, _ = derr.SMTPReply()
	require.Equal(t, 451, code)
	require.Equal(t, [3]int{4, 4, 3}, enh)

	// A temporary failure of the envelope's domain defers too.
	_, err = Decide(context.Background(), cfg, auth, Input{From: "a@example.com", Envelope: "b@slow.example"})
	require.ErrorAs(t, err, &derr)

	// Delegation that succeeds wins over an SPF temperror: nothing to defer.
	auth.dkim = map[string]Check{"slow.example": {OK: true, Detail: "delegated"}}
	d, err := Decide(context.Background(), cfg, auth, Input{From: "a@slow.example"})
	require.NoError(t, err)
	require.Equal(t, DKIMDelegated, d.Reason)

	_, err = Decide(context.Background(), testConfig(), nil, Input{From: "a@example.com"})
	require.ErrorIs(t, err, ErrNoAuthorizer)
}

func TestMatch(t *testing.T) {
	pats := []string{"example.com", "*.corp.example"}
	for d, want := range map[string]bool{
		"example.com":        true,
		"sub.example.com":    false,
		"corp.example":       false,
		"a.corp.example":     true,
		"a.b.corp.example":   true,
		"xcorp.example":      false,
		"evilexample.com":    false,
		"example.com.evil":   false,
		"":                   false,
		"a.corp.example.org": false,
	} {
		require.Equal(t, want, Match(pats, d), d)
	}
}

func TestSenderAllowed(t *testing.T) {
	d, err := Decide(context.Background(), testConfig(), &answers{}, Input{Unit: "sales", From: "a@example.com"})
	require.NoError(t, err)
	require.True(t, d.SenderAllowed("x@example.com"))
	require.True(t, d.SenderAllowed("x@a.example.org"))
	require.True(t, d.SenderAllowed("x@partner.example"), "the unit's list")
	require.False(t, d.SenderAllowed("x@gmail.com"))
	d, err = Decide(context.Background(), testConfig(), &answers{}, Input{From: "a@example.com"})
	require.NoError(t, err)
	require.False(t, d.SenderAllowed("x@partner.example"), "not without the unit")
}

func TestUnitAndTemplate(t *testing.T) {
	cfg := testConfig()
	cfg.Sender.DisplayName = "{name} via Example"
	cfg.Units[0].DisplayName = "{name} via Sales"
	cfg.SMTP.TrustUnitHeader = true
	for _, tc := range []struct {
		name string
		in   Input
		unit string
		tmpl string
	}{
		{"entitled unit", Input{Unit: "sales"}, "sales", "{name} via Sales"},
		{"entitled unit beats the header", Input{Unit: "ops", UnitHeader: "sales", NetworkAllowed: true}, "ops", "{name} via Example"},
		{"header from a trusted network", Input{UnitHeader: " Sales ", NetworkAllowed: true}, "sales", "{name} via Sales"},
		{"header from elsewhere ignored", Input{UnitHeader: "sales"}, "", "{name} via Example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.From = "a@gmail.com"
			d, err := Decide(context.Background(), cfg, &answers{}, tc.in)
			require.NoError(t, err)
			require.Equal(t, tc.unit, d.Unit)
			require.Equal(t, tc.tmpl, d.DisplayName)
		})
	}
	cfg.SMTP.TrustUnitHeader = false
	d, err := Decide(context.Background(), cfg, &answers{}, Input{UnitHeader: "sales", NetworkAllowed: true, From: "a@gmail.com"})
	require.NoError(t, err)
	require.Equal(t, "", d.Unit, "trust_unit_header off")
	_, err = Decide(context.Background(), testConfig(), &answers{}, Input{UnitHeader: "nope", NetworkAllowed: true})
	require.NoError(t, err, "an untrusted header naming no unit is ignored")
}

func TestAddFrom(t *testing.T) {
	d, err := Decide(context.Background(), testConfig(), &answers{}, Input{Envelope: "app@example.com"})
	require.NoError(t, err)
	require.True(t, d.AddFrom)
	d, err = Decide(context.Background(), testConfig(), &answers{}, Input{Envelope: "app@gmail.com"})
	require.NoError(t, err)
	require.False(t, d.AddFrom, "rewritten: the rewrite writes the From")
	d, err = Decide(context.Background(), testConfig(), &answers{}, Input{From: "a@example.com", Envelope: "app@example.com"})
	require.NoError(t, err)
	require.False(t, d.AddFrom)
}
