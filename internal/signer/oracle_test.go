package signer

import (
	"crypto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
)

// msgauthSign is what Sign returned when it used go-msgauth's dkim.Signer: the reference
// the relay's own signing (dkim.go) must match byte for byte.
func msgauthSign(t testing.TB, domain string, ks []key, msg []byte, hkeys []string) []byte {
	t.Helper()
	var out []byte
	for _, k := range ks {
		sg, err := dkim.NewSigner(&dkim.SignOptions{
			Domain: domain, Selector: k.selector, Signer: k.signer, Hash: crypto.SHA256,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             hkeys,
		})
		require.NoError(t, err)
		_, err = sg.Write(msg)
		require.NoError(t, err)
		require.NoError(t, sg.Close())
		out = append(out, sg.Signature()...)
	}
	return out
}

// sameAsMsgauth signs msg both ways within one second (t= has seconds) and compares.
func sameAsMsgauth(t testing.TB, s *Signer, domain string, msg []byte) {
	t.Helper()
	hkeys, complete := s.headers.keys(msg)
	if !complete {
		msg = concat(msg, terminator(msg))
	}
	ks := s.keys(domain)
	for {
		start := time.Now().Unix()
		want := msgauthSign(t, domain, ks, msg, hkeys)
		got, err := dkimSign(newMeter(t.Context()), domain, ks, msg, hkeys, time.Now())
		require.NoError(t, err)
		if time.Now().Unix() != start {
			continue // a second boundary: t= may differ
		}
		require.Equal(t, string(want), string(got))
		return
	}
}

// The relay's signing produces go-msgauth's DKIM-Signature fields exactly, for RSA and
// Ed25519 and both at once, on the messages that exercise canonicalization.
func TestSignMatchesGoMsgauth(t *testing.T) {
	k := genKeys(t)
	dir := t.TempDir()
	s := newSigner(t, dkimConfig(writeKey(t, dir, "default.pem", k.rsa1, false),
		config.DKIMKey{Domain: "dual.example", Selector: "ed", PrivateKey: writeKey(t, dir, "ed.pem", k.ed1, false)},
		config.DKIMKey{Domain: "dual.example", Selector: "rsa", PrivateKey: writeKey(t, dir, "rsa.pem", k.rsa2, false)}))
	for name, msg := range map[string]string{
		"plain":            string(message(3000)),
		"whitespace":       "From: a@example.com\r\nSubject:  two  spaces \t\r\n\r\n  lead\t\ttabs  \r\nx \r\n\r\n\r\n",
		"bare LF":          "From: a@example.com\nTo: b@example.net\n\nlf body\nline \n\n",
		"bare CR":          "From: a@example.com\r\n\r\na\rb \r c\r\r\n\r",
		"folded":           "From: a@example.com\r\nSubject: one\r\n two\r\n\tthree\r\n\r\nbody",
		"repeated fields":  "X: 1\r\nfrom : a@example.com\r\nFROM:b@example.com\r\n\tfolded\r\nReply-To: r@x\r\nreply-to : q@x\r\n\r\nbody\r\n",
		"no colon":         "From\r\nno colon\r\n\r\n",
		"header only":      "From: a@example.com\r\nSubject: s",
		"empty body":       "From: a@example.com\r\n\r\n",
		"whitespace body":  "From: a@example.com\r\n\r\n \t \r\n\r\n",
		"non-ASCII":        "From: ü <u@example.com>\r\nSubject: =?utf-8?q?x?= é\r\n\r\nnaïve body ü\r\n",
		"long h= and tags": "From: a@example.com\r\nTo: b\r\nCc: c\r\nSubject: s\r\nDate: d\r\nMessage-ID: <m>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nx\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			for _, d := range []string{"example.com", "dual.example"} {
				sameAsMsgauth(t, s, d, []byte(msg))
			}
		})
	}
}

// FuzzSignMatchesGoMsgauth: for any message, the relay's signing and go-msgauth's write
// the same field (Ed25519: the signature is deterministic and cheap).
func FuzzSignMatchesGoMsgauth(f *testing.F) {
	for _, seed := range signSeeds() {
		f.Add([]byte(seed))
	}
	k := genKeys(f)
	s := newSigner(f, dkimConfig(writeKey(f, f.TempDir(), "default.pem", k.ed1, false)))
	f.Fuzz(func(t *testing.T, msg []byte) {
		sameAsMsgauth(t, s, "example.com", msg)
	})
}

// Headers of many lines, the shapes whose canonicalization was quadratic, still give
// go-msgauth's fields exactly: long folded fields, many instances of signed fields in
// mixed case and order, and names that match only under Unicode case folding (ſ is s).
// go-msgauth is itself quadratic in them, hence 2,000 lines and not more.
func TestSignManyLinesMatchesGoMsgauth(t *testing.T) {
	s := newSigner(t, dkimConfig(writeKey(t, t.TempDir(), "default.pem", genKeys(t).ed1, false)))
	mixed := strings.Repeat("To: 1\r\nfrom: a@example.com\r\nX-A: b\r\nTO : 2\r\n\tfolded \t\r\nſubject: s\r\nReply-To: r\r\n", 300)
	for _, sh := range headerShapes {
		t.Run(sh.name, func(t *testing.T) {
			sameAsMsgauth(t, s, "example.com", manyLines(sh.first, sh.line, 2_000))
		})
	}
	t.Run("mixed", func(t *testing.T) {
		sameAsMsgauth(t, s, "example.com", []byte(mixed+"\r\nbody\r\n"))
	})
	t.Run("bare LF folded", func(t *testing.T) {
		sameAsMsgauth(t, s, "example.com", []byte("From: a@example.com\nSubject: x\n"+strings.Repeat(" y \n\tz\r\n", 1_000)+"\nbody\n"))
	})
}
