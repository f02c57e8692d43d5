package signer

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/dnstest"
	"relay/internal/names"
)

func TestSignVerifies(t *testing.T) {
	k := genKeys(t)
	type keyFile struct {
		domain, selector string
		key              crypto.Signer
		pkcs1            bool
	}
	type want struct{ selector, algo string }
	tests := []struct {
		name   string
		keys   []keyFile
		domain string // passed to Sign
		d      string // expected d=
		// delegated publishes the default key under the signing domain, as a domain that
		// delegates to us (or the [dkim] domain) does.
		delegated bool
		want      []want
	}{
		{
			name:   "rsa2048 pkcs1",
			keys:   []keyFile{{"example.com", "s1", k.rsa1, true}},
			domain: "example.com", d: "example.com",
			want: []want{{"s1", "rsa-sha256"}},
		},
		{
			name:   "rsa2048 pkcs8",
			keys:   []keyFile{{"example.com", "s1", k.rsa1, false}},
			domain: "example.com", d: "example.com",
			want: []want{{"s1", "rsa-sha256"}},
		},
		{
			name:   "ed25519 pkcs8",
			keys:   []keyFile{{"example.com", "ed", k.ed1, false}},
			domain: "example.com", d: "example.com",
			want: []want{{"ed", "ed25519-sha256"}},
		},
		{
			// Configured RSA first: the Ed25519 signature must still come first.
			name:   "dual rsa and ed25519",
			keys:   []keyFile{{"example.com", "rsa", k.rsa1, false}, {"example.com", "ed", k.ed1, false}},
			domain: "example.com", d: "example.com",
			want: []want{{"ed", "ed25519-sha256"}, {"rsa", "rsa-sha256"}},
		},
		{
			name:   "default key for a domain without keys",
			keys:   []keyFile{{"example.com", "s1", k.rsa1, false}},
			domain: "other.example", d: "other.example", delegated: true,
			want: []want{{"default", "rsa-sha256"}},
		},
		{
			name:   "domain key matched case-insensitively (config upper case)",
			keys:   []keyFile{{"Example.COM", "s1", k.ed1, false}},
			domain: "example.com", d: "example.com",
			want: []want{{"s1", "ed25519-sha256"}},
		},
		{
			name:   "domain key matched case-insensitively (Sign upper case, final dot)",
			keys:   []keyFile{{"example.com", "s1", k.ed1, false}},
			domain: "EXAMPLE.com.", d: "example.com",
			want: []want{{"s1", "ed25519-sha256"}},
		},
		{
			name:   "IDN domain signs as its A-label",
			keys:   []keyFile{{"bücher.example", "s1", k.ed1, false}},
			domain: "xn--bcher-kva.example", d: "xn--bcher-kva.example",
			want: []want{{"s1", "ed25519-sha256"}},
		},
	}
	srv := dnstest.New(t, "") // one server, reloaded per case: fewer ports to bind
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := dkimConfig(writeKey(t, dir, "default.pem", k.rsa2, false))
			recs := []published{}
			for i, kf := range tc.keys {
				path := writeKey(t, dir, string(rune('a'+i))+".pem", kf.key, kf.pkcs1)
				cfg.Keys = append(cfg.Keys, config.DKIMKey{Domain: kf.domain, Selector: kf.selector, PrivateKey: path})
				d, err := names.Domain(kf.domain)
				require.NoError(t, err)
				recs = append(recs, published{d, kf.selector, kf.key.Public()})
			}
			if tc.delegated {
				recs = append(recs, published{tc.d, "default", k.rsa2.Public()})
			}
			require.NoError(t, srv.Load(zone(t, recs...)))
			s := newSigner(t, cfg)

			sig, err := s.Sign(t.Context(), tc.domain, message(2000))
			require.NoError(t, err)
			fs := fields(t, sig)
			require.Len(t, fs, len(tc.want))
			for i, w := range tc.want {
				tg := tags(t, fs[i])
				require.Equal(t, tc.d, tg["d"])
				require.Equal(t, w.selector, tg["s"])
				require.Equal(t, w.algo, tg["a"])
				require.Equal(t, "relaxed/relaxed", tg["c"])
			}

			vs := requireValid(t, srv, append(sig, message(2000)...), len(tc.want))
			for _, v := range vs {
				require.Equal(t, tc.d, v.Domain)
			}
		})
	}
}

