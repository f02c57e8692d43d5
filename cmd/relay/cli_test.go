package main

import (
	"bytes"
	"crypto/rsa"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/dnstest"
	"relay/internal/doctor"
	"relay/internal/relaytest"
)

// runCLI runs the relay's command line in-process from the repository root, where
// config.example.toml finds its keys.
func runCLI(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

const example = "../../config.example.toml"

func TestSendDryRunHuman(t *testing.T) {
	code, out, errs := runCLI(t, "", "send", "-config", example, "-dry-run", "-from", "alice@gmail.com")
	require.Equal(t, 0, code, errs)
	require.Equal(t, `from:      alice@gmail.com
effective: "alice at gmail.com via Example" <noreply@example.net>
envelope:  noreply@example.net
reply-to:  <alice@gmail.com>
reason:    fallback-global (gmail.com: not listed)
dkim:      d=example.net s=default
`, out)

	code, out, errs = runCLI(t, "", "send", "-config", example, "-dry-run", "-unit", "sales", "-from", "alice@gmail.com")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "effective: \"alice at gmail.com via Example\" <sales@example.com>\n")
	require.Contains(t, out, "reason:    fallback-unit (gmail.com: not listed)\n")
	require.Contains(t, out, "dkim:      d=example.com s=s2026,s2026r\n")
}

func TestSendDryRunJSON(t *testing.T) {
	code, out, errs := runCLI(t, "", "send", "-config", example, "-dry-run", "-json", "-from", "alice@example.com")
	require.Equal(t, 0, code, errs)
	var got map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	require.Equal(t, map[string]any{
		"from_original":  "alice@example.com",
		"from_effective": "alice@example.com",
		"envelope_from":  "alice@example.com",
		"reply_to":       "",
		"rewritten":      false,
		"reason":         "allowed-domain",
		"detail":         "example.com: listed in [sender] allowed_domains",
		"unit":           "",
		"dkim_domain":    "example.com",
		"dkim_selector":  "s2026,s2026r",
	}, got)
}

func TestSendDryRunMessage(t *testing.T) {
	msg := "From: Alice <alice@gmail.com>\nTo: bob@dest.example\nBcc: hidden@dest.example\nSubject: hi\n\nbody\n"
	code, out, errs := runCLI(t, msg, "send", "-config", example, "-dry-run", "-message", "-")
	require.Equal(t, 0, code, errs)
	require.True(t, strings.HasPrefix(out, "DKIM-Signature: "), out)
	require.Contains(t, out, "\r\nFrom: \"Alice via Example\" <noreply@example.net>\r\n")
	require.Contains(t, out, "\r\nReply-To: \"Alice\" <alice@gmail.com>\r\n")
	require.NotContains(t, out, "Bcc:")
	require.True(t, strings.HasSuffix(out, "\r\n\r\nbody\r\n"))
	require.Contains(t, errs, "reason:    fallback-global")
}

func TestSendErrors(t *testing.T) {
	code, _, errs := runCLI(t, "", "send", "-config", example, "-dry-run", "-unit", "marketing", "-from", "a@gmail.com")
	require.Equal(t, 1, code)
	require.Contains(t, errs, `unknown business unit "marketing"`)

	code, _, errs = runCLI(t, "", "send", "-config", example, "-dry-run", "-from", "not an address")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "email address")

	code, _, errs = runCLI(t, "", "send", "-config", example, "-from", "a@example.com")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "-to")

	code, _, errs = runCLI(t, "From: a@x.example\nFrom: b@x.example\n\nbody\n", "send", "-config", example, "-dry-run", "-message", "-")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "From")
}

func TestSendDelivers(t *testing.T) {
	dir := t.TempDir()
	cfg, err := os.ReadFile(example)
	require.NoError(t, err)
	keys, _ := filepath.Abs("../../testdata/keys")
	text := strings.ReplaceAll(string(cfg), `"testdata/keys/`, `"`+keys+`/`)
	path := filepath.Join(dir, "relay.toml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))

	code, out, errs := runCLI(t, "", "send", "-config", path, "-from", "alice@example.com", "-to", "bob@dest.example")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "as alice@example.com (allowed-domain)")
	emls, _ := filepath.Glob(filepath.Join(dir, "outbox", "*.eml"))
	require.Len(t, emls, 1)
}

