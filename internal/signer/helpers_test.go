package signer

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/dnstest"
	"relay/internal/names"
)

// testKeys are made once per test binary: RSA-2048 generation is the slow part of the
// package's tests. Two keys of each type so a test can tell a domain key from the default.
type testKeys struct {
	rsa1, rsa2 crypto.Signer
	ed1, ed2   crypto.Signer
}

var keysOnce = sync.OnceValues(func() (testKeys, error) {
	var k testKeys
	var err error
	for _, p := range []struct {
		dst  *crypto.Signer
		typ  string
		bits int
	}{{&k.rsa1, "rsa", 2048}, {&k.rsa2, "rsa", 2048}, {&k.ed1, "ed25519", 0}, {&k.ed2, "ed25519", 0}} {
		if *p.dst, err = dkimkey.Generate(p.typ, p.bits); err != nil {
			return k, err
		}
	}
	return k, nil
})

func genKeys(t testing.TB) testKeys {
	t.Helper()
	k, err := keysOnce()
	require.NoError(t, err)
	return k
}

// writeKey stores key as PEM in dir: PKCS#1 ("RSA PRIVATE KEY") when pkcs1, else PKCS#8.
func writeKey(t testing.TB, dir, name string, key crypto.Signer, pkcs1 bool) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if pkcs1 {
		der := x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}), 0o600))
	} else {
		require.NoError(t, dkimkey.Write(path, key))
	}
	return path
}

// published is one DKIM key record in the test zone.
type published struct {
	domain, selector string
	pub              crypto.PublicKey
}

// zone is RFC 1035 zone text publishing recs as TXT records made with dkimkey.Record. The
// text is cut into strings of at most 255 octets (RFC 1035 §3.3.14): a 2048-bit RSA key
// does not fit in one.
func zone(t testing.TB, recs ...published) string {
	t.Helper()
	var b strings.Builder
	for _, r := range recs {
		txt, err := dkimkey.Record(r.pub)
		require.NoError(t, err)
		fmt.Fprintf(&b, "%s._domainkey.%s. 300 IN TXT", r.selector, r.domain)
		for len(txt) > 0 {
			n := min(len(txt), 255)
			fmt.Fprintf(&b, " %q", txt[:n])
			txt = txt[n:]
		}
		b.WriteString("\n")
	}
	return b.String()
}

// lookupTXT asks the DNS server at addr, as a resolver would: UDP with EDNS0, TCP when the
// answer is truncated. Strings of one record are joined (RFC 6376 §3.6.2.2).
func lookupTXT(addr string) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		m.SetEdns0(4096, false)
		r, _, err := new(dns.Client).Exchange(m, addr)
		if err == nil && r.Truncated {
			r, _, err = (&dns.Client{Net: "tcp"}).Exchange(m, addr)
		}
		if err != nil {
			return nil, err
		}
		if r.Rcode != dns.RcodeSuccess {
			return nil, fmt.Errorf("lookup %s: %s", name, dns.RcodeToString[r.Rcode])
		}
		var out []string
		for _, rr := range r.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(txt.Txt, ""))
			}
		}
		return out, nil
	}
}

// verify checks every signature of msg with go-msgauth against srv.
func verify(t testing.TB, srv *dnstest.Server, msg []byte) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookupTXT(srv.Addr)})
	require.NoError(t, err)
	return vs
}

// requireValid asserts that msg carries exactly n signatures and that all verify.
func requireValid(t testing.TB, srv *dnstest.Server, msg []byte, n int) []*dkim.Verification {
	t.Helper()
	vs := verify(t, srv, msg)
	require.Len(t, vs, n)
	for i, v := range vs {
		require.NoError(t, v.Err, "signature %d (d=%s)", i, v.Domain)
	}
	return vs
}