func TestSignRejectsTampering(t *testing.T) {
	k := genKeys(t)
	dir := t.TempDir()
	cfg := dkimConfig(writeKey(t, dir, "default.pem", k.rsa2, false),
		config.DKIMKey{Domain: "example.com", Selector: "ed", PrivateKey: writeKey(t, dir, "ed.pem", k.ed1, false)},
		config.DKIMKey{Domain: "example.com", Selector: "rsa", PrivateKey: writeKey(t, dir, "rsa.pem", k.rsa1, false)})
	srv := dnstest.New(t, zone(t,
		published{"example.com", "ed", k.ed1.Public()},
		published{"example.com", "rsa", k.rsa1.Public()}))
	s := newSigner(t, cfg)
	signed := sign(t, s, "example.com", message(500))
	requireValid(t, srv, signed, 2)

	tests := []struct {
		name, old, new, err string
	}{
		{"body", "lazy dog", "lazy cat", "body hash did not verify"},
		{"signed header", "Subject: quarterly", "Subject: quarterlx", "signature did not verify"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := bytes.Replace(signed, []byte(tc.old), []byte(tc.new), 1)
			require.NotEqual(t, signed, bad)
			vs := verify(t, srv, bad)
			require.Len(t, vs, 2)
			for _, v := range vs {
				require.ErrorContains(t, v.Err, tc.err)
			}
		})
	}

	t.Run("unsigned header", func(t *testing.T) {
		// X-Mailer is not in h=: changing it must not matter, or the test above would
		// prove nothing about which headers are covered.
		ok := bytes.Replace(signed, []byte("X-Mailer: test"), []byte("X-Mailer: other"), 1)
		requireValid(t, srv, ok, 2)
	})
}

func TestOversignedFrom(t *testing.T) {
	k := genKeys(t)
	dir := t.TempDir()
	cfg := dkimConfig(writeKey(t, dir, "default.pem", k.ed2, false))
	srv := dnstest.New(t, zone(t, published{"example.com", "default", k.ed2.Public()}))
	s := newSigner(t, cfg)
	msg := message(100)
	signed := sign(t, s, "example.com", msg)

	vs := requireValid(t, srv, signed, 1)
	n := 0
	for _, h := range vs[0].HeaderKeys {
		if strings.EqualFold(h, "from") {
			n++
		}
	}
	require.Equal(t, 2, n, "h=%v: From once per field plus once more", vs[0].HeaderKeys)

	evil := "From: CEO <ceo@example.com>\r\n"
	sigLen := len(signed) - len(msg)
	headerEnd := bytes.Index(signed, []byte("\r\n\r\n")) + 2
	for name, forged := range map[string][]byte{
		"second From on top":    concat(signed[:sigLen], []byte(evil), msg),
		"second From at bottom": concat(signed[:headerEnd], []byte(evil), signed[headerEnd:]),
	} {
		t.Run(name, func(t *testing.T) {
			vs := verify(t, srv, forged)
			require.Len(t, vs, 1)
			require.ErrorContains(t, vs[0].Err, "signature did not verify")
		})
	}

	t.Run("control: without oversigning a From on top verifies", func(t *testing.T) {
		// Shows why oversigning is needed: go-msgauth picks header instances bottom-up,
		// so a signature with From listed once ignores a From added above the signed one.
		var b bytes.Buffer
		require.NoError(t, dkim.Sign(&b, bytes.NewReader(msg), &dkim.SignOptions{
			Domain: "example.com", Selector: "default", Signer: k.ed2,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
			HeaderKeys: []string{"From", "Subject"},
		}))
		plain := b.Bytes()
		sigEnd := len(plain) - len(msg)
		requireValid(t, srv, concat(plain[:sigEnd], []byte(evil), msg), 1)
	})
}

