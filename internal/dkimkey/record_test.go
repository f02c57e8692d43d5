package dkimkey

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseRecord(t *testing.T) {
	ed := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey)
	rsaKey, err := Generate("rsa", 1024)
	require.NoError(t, err)
	rsaPub := rsaKey.Public().(*rsa.PublicKey)
	for _, pub := range []any{ed, rsaPub} {
		rec, err := Record(pub)
		require.NoError(t, err)
		got, err := ParseRecord(rec)
		require.NoError(t, err, rec)
		require.True(t, Equal(pub, got), "Record and ParseRecord round trip: %s", rec)
	}
	edData := base64.StdEncoding.EncodeToString(ed)
	pkcs1 := base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PublicKey(rsaPub))
	der, err := x509.MarshalPKIXPublicKey(ed)
	require.NoError(t, err)
	edPKIX := base64.StdEncoding.EncodeToString(der)
	got, err := ParseRecord("v=DKIM1; p=" + pkcs1[:30] + " \t" + pkcs1[30:])
	require.NoError(t, err, "a bare RSAPublicKey (RFC 6376 erratum 3017), folded")
	require.True(t, Equal(rsaPub, got))
	got, err = ParseRecord(" h = sha1:SHA256 ; s=*; k=ed25519; t=y; p=" + edData + ";")
	require.NoError(t, err)
	require.True(t, Equal(ed, got))

	tests := []struct {
		txt, tag, err string
	}{
		{"v=DKIM1; k=ed25519; oops; p=" + edData, "oops", `malformed tag "oops"`},
		{"v=DKIM1; k=ed25519; p=" + edData + "; k=rsa", "k", `duplicate tag "k"`},
		{"v=DKIM2; k=ed25519; p=" + edData, "v", `version "DKIM2"`},
		{"v=DKIM1; h=sha1; k=ed25519; p=" + edData, "h", "h= does not allow sha256"},
		{"v=DKIM1; s=tlsrpt; k=ed25519; p=" + edData, "s", "s= does not allow email"},
		{"v=DKIM1; k=ed25519", "p", "no p= tag"},
		{"v=DKIM1; k=ed25519; p=", "p", "key revoked (empty p=)"},
		{"v=DKIM1; k=ed25519; p=!!", "p", "p=: illegal base64 data at input byte 0"},
		{"v=DKIM1; k=ed25519; p=" + edData[:20], "p", "p=: Ed25519 key of 15 bytes"},
		{"v=DKIM1; k=rsa; p=" + edPKIX, "p", "p=: ed25519.PublicKey is not an RSA key"},
		{"v=DKIM1; k=dsa; p=" + edData, "k", `key type "dsa"`},
	}
	for _, tt := range tests {
		t.Run(tt.err, func(t *testing.T) {
			_, err := ParseRecord(tt.txt)
			require.EqualError(t, err, tt.err)
			var re *RecordError
			require.ErrorAs(t, err, &re)
			require.Equal(t, tt.tag, re.Tag)
		})
	}
	_, err = ParseRecord("v=DKIM1; k=rsa; p=" + edData)
	var re *RecordError
	require.ErrorAs(t, err, &re)
	require.Equal(t, "p", re.Tag)
	require.Error(t, re.Err, "neither an SPKI nor an RSAPublicKey: the x509 error")
	require.Equal(t, "p=: "+re.Err.Error(), err.Error())
}

func FuzzParseRecord(f *testing.F) {
	f.Add("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
	f.Add("v=DKIM1; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDwIRP/UC3SBsEmGqZ9ZJW3/DkMoGeLnQg1fWn7/zYtIxN2SnFCjxOCKG9v3b4jYfcTNh5ijSsq631uBItLa7od+v/RtdC2UzJ1lWT947qR+Rcac2gbto/NMqJ0fzfVjH4OuKhitdY9tf6mcwGjaNBcWToIMmPSPDdQPNUYckcQ2QIDAQAB")
	f.Add("v=DKIM1; h=sha1:sha256; s=email; t=y; k=rsa; p=")
	f.Fuzz(func(t *testing.T, txt string) {
		pub, err := ParseRecord(txt)
		if err != nil {
			var re *RecordError
			require.ErrorAs(t, err, &re, "the error names the tag at fault")
			return
		}
		require.NotNil(t, pub)
		_, err = PublicData(pub)
		require.NoError(t, err, "a parsed key can be published again")
	})
}
