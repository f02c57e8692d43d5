package doctor

import (
	"context"
	"fmt"

	"relay/internal/names"
	"relay/internal/resolver"
)

// checkBounce checks the domain of the envelope sender the relay uses for this domain's
// mail: bounces go there, and receivers that verify the sender ask it. It needs an MX, or
// an address for the implicit MX of RFC 5321 §5.1; a null MX (RFC 7505) says it takes no
// mail at all.
func (c *checker) checkBounce(ctx context.Context) {
	b := &c.rep.Bounce
	b.Address = c.dec.Envelope
	b.Domain = names.AddressDomain(b.Address)
	if b.Domain == "" {
		return
	}
	mxs, err := resolver.MX(ctx, c.m, b.Domain)
	switch {
	case err != nil && isTemporary(err):
		c.dnsError(b.Domain, "MX", err)
		b.Unknown = true
		return
	case err != nil && !isNotFound(err):
		c.finding("error", "bounce", "%s MX: %v", b.Domain, err)
		return
	}
	for _, mx := range mxs {
		b.MX = append(b.MX, fmt.Sprintf("%d %s", mx.Pref, mx.Host))
	}
	// RFC 7505 §3: a null MX is the only MX, preference 0, exchange ".".
	if len(mxs) == 1 && mxs[0].Host == "." {
		b.NullMX = true
		c.finding("error", "bounce", "%s has a null MX (RFC 7505): it takes no mail, so bounces to %s are lost and many receivers refuse mail from it: set [sender] bounce_address (or the unit's) to an address that takes mail",
			b.Domain, b.Address)
		return
	}
	if len(mxs) > 0 {
		b.OK = true
		return
	}
	ips, err := resolver.IP(ctx, c.m, b.Domain, true, true)
	switch {
	case err != nil && isTemporary(err):
		c.dnsError(b.Domain, "A", err)
		b.Unknown = true
	case len(ips) > 0:
		b.HasAddress, b.OK = true, true
		c.finding("info", "bounce", "%s has no MX: mail to %s goes to its address record (RFC 5321 §5.1); an MX record is clearer", b.Domain, b.Address)
	default:
		c.finding("error", "bounce", "%s has no MX and no address: bounces to %s cannot be delivered, and receivers that check the sender refuse the mail", b.Domain, b.Address)
	}
}