// TestOversignedReplyTo: on rewrite the relay adds a Reply-To with the real sender, the only
// way back to them, so a Reply-To added after signing must break the signature, whether
// the message had one or not.
func TestOversignedReplyTo(t *testing.T) {
	k := genKeys(t)
	dir := t.TempDir()
	cfg := dkimConfig(writeKey(t, dir, "default.pem", k.ed2, false))
	srv := dnstest.New(t, zone(t, published{"example.com", "default", k.ed2.Public()}))
	s := newSigner(t, cfg)

	evil := "Reply-To: <collect@attacker.example>\r\n"
	withReplyTo := []byte("Reply-To: Alice <alice@gmail.com>\r\n" + string(message(100)))
	for name, tc := range map[string]struct {
		msg  []byte
		want int // Reply-To entries in h=
	}{
		"message without Reply-To": {message(100), 1},
		"message with Reply-To":    {withReplyTo, 2},
	} {
		t.Run(name, func(t *testing.T) {
			signed := sign(t, s, "example.com", tc.msg)
			vs := requireValid(t, srv, signed, 1)
			n := 0
			for _, h := range vs[0].HeaderKeys {
				if strings.EqualFold(h, "reply-to") {
					n++
				}
			}
			require.Equal(t, tc.want, n, "h=%v: Reply-To once per field plus once more", vs[0].HeaderKeys)

			sigLen := len(signed) - len(tc.msg)
			headerEnd := bytes.Index(signed, []byte("\r\n\r\n")) + 2
			for where, forged := range map[string][]byte{
				"on top":    concat(signed[:sigLen], []byte(evil), tc.msg),
				"at bottom": concat(signed[:headerEnd], []byte(evil), signed[headerEnd:]),
			} {
				vs := verify(t, srv, forged)
				require.Len(t, vs, 1)
				require.ErrorContains(t, vs[0].Err, "signature did not verify", "Reply-To added %s", where)
			}
		})
	}

	t.Run("control: without oversigning a Reply-To on top verifies", func(t *testing.T) {
		var b bytes.Buffer
		require.NoError(t, dkim.Sign(&b, bytes.NewReader(withReplyTo), &dkim.SignOptions{
			Domain: "example.com", Selector: "default", Signer: k.ed2,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
			HeaderKeys: []string{"From", "From", "Reply-To", "Subject"},
		}))
		plain := b.Bytes()
		sigEnd := len(plain) - len(withReplyTo)
		requireValid(t, srv, concat(plain[:sigEnd], []byte(evil), withReplyTo), 1)
	})
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestSignedHeaderList(t *testing.T) {
	k := genKeys(t)
	dir := t.TempDir()
	def := writeKey(t, dir, "default.pem", k.ed2, false)
	srv := dnstest.New(t, zone(t, published{"example.com", "default", k.ed2.Public()}))

	tests := []struct {
		name    string
		headers []string // [dkim] headers
		header  string   // message header, CRLF-terminated lines
		want    string   // h=
	}{
		{
			name:   "default list, only present fields, From and Reply-To oversigned",
			header: testHeader,
			want:   "From:From:Reply-To:To:Subject:Date:Message-ID:MIME-Version:Content-Type",
		},
		{
			name: "every instance of a repeated field",
			header: "From: a@example.com\r\nTo: b@example.net\r\nCc: c@example.net\r\nTo: d@example.net\r\n" +
				"Received: x\r\nReceived: y\r\nReferences: <1@x>\r\nreferences: <2@x>\r\n",
			want: "From:From:Reply-To:To:To:Cc:References:References",
		},
		{
			name:   "names compare case-insensitively, white space before colon",
			header: "FROM: a@example.com\r\nsubject : hi\r\nlist-unsubscribe: <https://x/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
			want:   "From:From:Reply-To:Subject:List-Unsubscribe:List-Unsubscribe-Post",
		},
		{
			name:   "continuation lines are not fields",
			header: "From: a@example.com\r\nSubject: one\r\n To: not-a-field\r\n\tCc: neither\r\n",
			want:   "From:From:Reply-To:Subject",
		},
		{
			name:    "custom list: From added first and Reply-To after it, duplicates and DKIM-Signature dropped",
			headers: []string{"Subject", "x-campaign", "SUBJECT", "DKIM-Signature", "Cc"},
			header:  "X-Campaign: 7\r\nFrom: a@example.com\r\nSubject: s\r\nTo: b@example.net\r\n",
			want:    "From:From:Reply-To:Subject:x-campaign",
		},
		{
			name:    "custom list with From in the middle: Reply-To added right after it",
			headers: []string{"Subject", "from"},
			header:  "From: a@example.com\r\nSubject: s\r\n",
			want:    "Subject:from:from:Reply-To",
		},
		{
			name:    "custom list with Reply-To before From: configured order and spelling kept",
			headers: []string{"reply-TO", "Subject", "To"},
			header:  "From: a@example.com\r\nReply-To: r@example.net\r\nSubject: s\r\nTo: b@example.net\r\n",
			want:    "From:From:reply-TO:reply-TO:Subject:To",
		},
		{
			name:   "Reply-To present: once per field plus once more, other fields not oversigned",
			header: "From: a@example.com\r\nReply-To: r@example.net\r\nTo: b@example.net\r\nSubject: s\r\n",
			want:   "From:From:Reply-To:Reply-To:To:Subject",
		},
		{
			name:   "two Reply-To fields: three times",
			header: "From: a@example.com\r\nreply-to: r@example.net\r\nReply-To : q@example.net\r\n",
			want:   "From:From:Reply-To:Reply-To:Reply-To",
		},
		{
			name:   "no From at all: From and Reply-To still signed (as absent)",
			header: "Subject: s\r\n",
			want:   "From:Reply-To:Subject",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := dkimConfig(def)
			cfg.Headers = tc.headers
			s := newSigner(t, cfg)
			msg := []byte(tc.header + "\r\nbody\r\n")
			vs := requireValid(t, srv, sign(t, s, "example.com", msg), 1)
			require.Equal(t, tc.want, strings.Join(vs[0].HeaderKeys, ":"))
		})
	}
}

