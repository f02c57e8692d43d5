package signer

import (
	"bytes"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/require"

	"relay/internal/dkimkey"
)

// FuzzSign checks, for any message, that the header scan agrees with go-msgauth's reader:
// the signature verifies, and a From or a Reply-To added after signing breaks it (every
// instance of the oversigned fields the verifier sees is covered, plus one). The key record is returned by a function rather
// than a DNS server: this target is about the message, and runs millions of times.
func FuzzSign(f *testing.F) {
	for _, seed := range signSeeds() {
		f.Add([]byte(seed))
	}
	k := genKeys(f)
	s := newSigner(f, dkimConfig(writeKey(f, f.TempDir(), "default.pem", k.ed1, false)))
	rec, err := dkimkey.Record(k.ed1.Public())
	require.NoError(f, err)
	opts := &dkim.VerifyOptions{LookupTXT: func(string) ([]string, error) { return []string{rec}, nil }}

	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) > 0 && (msg[0] == ' ' || msg[0] == '\t') {
			// It would continue our DKIM-Signature field. Never happens in the relay:
			// rewrite prepends a Received field before signing.
			t.Skip()
		}
		sig, err := s.Sign(t.Context(), "example.com", msg)
		require.NoError(t, err)
		_, complete := s.headers.keys(msg)
		sent := msg
		if !complete {
			sent = concat(msg, terminator(msg))
		}

		vs, err := dkim.VerifyWithOptions(bytes.NewReader(concat(sig, sent)), opts)
		require.NoError(t, err)
		require.Len(t, vs, 1)
		require.NoError(t, vs[0].Err, "h=%v", vs[0].HeaderKeys)

		for _, added := range []string{"From: forged@example.com\r\n", "Reply-To: forged@example.com\r\n"} {
			forged := concat(sig, []byte(added), sent)
			vs, err = dkim.VerifyWithOptions(bytes.NewReader(forged), opts)
			require.NoError(t, err)
			require.Len(t, vs, 1)
			require.Error(t, vs[0].Err, "an added %q must break the signature; h=%v", added, vs[0].HeaderKeys)
		}
	})
}

// signSeeds are the seed messages of the signing fuzz targets: the header shapes the
// scan and the canonicalization must agree on.
func signSeeds() []string {
	return []string{
		string(message(200)),
		"From: a@example.com\r\nSubject: s\r\n\r\nbody \t\r\n\r\n",
		"From: a@example.com\nTo: b@example.net\n\nlf\r\r\n body\n",
		"From: a@example.com\r\nSubject: s",
		"X: 1\r\nfrom : a@example.com\r\nFROM:b@example.com\r\n\tfolded\r\n\r\n",
		"From: a@example.com\r\nReply-To: r@example.net\r\nreply-to : q@example.net\r\n\r\nbody\r\n",
		"From\r\nno colon\r\n\r\n",
		"\r\nbody only\r\n",
		"",
	}
}