func TestCheck(t *testing.T) {
	code, out, errs := runCLI(t, "", "check", "-config", example)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "configuration is valid")
	require.Contains(t, out, "default._domainkey.example.net")
	require.NotContains(t, out, "$2a$")
	// The record each configured key needs, as the key itself makes it.
	cfg, err := config.Load(example)
	require.NoError(t, err)
	rec, err := dkimkey.Record(cfg.DKIM.Signer.Public())
	require.NoError(t, err)
	require.Contains(t, out, "  "+doctor.TXT("dkim", "", "default._domainkey.example.net", rec).Zone+"\n")
	for _, k := range cfg.DKIM.Keys {
		require.Contains(t, out, "  "+k.Selector+"._domainkey."+k.Domain+". IN TXT \"v=DKIM1;")
	}

	bad := filepath.Join(t.TempDir(), "bad.toml")
	require.NoError(t, os.WriteFile(bad, []byte("[smtp]\nlisten = \"127.0.0.1:2525\"\nallow_netwoks = []\n[sender]\nfallback = \"nope\"\n"), 0o600))
	code, _, errs = runCLI(t, "", "check", "-config", bad)
	require.Equal(t, 1, code)
	require.Contains(t, errs, "bad.toml:3")
	require.Contains(t, errs, "allow_netwoks")
	require.Contains(t, errs, "sender.fallback")
}

func TestKeygen(t *testing.T) {
	for _, typ := range []string{"ed25519", "rsa"} {
		out := filepath.Join(t.TempDir(), "k.pem")
		code, stdout, errs := runCLI(t, "", "keygen", "-type", typ, "-out", out, "-selector", "s1", "-domain", "example.org")
		require.Equal(t, 0, code, errs)
		fi, err := os.Stat(out)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		k, err := dkimkey.Load(out)
		require.NoError(t, err)
		rec, err := dkimkey.Record(k.Public())
		require.NoError(t, err)
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		require.Len(t, lines, 2, stdout)
		require.True(t, strings.HasPrefix(lines[0], "s1._domainkey.example.org. IN TXT "))
		require.Equal(t, "s1._domainkey.customer.example. IN CNAME s1._domainkey.example.org.", lines[1])
		var joined string
		for _, m := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(lines[0], -1) {
			require.LessOrEqual(t, len(m[1]), 255, "a TXT string holds at most 255 octets")
			joined += m[1]
		}
		require.Equal(t, rec, joined)

		code, _, errs = runCLI(t, "", "keygen", "-type", typ, "-out", out)
		require.Equal(t, 1, code, "must refuse to overwrite")
		require.Contains(t, errs, "exists")
	}
	code, _, _ := runCLI(t, "", "keygen", "-type", "dsa", "-out", filepath.Join(t.TempDir(), "x"))
	require.Equal(t, 1, code)
	code, _, errs := runCLI(t, "", "keygen", "-bits", "512", "-out", filepath.Join(t.TempDir(), "x"))
	require.Equal(t, 1, code)
	require.Contains(t, errs, "too short")

	// The default is RSA 2048, which every receiver verifies.
	out := filepath.Join(t.TempDir(), "k.pem")
	code, stdout, errs := runCLI(t, "", "keygen", "-out", out)
	require.Equal(t, 0, code, errs)
	require.True(t, strings.HasPrefix(stdout, "default._domainkey IN TXT "), stdout)
	k, err := dkimkey.Load(out)
	require.NoError(t, err)
	rk, ok := k.Public().(*rsa.PublicKey)
	require.True(t, ok, "default key type is RSA")
	require.Equal(t, 2048, rk.N.BitLen())
}

func TestHashPassword(t *testing.T) {
	code, out, errs := runCLI(t, "s3cret\n", "hash-password")
	require.Equal(t, 0, code, errs)
	require.NoError(t, bcrypt.CompareHashAndPassword([]byte(strings.TrimSpace(out)), []byte("s3cret")))
	code, _, _ = runCLI(t, "", "hash-password")
	require.Equal(t, 1, code)
}

func TestUsage(t *testing.T) {
	code, _, errs := runCLI(t, "", "frobnicate")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "unknown command")
	code, _, _ = runCLI(t, "")
	require.Equal(t, 2, code)
}

