package dnsx

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/miekg/dns"

	"relay/internal/dkimkey"
	"relay/internal/policy"
)

// delegation checks whether <selector>._domainkey.<domain> leads, through CNAMEs, to a
// DKIM key record whose public key is key (SPEC §4 dkim-delegated). It returns the
// check and the answer's TTL (ok false when no answer came).
func delegation(ctx context.Context, r *Resolver, selector, domain string, key crypto.PublicKey) (policy.Check, uint32, bool) {
	name := selector + "._domainkey." + domain
	ans, err := r.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		var d *net.DNSError
		if errors.As(err, &d) && d.IsNotFound {
			return policy.Check{Detail: "no DKIM record at " + name}, 0, false
		}
		if errors.As(err, &d) && d.Temporary() {
			msg := d.Err
			if d.IsTimeout {
				msg = "timeout"
			}
			return policy.Check{Temporary: true, Detail: "dkim temperror at " + name + ": " + msg}, 0, false
		}
		return policy.Check{Detail: name + ": " + err.Error()}, 0, false
	}
	via := ""
	if len(ans.CNAMEs) > 0 {
		via = " (via CNAME " + strings.Join(ans.CNAMEs, " -> ") + ")"
	}
	if len(ans.Records) == 0 {
		return policy.Check{Detail: "no DKIM record at " + name + via}, ans.TTL, true
	}
	// RFC 6376 §3.6.2.2 leaves several records undefined; go-msgauth, like most
	// verifiers, refuses them, so a signature relying on one would fail.
	if len(ans.Records) > 1 {
		return policy.Check{Detail: fmt.Sprintf("%s%s has %d TXT records (verifiers want exactly one)", name, via, len(ans.Records))}, ans.TTL, true
	}
	pub, err := parseKeyRecord(txtString(ans.Records[0].(*dns.TXT).Txt))
	if err != nil {
		return policy.Check{Detail: fmt.Sprintf("%s%s: not a usable DKIM key record: %v", name, via, err)}, ans.TTL, true
	}
	if !dkimkey.Equal(key, pub) {
		return policy.Check{Detail: name + via + " publishes another key"}, ans.TTL, true
	}
	return policy.Check{OK: true, Detail: "dkim key published at " + name + via}, ans.TTL, true
}

// parseKeyRecord reads the public key of a DKIM key record (RFC 6376 §3.6.1, RFC 8463
// §4.2), refusing records a verifier would not use for our relaxed/sha256 signatures.
func parseKeyRecord(txt string) (crypto.PublicKey, error) {
	tags := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			if strings.TrimSpace(part) == "" {
				continue
			}
			return nil, fmt.Errorf("malformed tag %q", strings.TrimSpace(part))
		}
		k = strings.TrimSpace(k)
		if _, dup := tags[k]; dup {
			return nil, fmt.Errorf("duplicate tag %q", k)
		}
		tags[k] = strings.TrimSpace(v)
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return nil, fmt.Errorf("version %q", v)
	}
	if h, ok := tags["h"]; ok && !listHas(h, "sha256") {
		return nil, errors.New("h= does not allow sha256")
	}
	if s, ok := tags["s"]; ok && !listHas(s, "email") && !listHas(s, "*") {
		return nil, errors.New("s= does not allow email")
	}
	p, ok := tags["p"]
	if !ok {
		return nil, errors.New("no p= tag")
	}
	p = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, p)
	if p == "" {
		return nil, errors.New("key revoked (empty p=)")
	}
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return nil, fmt.Errorf("p=: %w", err)
	}
	switch k := tags["k"]; k {
	case "", "rsa":
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			// RFC 6376 erratum 3017: some publish a bare RSAPublicKey.
			rsaPub, err2 := x509.ParsePKCS1PublicKey(der)
			if err2 != nil {
				return nil, fmt.Errorf("p=: %w", err)
			}
			return rsaPub, nil
		}
		rsaPub, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("p=: %T is not an RSA key", pub)
		}
		return rsaPub, nil
	case "ed25519":
		if len(der) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("p=: Ed25519 key of %d bytes", len(der))
		}
		return ed25519.PublicKey(der), nil
	default:
		return nil, fmt.Errorf("key type %q", k)
	}
}

func listHas(list, want string) bool {
	for _, v := range strings.Split(list, ":") {
		if strings.EqualFold(strings.TrimSpace(v), want) {
			return true
		}
	}
	return false
}
