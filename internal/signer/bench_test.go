package signer

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"testing"
)

// BenchmarkSign is one message through Sign with one key: scan, canonicalize, hash, sign.
// Compare with BenchmarkBareSignature, the cost of the signature alone.
func BenchmarkSign(b *testing.B) {
	k := genKeys(b)
	for _, kt := range []struct {
		name string
		key  crypto.Signer
	}{{"rsa2048", k.rsa1}, {"ed25519", k.ed1}} {
		s := newSigner(b, dkimConfig(writeKey(b, b.TempDir(), "default.pem", kt.key, false)))
		for _, size := range []struct {
			name string
			n    int
		}{{"1KB", 1 << 10}, {"10KB", 10 << 10}, {"100KB", 100 << 10}} {
			msg := message(size.n - len(testHeader))
			b.Run(kt.name+"/"+size.name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(msg)))
				for b.Loop() {
					if _, err := s.Sign(b.Context(), "example.com", msg); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkSignHeaderLines is Sign over headers of 1,000 to 100,000 lines, in ns per header
// line: flat when the cost is linear (it grew with the number of lines before readFields
// and canonicalHeaders were mended). Ed25519, so that the signature does not hide it.
func BenchmarkSignHeaderLines(b *testing.B) {
	s := newSigner(b, dkimConfig(writeKey(b, b.TempDir(), "default.pem", genKeys(b).ed1, false)))
	for _, sh := range headerShapes {
		for _, n := range []int{1_000, 10_000, 100_000} {
			msg := manyLines(sh.first, sh.line, n)
			b.Run(fmt.Sprintf("%s/%d", sh.name, n), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(msg)))
				for b.Loop() {
					if _, err := s.Sign(b.Context(), "example.com", msg); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/line")
			})
		}
	}
}

// BenchmarkBareSignature is the floor: signing one SHA-256 digest, nothing else.
func BenchmarkBareSignature(b *testing.B) {
	k := genKeys(b)
	digest := sha256.Sum256([]byte("header hash"))
	b.Run("rsa2048", func(b *testing.B) {
		b.ReportAllocs()
		key := k.rsa1.(*rsa.PrivateKey)
		for b.Loop() {
			if _, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ed25519", func(b *testing.B) {
		b.ReportAllocs()
		key := k.ed1.(ed25519.PrivateKey)
		for b.Loop() {
			ed25519.Sign(key, digest[:])
		}
	})
}
