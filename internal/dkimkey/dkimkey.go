// Package dkimkey owns DKIM private keys on disk: reading PEM files (PKCS#1, PKCS#8,
// RSA and Ed25519), writing new ones, and the public TXT record (RFC 6376 §3.6.1,
// RFC 8463) that publishes a key, written and read back. It never signs; that is package
// signer.
package dkimkey

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// Load reads a PEM private key file.
func Load(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Parse decodes an RSA or Ed25519 private key from PEM (PKCS#1 "RSA PRIVATE KEY" or
// PKCS#8 "PRIVATE KEY"). RSA keys shorter than 1024 bits are refused (RFC 8301 §3.2).
func Parse(pemBytes []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q (want RSA PRIVATE KEY or PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			return nil, fmt.Errorf("RSA key of %d bits is too short (minimum 1024)", k.N.BitLen())
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported key type %T (want RSA or Ed25519)", key)
	}
}

// Algo is the DKIM key type tag: "rsa" or "ed25519".
func Algo(pub crypto.PublicKey) string {
	if _, ok := pub.(ed25519.PublicKey); ok {
		return "ed25519"
	}
	return "rsa"
}

// PublicData is the p= value of the TXT record for pub: for RSA the DER
// SubjectPublicKeyInfo, for Ed25519 the raw 32 bytes (RFC 8463 §4.2), base64-encoded.
func PublicData(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return base64.StdEncoding.EncodeToString(k), nil
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(der), nil
	default:
		return "", fmt.Errorf("unsupported public key type %T", pub)
	}
}

// Record is the TXT record text that publishes pub: "v=DKIM1; k=rsa; p=...".
func Record(pub crypto.PublicKey) (string, error) {
	p, err := PublicData(pub)
	if err != nil {
		return "", err
	}
	return "v=DKIM1; k=" + Algo(pub) + "; p=" + p, nil
}

// Equal reports whether two public keys are the same key.
func Equal(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// Generate makes a new key: typ "ed25519" or "rsa" (bits >= 1024).
func Generate(typ string, bits int) (crypto.Signer, error) {
	switch typ {
	case "ed25519":
		_, k, err := ed25519.GenerateKey(nil)
		return k, err
	case "rsa":
		if bits < 1024 {
			return nil, fmt.Errorf("RSA key of %d bits is too short (minimum 1024)", bits)
		}
		return rsa.GenerateKey(rand.Reader, bits)
	default:
		return nil, fmt.Errorf("unknown key type %q (want ed25519 or rsa)", typ)
	}
}

// Write stores key as PKCS#8 PEM at path with mode 0600, refusing to overwrite.
func Write(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
