package signer

import (
	"bytes"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/require"

	"relay/internal/dkimkey"
)

// FuzzSign checks, for any message, that the header scan agrees with go-msgauth's reader:
// the signature verifies, and a From added after signing breaks it (every From instance
// the verifier sees is covered, plus one). The key record is returned by a function rather
// than a DNS server: this target is about the message, and runs millions of times.
func FuzzSign(f *testing.F) {
	for _, seed := range []string{
		string(message(200)),
		"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n",
		"From: a@example.com\nTo: b@example.net\n\nlf body\n",
		"From: a@example.com\r\nSubject: s",
		"X: 1\r\nfrom : a@example.com\r\nFROM:b@example.com\r\n\tfolded\r\n\r\n",
		"From\r\nno colon\r\n\r\n",
		"\r\nbody only\r\n",
		"",
	} {
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
		sig, err := s.Sign("example.com", msg)
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

		forged := concat(sig, []byte("From: forged@example.com\r\n"), sent)
		vs, err = dkim.VerifyWithOptions(bytes.NewReader(forged), opts)
		require.NoError(t, err)
		require.Len(t, vs, 1)
		require.Error(t, vs[0].Err, "an added From must break the signature; h=%v", vs[0].HeaderKeys)
	})
}
