package doctor

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"

	"relay/internal/dkimkey"
	"relay/internal/signer"
)

// checkOwnKeys looks up the DKIM records of the keys the signer would use for the domain
// itself (signer.Keys): its [[dkim.keys]], or the default key, which the domain publishes
// to delegate signing (or which is the relay's own record, at [dkim] domain).
func (c *checker) checkOwnKeys(ctx context.Context) {
	role := "delegation"
	switch {
	case c.hasOwnKeys(c.domain):
		role = "own-key"
	case c.domain == c.cfg.DKIM.Domain:
		role = "default-key"
	case !c.cfg.DKIM.DelegationCheck:
		c.finding("info", "dkim", "[dkim] delegation_check is off: publishing the relay's key would not let it keep a From at %s", c.domain)
		return
	}
	c.lookupKeys(ctx, c.domain, role, c.r.d.state.Signer.Keys(c.domain))
}

// checkSigningKeys looks up the keys of the domain the relay signs this domain's mail
// as, when it is another one aligned with it (a parent with [[dkim.keys]], or [dkim]
// domain): DMARC then rests on them.
func (c *checker) checkSigningKeys(ctx context.Context) {
	d := c.dec.DKIMDomain
	if d == "" || d == c.domain || !aligned(d, c.domain, c.rep.DMARC.ADKIM) {
		return
	}
	c.lookupKeys(ctx, d, "signing", c.r.d.state.Signer.Keys(d))
}

func (c *checker) hasOwnKeys(domain string) bool {
	for _, k := range c.cfg.DKIM.Keys {
		if k.Domain == domain {
			return true
		}
	}
	return false
}

func (c *checker) lookupKeys(ctx context.Context, domain, role string, keys []signer.KeyInfo) {
	out := make([]DKIMKey, len(keys))
	done := make(chan struct{})
	for i, k := range keys {
		go func() {
			out[i] = c.lookupKey(ctx, domain, k.Selector, role, k.Public, k.Algo)
			done <- struct{}{}
		}()
	}
	for range keys {
		<-done
	}
	c.mu.Lock()
	c.rep.DKIM = append(c.rep.DKIM, out...)
	c.mu.Unlock()
}