func TestExistingSignatureKept(t *testing.T) {
	k := genKeys(t)
	srv := dnstest.New(t, zone(t,
		published{"example.com", "default", k.ed2.Public()},
		published{"app.example", "up", k.ed1.Public()}))

	// The application signed the message itself, with every header field.
	var b bytes.Buffer
	require.NoError(t, dkim.Sign(&b, bytes.NewReader(message(300)), &dkim.SignOptions{
		Domain: "app.example", Selector: "up", Signer: k.ed1,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
	}))
	msg := b.Bytes()
	requireValid(t, srv, msg, 1)

	for name, headers := range map[string][]string{"default list": nil, "list naming DKIM-Signature": {"From", "DKIM-Signature"}} {
		t.Run(name, func(t *testing.T) {
			cfg := dkimConfig(writeKey(t, t.TempDir(), "default.pem", k.ed2, false))
			cfg.Headers = headers
			s := newSigner(t, cfg)
			sig, err := s.Sign(t.Context(), "example.com", msg)
			require.NoError(t, err)
			require.Len(t, fields(t, sig), 1, "only our own field is returned")
			require.NotContains(t, strings.ToLower(tags(t, fields(t, sig)[0])["h"]), "dkim-signature")

			vs := requireValid(t, srv, append(sig, msg...), 2)
			require.Equal(t, "example.com", vs[0].Domain)
			require.Equal(t, "app.example", vs[1].Domain)
		})
	}
}

