package authz

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"relay/internal/dkimkey"
	"relay/internal/dnstest"
	"relay/internal/policy"
)

// keys are made once: RSA generation is slow.
var keys = sync.OnceValues(func() (map[string]crypto.PublicKey, error) {
	seed := func(b byte) []byte { s := make([]byte, ed25519.SeedSize); s[0] = b; return s }
	rsaKey, err := dkimkey.Generate("rsa", 1024)
	if err != nil {
		return nil, err
	}
	return map[string]crypto.PublicKey{
		"ours":  ed25519.NewKeyFromSeed(seed(1)).Public(),
		"other": ed25519.NewKeyFromSeed(seed(2)).Public(),
		"rsa":   rsaKey.Public(),
	}, nil
})

func testKeys(t testing.TB) map[string]crypto.PublicKey {
	t.Helper()
	k, err := keys()
	require.NoError(t, err)
	return k
}

// txtRecord writes record text as zone-file strings of at most 255 octets.
func txtRecord(s string) string {
	var parts []string
	for len(s) > 255 {
		parts = append(parts, `"`+s[:255]+`"`)
		s = s[255:]
	}
	return strings.Join(append(parts, `"`+s+`"`), " ")
}

func record(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	rec, err := dkimkey.Record(pub)
	require.NoError(t, err)
	return txtRecord(rec)
}

func dkimZone(t testing.TB) string {
	k := testKeys(t)
	rsaDER, err := x509.MarshalPKIXPublicKey(k["rsa"])
	require.NoError(t, err)
	pkcs1 := base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PublicKey(k["rsa"].(*rsa.PublicKey)))
	folded := base64.StdEncoding.EncodeToString(rsaDER)
	folded = folded[:40] + " " + folded[40:]
	return fmt.Sprintf(`
default._domainkey.relay.example.net.     TXT %s
default._domainkey.direct.example.        TXT %s
default._domainkey.cname.example.         CNAME default._domainkey.relay.example.net.
default._domainkey.chain.example.         CNAME hop._domainkey.chain.example.
hop._domainkey.chain.example.             CNAME default._domainkey.relay.example.net.
default._domainkey.other.example.         CNAME default._domainkey.elsewhere.example.
default._domainkey.elsewhere.example.     TXT %s
default._domainkey.rsa.example.           TXT %s
default._domainkey.pkcs1.example.         TXT %s
default._domainkey.folded.example.        TXT %s
default._domainkey.revoked.example.       TXT "v=DKIM1; k=ed25519; p="
default._domainkey.two.example.           TXT %s
default._domainkey.two.example.           TXT "v=DKIM1; k=rsa; p="
default._domainkey.sha1.example.          TXT "v=DKIM1; h=sha1; k=ed25519; p=%s"
default._domainkey.dangling.example.      CNAME default._domainkey.gone.example.
default._domainkey.loop.example.          CNAME default._domainkey.loop.example.
selector2._domainkey.direct.example.      TXT %s
`, record(t, k["ours"]), record(t, k["ours"]), record(t, k["other"]), record(t, k["rsa"]),
		txtRecord("v=DKIM1; k=rsa; p="+pkcs1), txtRecord("v=DKIM1; p="+folded),
		record(t, k["ours"]), base64.StdEncoding.EncodeToString(k["ours"].(ed25519.PublicKey)), record(t, k["other"]))
}

