package dkimkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})

	for name, in := range map[string][]byte{"rsa pkcs1": pkcs1, "rsa pkcs8": pkcs8(rsaKey), "ed25519 pkcs8": pkcs8(edKey)} {
		k, err := Parse(in)
		require.NoError(t, err, name)
		require.True(t, Equal(k.Public(), k.Public()), name)
	}

	_, err = Parse([]byte("not pem"))
	require.ErrorContains(t, err, "no PEM block")
	_, err = Parse(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}))
	require.ErrorContains(t, err, "unsupported PEM block")
}

func TestRecord(t *testing.T) {
	k, err := Generate("ed25519", 0)
	require.NoError(t, err)
	rec, err := Record(k.Public())
	require.NoError(t, err)
	p, ok := strings.CutPrefix(rec, "v=DKIM1; k=ed25519; p=")
	require.True(t, ok, rec)
	raw, err := base64.StdEncoding.DecodeString(p)
	require.NoError(t, err)
	require.Equal(t, []byte(k.Public().(ed25519.PublicKey)), raw, "RFC 8463: the raw 32-byte key")

	r, err := Generate("rsa", 1024)
	require.NoError(t, err)
	rec, err = Record(r.Public())
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(rec, "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQ"), rec)

	_, err = Generate("rsa", 512)
	require.Error(t, err)
	_, err = Generate("dsa", 0)
	require.Error(t, err)
}

func TestWriteLoad(t *testing.T) {
	k, err := Generate("ed25519", 0)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "k.pem")
	require.NoError(t, Write(path, k))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	got, err := Load(path)
	require.NoError(t, err)
	require.True(t, Equal(k.Public(), got.Public()))
	require.Error(t, Write(path, k), "an existing key is never overwritten")
}