// fields splits the output of Sign into its header fields, checking that every line ends
// with CRLF and that continuation lines are folded with white space.
func fields(t testing.TB, sig []byte) []string {
	t.Helper()
	require.True(t, bytes.HasSuffix(sig, []byte("\r\n")), "signature must end with CRLF: %q", sig)
	var out []string
	for _, line := range strings.SplitAfter(string(sig), "\r\n") {
		if line == "" {
			continue
		}
		require.NotContains(t, strings.TrimSuffix(line, "\r\n"), "\n", "bare LF in %q", line)
		require.NotContains(t, strings.TrimSuffix(line, "\r\n"), "\r", "bare CR in %q", line)
		if line[0] == ' ' || line[0] == '\t' {
			require.NotEmpty(t, out, "continuation line first")
			out[len(out)-1] += line
			continue
		}
		require.True(t, strings.HasPrefix(line, "DKIM-Signature:"), "unexpected field %q", line)
		out = append(out, line)
	}
	return out
}

// tags parses one DKIM-Signature field into its tag=value pairs, with folding white space
// removed (RFC 6376 §3.2).
func tags(t testing.TB, field string) map[string]string {
	t.Helper()
	_, v, ok := strings.Cut(field, ":")
	require.True(t, ok)
	m := map[string]string{}
	for _, p := range strings.Split(v, ";") {
		p = strings.Join(strings.Fields(p), "")
		if p == "" {
			continue
		}
		k, val, ok := strings.Cut(p, "=")
		require.True(t, ok, "tag %q", p)
		m[k] = val
	}
	return m
}

const testHeader = "Received: from app.example.com by relay.example.net; Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
	"From: Alice <alice@example.com>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: quarterly\r\n\tnumbers\r\n" +
	"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"X-Mailer: test\r\n"

// message is testHeader with a body of about size octets of text lines.
func message(size int) []byte {
	var b bytes.Buffer
	b.WriteString(testHeader)
	b.WriteString("\r\n")
	for i := 0; b.Len() < len(testHeader)+size; i++ {
		fmt.Fprintf(&b, "line %d: the quick brown fox jumps over the lazy dog  \t\r\n", i)
	}
	return b.Bytes()
}

// dkimConfig is a [dkim] section with the default key at defPath and selector "default".
func dkimConfig(defPath string, ks ...config.DKIMKey) config.DKIM {
	return config.DKIM{Selector: "default", PrivateKey: defPath, Keys: ks}
}

func newSigner(t testing.TB, cfg config.DKIM) *Signer {
	t.Helper()
	s, err := New(loaded(t, cfg))
	require.NoError(t, err)
	return s
}

// loaded does to cfg what config.Load does: it loads the keys from their files and
// normalises the domains.
func loaded(t testing.TB, cfg config.DKIM) config.DKIM {
	t.Helper()
	var err error
	if cfg.PrivateKey != "" {
		cfg.Signer, err = dkimkey.Load(cfg.PrivateKey)
		require.NoError(t, err)
	}
	cfg.Keys = slices.Clone(cfg.Keys)
	for i := range cfg.Keys {
		k := &cfg.Keys[i]
		k.Signer, err = dkimkey.Load(k.PrivateKey)
		require.NoError(t, err)
		k.Domain, err = names.Domain(k.Domain)
		require.NoError(t, err)
	}
	return cfg
}

func sign(t testing.TB, s *Signer, domain string, msg []byte) []byte {
	t.Helper()
	sig, err := s.Sign(t.Context(), domain, msg)
	require.NoError(t, err)
	return append(sig, msg...)
}

// headerShapes are the ways a header of many lines is split, for the cost tests and
// benchmarks: continuation lines of one signed field, separate unsigned fields, and
// separate signed fields (each one more h= entry to pick).
var headerShapes = []struct{ name, first, line string }{
	{"folded", "Subject: x\r\n", " y\r\n"},
	{"fields", "", "X-A: b\r\n"},
	{"signed", "", "To: b@example.net\r\n"},
}

// manyLines is a message whose header is From and n lines of shape after first, with a
// one-line body.
func manyLines(first, line string, n int) []byte {
	var b bytes.Buffer
	b.Grow(len(first) + n*len(line) + 64)
	b.WriteString("From: a@example.com\r\n")
	b.WriteString(first)
	for range n {
		b.WriteString(line)
	}
	b.WriteString("\r\nbody\r\n")
	return b.Bytes()
}