// The live checks show in the dry-run output with their details (issue: live
// authorization): a real DNS server on loopback serves the SPF and delegation records.
func TestSendDryRunLiveChecks(t *testing.T) {
	dns := dnstest.New(t, relaytest.Zone(t))
	dir := t.TempDir()
	path := filepath.Join(dir, "relay.toml")
	text := relaytest.Config("127.0.0.1:9", dns.Addr, "direct", filepath.Join(dir, "spool"))
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))

	for _, tc := range []struct{ from, want string }{
		{"app@spf-ok.example", "effective: app@spf-ok.example\nenvelope:  app@spf-ok.example\nreply-to:  (none)\n" +
			"reason:    spf-pass (spf-ok.example: spf pass for 203.0.113.10)\ndkim:      d=example.net s=default\n"},
		{"news@delegated.example", "effective: news@delegated.example\nenvelope:  noreply@example.net\nreply-to:  (none)\n" +
			"reason:    dkim-delegated (delegated.example: dkim key published at default._domainkey.delegated.example (via CNAME default._domainkey.example.net))\n" +
			"dkim:      d=delegated.example s=default\n"},
		{"alice@softfail.example", "reason:    fallback-global (softfail.example: not listed; spf softfail for 203.0.113.10; no DKIM record at default._domainkey.softfail.example)\n"},
	} {
		code, out, errs := runCLI(t, "", "send", "-config", path, "-dry-run", "-from", tc.from)
		require.Equal(t, 0, code, errs)
		require.Contains(t, out, tc.want)
	}
}

// relay dns: exit 0 when every domain is ready, 1 when one is not, 2 when the DNS could
// not be asked (naming the domain and the resolver) or on bad usage; -json has the same
// facts.
func TestDNS(t *testing.T) {
	dns := dnstest.New(t, relaytest.Zone(t))
	dir := t.TempDir()
	path := filepath.Join(dir, "relay.toml")
	text := relaytest.Config("127.0.0.1:9", dns.Addr, "direct", filepath.Join(dir, "spool"))
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))

	code, out, errs := runCLI(t, "", "dns", "-config", path, "spf-ok.example", "delegated.example")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "spf-ok.example: ready: the relay sends as this domain (spf-pass)\n")
	require.Contains(t, out, "delegated.example: ready: the relay sends as this domain (dkim-delegated)\n")

	code, out, errs = runCLI(t, "", "dns", "-config", path, "spf-ok.example", "softfail.example")
	require.Equal(t, 1, code, errs)
	require.Contains(t, out, "softfail.example: not ready: the relay falls back to noreply@example.net (fallback-global)\n")
	require.Contains(t, out, `softfail.example. IN TXT "v=spf1 ip4:203.0.113.10 ~all"`)

	code, out, errs = runCLI(t, "", "dns", "-config", path, "-json", "softfail.example")
	require.Equal(t, 1, code, errs)
	var res struct {
		ExitCode int `json:"exit_code"`
		Domains  []struct {
			Domain, Status string
			Publish        []struct{ Kind, Name, Type, Value string }
		} `json:"domains"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, 1, res.ExitCode)
	require.Equal(t, "softfail.example", res.Domains[0].Domain)
	require.Equal(t, "not-ready", res.Domains[0].Status)
	require.Equal(t, "v=spf1 ip4:203.0.113.10 ~all", res.Domains[0].Publish[0].Value)

	code, _, errs = runCLI(t, "", "dns", "-config", path, "not a domain")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "is not a domain name")

	dns.SetSilent(true)
	start := time.Now()
	code, out, errs = runCLI(t, "", "dns", "-config", path, "spf-ok.example")
	require.Equal(t, 2, code, out)
	require.Less(t, time.Since(start), 5*time.Second, "bounded by [spf] timeout + 2 x [dns] timeout")
	require.Contains(t, errs, "the DNS could not be asked")
	require.Contains(t, errs, "spf-ok.example")
	require.Contains(t, errs, dns.Addr)
	require.NotContains(t, out, "spf-ok.example: not ready")
	require.Contains(t, out, "spf-ok.example: unknown: a DNS lookup failed")
}