func TestLFOnlyMessage(t *testing.T) {
	// The relay always passes CRLF (SMTP's line end). A message with bare LF still gets
	// the signature of its CRLF form, because both canonicalizations read LF as CRLF, so
	// it verifies once converted, which is what an SMTP client does when sending it.
	k := genKeys(t)
	dir := t.TempDir()
	s := newSigner(t, dkimConfig(writeKey(t, dir, "default.pem", k.rsa2, false),
		config.DKIMKey{Domain: "example.com", Selector: "ed", PrivateKey: writeKey(t, dir, "ed.pem", k.ed1, false)},
		config.DKIMKey{Domain: "example.com", Selector: "rsa", PrivateKey: writeKey(t, dir, "rsa.pem", k.rsa1, false)}))
	srv := dnstest.New(t, zone(t,
		published{"example.com", "ed", k.ed1.Public()},
		published{"example.com", "rsa", k.rsa1.Public()}))

	crlf := message(1000)
	lf := bytes.ReplaceAll(crlf, []byte("\r\n"), []byte("\n"))
	sig, err := s.Sign(t.Context(), "example.com", lf)
	require.NoError(t, err)
	fs := fields(t, sig)
	require.Len(t, fs, 2)
	require.Equal(t, "From:From:Reply-To:To:Subject:Date:Message-ID:MIME-Version:Content-Type", tags(t, fs[0])["h"])
	requireValid(t, srv, append(sig, crlf...), 2)
}

func TestHeaderOnlyMessage(t *testing.T) {
	// A message may have no body and so no empty line after the header (RFC 5322 §3.5).
	k := genKeys(t)
	s := newSigner(t, dkimConfig(writeKey(t, t.TempDir(), "default.pem", k.ed2, false)))
	srv := dnstest.New(t, zone(t, published{"example.com", "default", k.ed2.Public()}))
	for name, msg := range map[string]string{
		"last line ends with CRLF": "From: a@example.com\r\nSubject: s\r\n",
		"last line unterminated":   "From: a@example.com\r\nSubject: s",
	} {
		t.Run(name, func(t *testing.T) {
			sig, err := s.Sign(t.Context(), "example.com", []byte(msg))
			require.NoError(t, err)
			// go-msgauth's verifier needs the empty line too; the SMTP client adds the
			// missing CRLF, and an empty body hashes alike with or without it.
			sent := strings.TrimSuffix(msg, "\r\n") + "\r\n\r\n"
			vs := requireValid(t, srv, append(sig, sent...), 1)
			require.Equal(t, []string{"From", "From", "Reply-To", "Subject"}, vs[0].HeaderKeys)
		})
	}
}

func TestLargeBody(t *testing.T) {
	k := genKeys(t)
	dir := t.TempDir()
	s := newSigner(t, dkimConfig(writeKey(t, dir, "default.pem", k.rsa2, false),
		config.DKIMKey{Domain: "example.com", Selector: "ed", PrivateKey: writeKey(t, dir, "ed.pem", k.ed1, false)},
		config.DKIMKey{Domain: "example.com", Selector: "rsa", PrivateKey: writeKey(t, dir, "rsa.pem", k.rsa1, false)}))
	srv := dnstest.New(t, zone(t,
		published{"example.com", "ed", k.ed1.Public()},
		published{"example.com", "rsa", k.rsa1.Public()}))
	msg := message(100 << 10)
	require.GreaterOrEqual(t, len(msg), 100<<10)
	signed := sign(t, s, "example.com", msg)
	requireValid(t, srv, signed, 2)

	// The end of a large body is covered too (no l= tag, nothing truncated).
	bad := concat(signed[:len(signed)-10], []byte("tampered\r\n"))
	for _, v := range verify(t, srv, bad) {
		require.ErrorContains(t, v.Err, "body hash did not verify")
	}
}

func TestConcurrentSign(t *testing.T) {
	k := genKeys(t)
	dir := t.TempDir()
	s := newSigner(t, dkimConfig(writeKey(t, dir, "default.pem", k.rsa2, false),
		config.DKIMKey{Domain: "example.com", Selector: "ed", PrivateKey: writeKey(t, dir, "ed.pem", k.ed1, false)}))
	srv := dnstest.New(t, zone(t,
		published{"example.com", "ed", k.ed1.Public()},
		published{"other.example", "default", k.rsa2.Public()}))
	var wg sync.WaitGroup
	out := make([][]byte, 8)
	for i := range out {
		wg.Go(func() {
			d := "example.com"
			if i%2 == 1 {
				d = "other.example"
			}
			sig, err := s.Sign(t.Context(), d, message(3000))
			if err == nil {
				out[i] = append(sig, message(3000)...)
			}
		})
	}
	wg.Wait()
	for _, m := range out {
		require.NotNil(t, m)
		requireValid(t, srv, m, 1)
	}
}

