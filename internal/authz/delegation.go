package authz

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/miekg/dns"

	"relay/internal/dkimkey"
	"relay/internal/policy"
	"relay/internal/resolver"
)

// delegation checks whether <selector>._domainkey.<domain> leads, through CNAMEs, to a
// DKIM key record whose public key is key (SPEC §4 dkim-delegated). It returns the
// check and the answer's TTL (ok false when no answer came).
func delegation(ctx context.Context, r *resolver.Resolver, selector, domain string, key crypto.PublicKey) (policy.Check, uint32, bool) {
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
	pub, err := dkimkey.ParseRecord(ans.TXT()[0])
	if err != nil {
		return policy.Check{Detail: fmt.Sprintf("%s%s: not a usable DKIM key record: %v", name, via, err)}, ans.TTL, true
	}
	if !dkimkey.Equal(key, pub) {
		return policy.Check{Detail: name + via + " publishes another key"}, ans.TTL, true
	}
	return policy.Check{OK: true, Detail: "dkim key published at " + name + via}, ans.TTL, true
}
