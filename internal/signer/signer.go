// Package signer owns DKIM signing (SPEC §6): it picks the key(s) for a d= domain and
// produces the DKIM-Signature field(s) to prepend to an outgoing message. It never rewrites
// the message and never decides which domain to sign as: its caller passes the d= that
// policy chose (Decision.DKIMDomain).
package signer

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"time"

	"relay/internal/config"
	"relay/internal/names"
)

// Signer signs messages with the keys of one configuration. It is immutable after New and
// safe for concurrent use; a configuration reload builds a new one.
type Signer struct {
	def     []key            // the [dkim] key (one), used as d= any domain without keys of its own
	domains map[string][]key // [[dkim.keys]] by normalised domain, Ed25519 first
	headers headerSet
	now     func() time.Time // nil: time.Now; fixed in tests
}

type key struct {
	selector string
	algo     string // the a= value: "rsa-sha256" or "ed25519-sha256"
	signer   crypto.Signer
}

// KeyInfo describes one key Sign would use, for dry-run and check output.
type KeyInfo struct {
	Domain   string // d=
	Selector string // s=
	Algo     string // a=: "ed25519-sha256" or "rsa-sha256"
	// Public is the public key, from which dkimkey.Record makes the TXT record to publish
	// at Selector._domainkey.Domain.
	Public crypto.PublicKey
}

// New makes a signer over the keys of cfg as config.Load left it: the keys loaded, the
// domains normalised, the selectors and header names checked, the default header list
// filled in. It refuses a [dkim] section whose keys were not loaded.
func New(cfg config.DKIM) (*Signer, error) {
	s := &Signer{domains: map[string][]key{}}
	var err error
	if s.headers, err = newHeaderSet(cfg.Headers); err != nil {
		return nil, err
	}
	// Policy falls back to the default key for every domain without its own key, so
	// without one most messages could never be signed.
	if cfg.Signer == nil {
		return nil, errors.New("dkim.private_key: no key loaded")
	}
	s.def = []key{newKey(cfg.Selector, cfg.Signer)}
	for i, kc := range cfg.Keys {
		if kc.Signer == nil {
			return nil, fmt.Errorf("dkim.keys[%d].private_key: no key loaded", i)
		}
		s.domains[kc.Domain] = append(s.domains[kc.Domain], newKey(kc.Selector, kc.Signer))
	}
	for _, ks := range s.domains {
		// Ed25519 first (SPEC §6 dual signing): receivers that do not know it skip it and
		// check the RSA signature below it. Config order otherwise.
		slices.SortStableFunc(ks, func(a, b key) int {
			return cmp.Compare(rank(a.algo), rank(b.algo))
		})
	}
	return s, nil
}

func rank(algo string) int {
	if algo == algoEd25519 {
		return 0
	}
	return 1
}

const (
	algoEd25519 = "ed25519-sha256" // RFC 8463
	algoRSA     = "rsa-sha256"     // RFC 6376; rsa-sha1 is forbidden by RFC 8301
)

func newKey(selector string, k crypto.Signer) key {
	algo := algoRSA
	if _, ok := k.Public().(ed25519.PublicKey); ok {
		algo = algoEd25519
	}
	return key{selector: selector, algo: algo, signer: k}
}

// keys returns the keys for normalised domain d: its own, else the default key.
func (s *Signer) keys(d string) []key {
	if ks, ok := s.domains[d]; ok {
		return ks
	}
	return s.def
}

// Keys describes what Sign would use for domain (d= and s= of each signature, in order).
// It is nil when domain is not a valid domain name.
func (s *Signer) Keys(domain string) []KeyInfo {
	d, err := names.Domain(domain)
	if err != nil || d == "" {
		return nil
	}
	ks := s.keys(d)
	out := make([]KeyInfo, len(ks))
	for i, k := range ks {
		out[i] = KeyInfo{Domain: d, Selector: k.selector, Algo: k.algo, Public: k.signer.Public()}
	}
	return out
}

// DefaultPublicKey is the public half of the default key: a domain that publishes it under
// the default selector delegates signing to us (SPEC §4 dkim-delegated).
func (s *Signer) DefaultPublicKey() crypto.PublicKey { return s.def[0].signer.Public() }

// DefaultSelector is the selector of the default key ([dkim] selector).
func (s *Signer) DefaultSelector() string { return s.def[0].selector }

// Sign returns the DKIM-Signature field(s) to prepend to msg, CRLF-terminated and folded:
// one per key of domain's [[dkim.keys]] (Ed25519 first), else one with the default key and
// d=domain. msg is the complete outgoing message, header and body, with CRLF line ends.
// (Bare LF line ends are tolerated: canonicalization reads them as CRLF, so the signature
// is the one the CRLF form of msg would get; the message must be sent in that CRLF form.)
//
// The work is linear in the size of msg, however its header is split into lines or fields.
// Sign stops when ctx ends, with an error wrapping ctx.Err(): it looks at ctx every 64 KiB
// of canonicalization.
//
// Sign errors are internal faults, never a client's: they carry no SMTP reply, so the
// front end answers 451 4.3.0.
func (s *Signer) Sign(ctx context.Context, domain string, msg []byte) ([]byte, error) {
	return s.sign(newMeter(ctx), domain, msg)
}

// sign is Sign with its work counted in m.
func (s *Signer) sign(m *meter, domain string, msg []byte) ([]byte, error) {
	d, err := names.Domain(domain)
	if err != nil {
		return nil, fmt.Errorf("dkim sign: %w", err)
	}
	if d == "" {
		return nil, errors.New("dkim sign: no signing domain")
	}
	ks := s.keys(d)
	if err := m.ctx.Err(); err != nil {
		return nil, fmt.Errorf("dkim sign d=%s: %w", d, err)
	}

	// One pass over the header, a few name comparisons a line; the context is next looked
	// at by dkimSign right after.
	hkeys, complete := s.headers.keys(msg)
	if !complete {
		// A header-only message lacks the empty line that ends the header. The hashes are
		// those of the message with it: the relaxed body hash of no body and of a lone CRLF
		// are the same, and the header lines are unchanged.
		msg = append(msg[:len(msg):len(msg)], terminator(msg)...)
	}
	now := time.Now()
	if s.now != nil {
		now = s.now()
	}
	return dkimSign(m, d, ks, msg, hkeys, now)
}

func signError(d string, k key, err error) error {
	return fmt.Errorf("dkim sign d=%s s=%s: %w", d, k.selector, err)
}

// terminator is what ends a header that has no empty line: the end of its last line (when
// missing) and the empty line.
func terminator(msg []byte) []byte {
	if len(msg) > 0 && msg[len(msg)-1] == '\n' {
		return []byte("\r\n")
	}
	return []byte("\r\n\r\n")
}
