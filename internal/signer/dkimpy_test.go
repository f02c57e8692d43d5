package signer

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dkimkey"
)

// dkimpy finds a Python with dkimpy (Debian: apt-get install python3-dkim, which installs
// for /usr/bin/python3, not for a pyenv python3 earlier in PATH).
func dkimpy(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import dkim, nacl").Run() == nil {
			return py
		}
	}
	if os.Getenv("CI") != "" {
		// .ci/run installs it: in CI the independent check must run, not skip.
		t.Fatal("dkimpy not available in CI (apt-get install python3-dkim python3-nacl)")
	}
	t.Skip("dkimpy not available (apt-get install python3-dkim python3-nacl)")
	return ""
}

// TestIndependentVerifier checks our signatures with dkimpy, a verifier that shares no
// code with go-msgauth, so a canonicalization mistake both sides of go-msgauth agree on
// would still show.
func TestIndependentVerifier(t *testing.T) {
	py := dkimpy(t)
	k := genKeys(t)
	dir := t.TempDir()
	s := newSigner(t, dkimConfig(writeKey(t, dir, "default.pem", k.rsa2, true),
		config.DKIMKey{Domain: "example.com", Selector: "ed", PrivateKey: writeKey(t, dir, "ed.pem", k.ed1, false)},
		config.DKIMKey{Domain: "example.com", Selector: "rsa", PrivateKey: writeKey(t, dir, "rsa.pem", k.rsa1, false)},
		config.DKIMKey{Domain: "ed.example", Selector: "ed", PrivateKey: writeKey(t, dir, "ed2.pem", k.ed2, false)}))

	records := map[string]string{}
	for _, p := range []published{
		{"example.com", "ed", k.ed1.Public()},
		{"example.com", "rsa", k.rsa1.Public()},
		{"ed.example", "ed", k.ed2.Public()},
		{"other.example", "default", k.rsa2.Public()},
	} {
		rec, err := dkimkey.Record(p.pub)
		require.NoError(t, err)
		records[p.selector+"._domainkey."+p.domain+"."] = rec
	}
	recFile := filepath.Join(dir, "records.json")
	b, err := json.Marshal(records)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(recFile, b, 0o600))

	msg := message(5000)
	replyTo := concat([]byte("Reply-To: Alice <alice@gmail.com>\r\n"), msg)
	tests := []struct {
		name   string
		domain string
		msg    []byte
		tamper func([]byte) []byte
		want   string
	}{
		{"rsa (default key, other domain)", "other.example", msg, nil, "ok"},
		{"ed25519", "ed.example", msg, nil, "ok"},
		{"dual ed25519 and rsa", "example.com", msg, nil, "ok ok"},
		{"repeated and folded fields", "ed.example", []byte(
			"From: a@ed.example\r\nTo: b@example.net,\r\n  c@example.net\r\nTo: d@example.net\r\n" +
				"Subject:  spaced \t out \r\n\r\nbody  with \t white space  \r\n\r\n\r\n"), nil, "ok"},
		{"header only", "ed.example", []byte("From: a@ed.example\r\nSubject: s\r\n"), nil, "ok"},
		{"tampered body", "example.com", msg, func(m []byte) []byte {
			return bytes.Replace(m, []byte("lazy dog"), []byte("lazy cat"), 1)
		}, "fail fail"},
		{"second From", "ed.example", msg, func(m []byte) []byte {
			i := bytes.Index(m, []byte("\r\n\r\n")) + 2
			return concat(m[:i], []byte("From: forged@ed.example\r\n"), m[i:])
		}, "fail"},
		{"Reply-To added to a message without one", "ed.example", msg, func(m []byte) []byte {
			i := bytes.Index(m, []byte("\r\n\r\n")) + 2
			return concat(m[:i], []byte("Reply-To: forged@ed.example\r\n"), m[i:])
		}, "fail"},
		{"second Reply-To", "ed.example", replyTo, func(m []byte) []byte {
			i := bytes.Index(m, []byte("\r\n\r\n")) + 2
			return concat(m[:i], []byte("Reply-To: forged@ed.example\r\n"), m[i:])
		}, "fail"},
		{"with Reply-To", "ed.example", replyTo, nil, "ok"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			signed := sign(t, s, tc.domain, tc.msg)
			if tc.tamper != nil {
				signed = tc.tamper(signed)
			}
			f := filepath.Join(t.TempDir(), "msg.eml")
			require.NoError(t, os.WriteFile(f, signed, 0o600))
			var stderr bytes.Buffer
			cmd := exec.Command(py, "testdata/dkimpy_verify.py", f, recFile)
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			require.NoError(t, err, "%s", stderr.Bytes())
			require.Equal(t, tc.want, strings.Join(strings.Fields(string(out)), " "), "%s", stderr.Bytes())
		})
	}
}