func TestDelegated(t *testing.T) {
	s := dnstest.New(t, dkimZone(t))
	k := testKeys(t)
	tests := []struct {
		domain string
		key    string
		ok     bool
		detail string
	}{
		{"direct.example", "ours", true, "dkim key published at default._domainkey.direct.example"},
		{"cname.example", "ours", true, "dkim key published at default._domainkey.cname.example (via CNAME default._domainkey.relay.example.net)"},
		{"chain.example", "ours", true, "dkim key published at default._domainkey.chain.example (via CNAME hop._domainkey.chain.example -> default._domainkey.relay.example.net)"},
		{"rsa.example", "rsa", true, "dkim key published at default._domainkey.rsa.example"},
		{"pkcs1.example", "rsa", true, "dkim key published at default._domainkey.pkcs1.example"},
		{"folded.example", "rsa", true, "dkim key published at default._domainkey.folded.example"},
		{"other.example", "ours", false, "default._domainkey.other.example (via CNAME default._domainkey.elsewhere.example) publishes another key"},
		{"rsa.example", "ours", false, "default._domainkey.rsa.example publishes another key"},
		{"nothing.example", "ours", false, "no DKIM record at default._domainkey.nothing.example"},
		{"dangling.example", "ours", false, "no DKIM record at default._domainkey.dangling.example (via CNAME default._domainkey.gone.example)"},
		{"revoked.example", "ours", false, "default._domainkey.revoked.example: not a usable DKIM key record: key revoked (empty p=)"},
		{"two.example", "ours", false, "default._domainkey.two.example has 2 TXT records (verifiers want exactly one)"},
		{"sha1.example", "ours", false, "default._domainkey.sha1.example: not a usable DKIM key record: h= does not allow sha256"},
		{"loop.example", "ours", false, "default._domainkey.loop.example: lookup default._domainkey.loop.example on " + s.Addr + ": CNAME loop"},
	}
	for _, tt := range tests {
		t.Run(tt.domain+"/"+tt.key, func(t *testing.T) {
			cfg := testConfig(s.Addr, ip4)
			a := New(cfg, newResolver(t, cfg.DNS.Timeout.Duration, s.Addr), k[tt.key])
			require.Equal(t, policy.Check{OK: tt.ok, Detail: tt.detail}, a.Delegated(context.Background(), tt.domain))
		})
	}
}

func TestDelegatedSelectorAndErrors(t *testing.T) {
	s := dnstest.New(t, dkimZone(t))
	k := testKeys(t)
	cfg := testConfig(s.Addr, ip4)
	cfg.DKIM.Selector = "selector2"
	a := New(cfg, newResolver(t, cfg.DNS.Timeout.Duration, s.Addr), k["ours"])
	require.Equal(t, policy.Check{Detail: "selector2._domainkey.direct.example publishes another key"},
		a.Delegated(context.Background(), "direct.example"))

	s.SetServFail("default._domainkey.direct.example", true)
	cfg = testConfig(s.Addr, ip4)
	a = New(cfg, newResolver(t, cfg.DNS.Timeout.Duration, s.Addr), k["ours"])
	require.Equal(t, policy.Check{Temporary: true, Detail: "dkim temperror at default._domainkey.direct.example: SERVFAIL"},
		a.Delegated(context.Background(), "direct.example"))

	a = New(cfg, newResolver(t, cfg.DNS.Timeout.Duration, s.Addr), nil)
	require.Equal(t, policy.Check{Detail: "dkim delegation not checked: no default key"}, a.Delegated(context.Background(), "direct.example"))
}

// Delegation decides the From only: the envelope is judged by the lists and SPF.
func TestDelegatedDecision(t *testing.T) {
	s := dnstest.New(t, dkimZone(t)+`cname.example. TXT "v=spf1 -all"`)
	cfg := testConfig(s.Addr, ip4)
	signer := ed25519.NewKeyFromSeed(append([]byte{1}, make([]byte, ed25519.SeedSize-1)...))
	a := New(cfg, newResolver(t, cfg.DNS.Timeout.Duration, s.Addr), signer)
	d, err := policy.Decide(context.Background(), cfg, a, policy.Input{From: "news@cname.example", Envelope: "news@cname.example"})
	require.NoError(t, err)
	require.Equal(t, policy.DKIMDelegated, d.Reason)
	require.Equal(t, "news@cname.example", d.From)
	require.True(t, d.Delegated)
	require.Equal(t, "cname.example", d.DKIMDomain)
	require.Equal(t, "cname.example: dkim key published at default._domainkey.cname.example (via CNAME default._domainkey.relay.example.net)", d.Detail)
	require.True(t, d.EnvelopeRewritten)
	require.Equal(t, "noreply@relay.example.net", d.Envelope)
	require.Equal(t, "cname.example: not listed; spf fail for 203.0.113.10", d.EnvelopeDetail)
}