// failingKey is an Ed25519 key whose signing fails, as a hardware or remote key might.
type failingKey struct{ ed25519.PrivateKey }

var errKeyFault = errors.New("key unavailable")

func (failingKey) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) { return nil, errKeyFault }

func TestSignErrors(t *testing.T) {
	k := genKeys(t)
	s := newSigner(t, dkimConfig(writeKey(t, t.TempDir(), "default.pem", k.ed2, false)))
	broken := &Signer{
		def:     []key{{selector: "bad", algo: algoEd25519, signer: failingKey{k.ed1.(ed25519.PrivateKey)}}},
		headers: s.headers,
	}
	type smtpReplier interface {
		SMTPReply() (int, [3]int, string)
	}
	tests := []struct {
		name   string
		s      *Signer
		domain string
		err    string
	}{
		{"no domain", s, "", "dkim sign: no signing domain"},
		{"invalid domain", s, "exa\u2028mple.com", "dkim sign: domain"},
		{"key fault", broken, "Example.com", "dkim sign d=example.com s=bad: key unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := tc.s.Sign(t.Context(), tc.domain, message(100))
			require.Nil(t, sig)
			require.ErrorContains(t, err, tc.err)
			var r smtpReplier
			require.False(t, errors.As(err, &r), "Sign errors are internal faults (451 4.3.0), not replies")
		})
	}
	_, err := broken.Sign(t.Context(), "example.com", message(100))
	require.ErrorIs(t, err, errKeyFault)
}

// TestNewErrors: New takes the keys config.Load loaded (their files, selectors and
// domains are checked there: internal/config's bad-config cases); it refuses a section
// whose keys were not loaded, and header names no DKIM-Signature can carry.
func TestNewErrors(t *testing.T) {
	k := genKeys(t)
	good := writeKey(t, t.TempDir(), "good.pem", k.ed1, false)
	tests := []struct {
		name string
		cfg  config.DKIM
		err  string
	}{
		{"default key not loaded", dkimConfig(good), "dkim.private_key: no key loaded"},
		{"domain key not loaded", func() config.DKIM {
			c := loaded(t, dkimConfig(good))
			c.Keys = []config.DKIMKey{{Domain: "example.com", Selector: "a", PrivateKey: good}}
			return c
		}(), "dkim.keys[0].private_key: no key loaded"},
		{"header name with a colon", func() config.DKIM {
			c := loaded(t, dkimConfig(good))
			c.Headers = []string{"From", "Subject:"}
			return c
		}(), `dkim.headers[1]: "Subject:" is not a header field name`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.cfg)
			require.Nil(t, s)
			require.ErrorContains(t, err, tc.err)
		})
	}
}

func TestKeys(t *testing.T) {
	k := genKeys(t)
	dir := t.TempDir()
	s := newSigner(t, dkimConfig(writeKey(t, dir, "default.pem", k.rsa2, true),
		config.DKIMKey{Domain: "example.com", Selector: "rsa", PrivateKey: writeKey(t, dir, "rsa.pem", k.rsa1, false)},
		config.DKIMKey{Domain: "example.com", Selector: "ed", PrivateKey: writeKey(t, dir, "ed.pem", k.ed1, false)}))

	require.Equal(t, []KeyInfo{
		{Domain: "example.com", Selector: "ed", Algo: "ed25519-sha256", Public: k.ed1.Public()},
		{Domain: "example.com", Selector: "rsa", Algo: "rsa-sha256", Public: k.rsa1.Public()},
	}, s.Keys("Example.COM"))
	require.Equal(t, []KeyInfo{
		{Domain: "other.example", Selector: "default", Algo: "rsa-sha256", Public: k.rsa2.Public()},
	}, s.Keys("other.example"))
	require.Nil(t, s.Keys(""))

	require.True(t, dkimkey.Equal(s.DefaultPublicKey(), k.rsa2.Public()))
	require.False(t, dkimkey.Equal(s.DefaultPublicKey(), k.rsa1.Public()))
	require.Equal(t, "default", s.DefaultSelector())
}