// lookupKey reads <selector>._domainkey.<domain> and says whether it publishes want,
// with a finding for what is wrong with it.
func (c *checker) lookupKey(ctx context.Context, domain, selector, role string, want crypto.PublicKey, algo string) DKIMKey {
	k := DKIMKey{Name: selector + "._domainkey." + domain, Domain: domain, Selector: selector, Role: role, KeyAlgo: algo}
	ans, err := c.m.Lookup(ctx, k.Name, dns.TypeTXT)
	if err != nil {
		if isTemporary(err) {
			k.State, k.Error = "dns-error", err.Error()
			c.dnsError(k.Name, "TXT", err)
			return k
		}
		// A CNAME loop or a chain too long: nothing a verifier could use.
		k.State, k.Error = "malformed", err.Error()
		c.finding("error", "dkim", "%s: %v", k.Name, err)
		return k
	}
	k.CNAMEs = ans.CNAMEs
	txts := ans.TXT()
	switch len(txts) {
	case 0:
		k.State = "missing"
		return k
	case 1:
	default:
		// RFC 6376 §3.6.2.2 leaves several records undefined; verifiers refuse them.
		k.State, k.Error = "several", fmt.Sprintf("%d TXT records (verifiers want exactly one)", len(txts))
		c.finding("error", "dkim", "%s has %d TXT records: verifiers want exactly one; delete all but one", k.Name, len(txts))
		return k
	}
	k.Record = txts[0]
	tags, terr := dkimkey.Tags(k.Record)
	pub, err := dkimkey.ParseRecord(k.Record)
	var re *dkimkey.RecordError
	switch {
	case err == nil:
	case errors.As(err, &re) && re.Tag == "p" && strings.Contains(re.Reason, "revoked"):
		k.State, k.Tag, k.Error = "revoked", "p", re.Reason
		sev := "info"
		if role != "delegation" {
			sev = "error"
		}
		c.finding(sev, "dkim", "%s: empty p=: the key is revoked (RFC 6376 §3.6.1), so no signature with it verifies", k.Name)
		return k
	case errors.As(err, &re):
		k.State, k.Tag, k.Error = "malformed", re.Tag, err.Error()
		if re.Tag == "h" && terr == nil {
			c.finding("error", "dkim", "%s: h=%s: the key may only be used with %s, which RFC 8301 forbids; the relay signs with sha256: remove h= or make it h=sha256", k.Name, tags["h"], tags["h"])
		} else {
			c.finding("error", "dkim", "%s is malformed, tag %s: %v", k.Name, re.Tag, err)
		}
		return k
	default:
		k.State, k.Error = "malformed", err.Error()
		c.finding("error", "dkim", "%s is malformed: %v", k.Name, err)
		return k
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		k.KeyType, k.KeyBits = "rsa", p.N.BitLen()
		switch {
		case k.KeyBits < 1024:
			c.finding("error", "dkim", "%s: RSA key of %d bits: verifiers ignore keys under 1024 bits (RFC 8301 §3.2)", k.Name, k.KeyBits)
		case k.KeyBits < 2048:
			c.finding("warning", "dkim", "%s: RSA key of %d bits: RFC 8301 asks for 2048; some receivers distrust shorter keys", k.Name, k.KeyBits)
		}
	case ed25519.PublicKey:
		k.KeyType, k.KeyBits = "ed25519", 256
	}
	if dkimkey.ListHas(tags["t"], "y") {
		k.Testing = true
		c.finding("warning", "dkim", "%s: t=y (testing): receivers may treat signed mail as unsigned (RFC 6376 §3.6.1): remove t=y", k.Name)
	}
	if h, ok := tags["h"]; ok && dkimkey.ListHas(h, "sha1") {
		c.finding("warning", "dkim", "%s: h=%s lists sha1, which RFC 8301 forbids: make it h=sha256 or remove it", k.Name, h)
	}
	if want != nil && dkimkey.Equal(want, pub) {
		k.State = "match"
		return k
	}
	k.State = "other-key"
	switch role {
	case "delegation":
		c.finding("warning", "dkim", "%s publishes another key: selector %q is taken (by another provider, or an older key); replacing it breaks what that key signs, so if it is still in use, give the relay another [dkim] selector", k.Name, selector)
	default:
		c.finding("error", "dkim", "%s publishes another key: what the relay signs with s=%s fails DKIM until the record below is published", k.Name, selector)
	}
	return k
}

// dkimAdvice adds the DKIM records to publish: the domain's own keys and the key of
// the domain it is signed as, whenever they do not match; the delegation when the
// domain is not ready, as a CNAME to the relay's record when that record publishes the
// key, else as the whole TXT record.
func (c *checker) dkimAdvice() {
	ready := c.rep.Status == StatusReady
	for _, k := range c.rep.DKIM {
		if k.State == "match" || k.State == "dns-error" {
			continue
		}
		pub := c.keyFor(k)
		if pub == nil {
			continue
		}
		switch k.Role {
		case "delegation":
			if ready {
				continue
			}
			rs := c.r.relay
			if rs.recordOK {
				c.rep.Publish = append(c.rep.Publish, CNAME("dkim", "DKIM: delegate signing to the relay (a CNAME to its record, so a new relay key needs no change here)", k.Name, rs.recordName))
				continue
			}
			r, err := dkimTXT("DKIM: publish the relay's key (it lets the relay keep the From and sign as "+k.Domain+")", k.Name, pub)
			if err == nil {
				c.rep.Publish = append(c.rep.Publish, r)
			}
		default:
			r, err := dkimTXT(fmt.Sprintf("DKIM: publish the key the relay signs with as %s (s=%s)", k.Domain, k.Selector), k.Name, pub)
			if err == nil {
				c.rep.Publish = append(c.rep.Publish, r)
			}
		}
	}
}

// keyFor is the relay's public key for a DKIM entry.
func (c *checker) keyFor(k DKIMKey) crypto.PublicKey {
	for _, ki := range c.r.d.state.Signer.Keys(k.Domain) {
		if ki.Selector == k.Selector {
			return ki.Public
		}
	}
	return nil
}

func dkimTXT(why, name string, pub crypto.PublicKey) (Record, error) {
	rec, err := dkimkey.Record(pub)
	if err != nil {
		return Record{}, err
	}
	return TXT("dkim", why, name, rec), nil
}
