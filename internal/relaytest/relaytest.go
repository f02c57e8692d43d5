// Package relaytest holds the fixture the end-to-end tests of internal/server and
// cmd/relay share: the repository's test keys, the DNS zone that publishes them (with an
// SPF record that authorizes the relay and a domain that delegates DKIM to it), a base
// configuration, and a DKIM check of what the upstream received against that zone.
package relaytest

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"relay/internal/dkimkey"
)

// Root is the repository's root directory.
var Root = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}()

// The test keys shipped for config.example.toml.
var (
	KeyDefault    = filepath.Join(Root, "testdata/keys/default.pem")
	KeyExampleEd  = filepath.Join(Root, "testdata/keys/example.com.ed25519.pem")
	KeyExampleRSA = filepath.Join(Root, "testdata/keys/example.com.rsa.pem")
)

// Zone is the DNS the tests' relay and DKIM verifier see: the relay's keys, an SPF record
// that authorizes the relay's sending IP, and a domain that delegates DKIM to the relay.
func Zone(t testing.TB) string {
	t.Helper()
	rec := func(name, path string) string {
		k, err := dkimkey.Load(path)
		require.NoError(t, err)
		r, err := dkimkey.Record(k.Public())
		require.NoError(t, err)
		return fmt.Sprintf("%s 300 IN TXT %s\n", name, TXTStrings(r))
	}
	return rec("default._domainkey.example.net.", KeyDefault) +
		rec("s2026._domainkey.example.com.", KeyExampleEd) +
		rec("s2026r._domainkey.example.com.", KeyExampleRSA) +
		"spf-ok.example. 300 IN TXT \"v=spf1 ip4:203.0.113.10 -all\"\n" +
		"softfail.example. 300 IN TXT \"v=spf1 ~all\"\n" +
		"default._domainkey.delegated.example. 300 IN CNAME default._domainkey.example.net.\n"
}

// TXTStrings writes s as the quoted strings of a TXT record in zone-file form.
func TXTStrings(s string) string {
	var parts []string
	for len(s) > 200 {
		parts = append(parts, `"`+s[:200]+`"`)
		s = s[200:]
	}
	return strings.Join(append(parts, `"`+s+`"`), " ")
}

// Config returns BaseConfig filled in: the upstream and DNS server addresses, the queue
// mode and the spool directory.
func Config(upstream, dnsAddr, mode, spool string) string {
	return fmt.Sprintf(BaseConfig, upstream, dnsAddr, mode, KeyDefault, KeyExampleEd, KeyExampleRSA, spool)
}

// MsgTmpl is a plain message; its verb is the From header value.
const MsgTmpl = "From: %s\r\n" +
	"To: bob@dest.example\r\n" +
	"Subject: quarterly report\r\n" +
	"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n" +
	"Message-ID: <abc123@app.test>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n" +
	"Hello Bob,\r\n" +
	".leading dot line\r\n" +
	"the numbers are attached.\r\n"

// BaseConfig is the relay configuration the end-to-end tests start from; its verbs are
// the upstream address, the DNS server, the queue mode, the three keys and the spool.
const BaseConfig = `
hostname = "relay.test"
[smtp]
listen = "127.0.0.1:0"
max_message_bytes = 200000
max_recipients = 5
[[users]]
name = "crm"
password_hash = "$2a$04$YiCXWcuvbVHT7UE6MfjNjOFr/lPEgokdSIA8njNclTMXc1z1MndZC"
unit = "sales"
[sender]
allowed_domains = ["example.com", "*.example.com"]
fallback = "noreply@example.net"
display_name = "{name} via Example"
[[units]]
name = "sales"
fallback = "sales@example.com"
allowed_domains = ["partner.example"]
[[units]]
name = "support"
fallback = "help@example.net"
[spf]
enabled = true
sending_ips = ["203.0.113.10"]
timeout = "2s"
[dns]
servers = ["%[2]s"]
timeout = "500ms"
[dkim]
selector = "default"
private_key = "%[4]s"
domain = "example.net"
[[dkim.keys]]
domain = "example.com"
selector = "s2026"
private_key = "%[5]s"
[[dkim.keys]]
domain = "example.com"
selector = "s2026r"
private_key = "%[6]s"
[upstream]
address = "%[1]s"
tls = "none"
max_connections = 4
timeout = "10s"
[queue]
mode = "%[3]s"
dir = "%[7]s"
retry_min = "50ms"
retry_max = "200ms"
`

// VerifyDKIM checks every signature of msg against the DNS server at dnsAddr and returns
// the d= of each valid one; a message without a signature, or with an invalid one, fails
// the test.
func VerifyDKIM(t testing.TB, dnsAddr string, msg []byte) []string {
	t.Helper()
	lookup := func(name string) ([]string, error) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
		r, _, err := c.ExchangeContext(context.Background(), m, dnsAddr)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, rr := range r.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(txt.Txt, ""))
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("no TXT at %s", name)
		}
		return out, nil
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookup})
	require.NoError(t, err)
	require.NotEmpty(t, vs, "message carries no DKIM signature")
	var ds []string
	for _, v := range vs {
		require.NoError(t, v.Err, "signature d=%s", v.Domain)
		ds = append(ds, v.Domain)
	}
	return ds
}
