package doctor

import (
	"context"
	"fmt"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"relay/internal/names"
	"relay/internal/resolver"
)

// knownDMARCTags are RFC 7489 §6.3's, and np, psd and t from DMARCbis, which receivers
// already read.
var knownDMARCTags = map[string]bool{
	"v": true, "p": true, "sp": true, "pct": true, "adkim": true, "aspf": true, "rua": true,
	"ruf": true, "fo": true, "rf": true, "ri": true, "np": true, "psd": true, "t": true,
}

// orgDomain is the organizational domain of RFC 7489 §3.2: the public suffix and one
// label more.
func orgDomain(d string) string {
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return org
}

// aligned is DMARC identifier alignment (RFC 7489 §3.1): strict ("s") wants the same
// domain, relaxed the same organizational domain.
func aligned(a, b, mode string) bool {
	if a == "" || b == "" {
		return false
	}
	if mode == "s" {
		return a == b
	}
	return orgDomain(a) == orgDomain(b)
}

// checkDMARC finds the DMARC record of RFC 7489 §6.6.3: at _dmarc.<domain>, else at
// _dmarc.<organizational domain>.
func (c *checker) checkDMARC(ctx context.Context) {
	dm := &c.rep.DMARC
	dm.Name = "_dmarc." + c.domain
	dm.Applied, dm.ADKIM, dm.ASPF, dm.Pct = "none", "r", "r", 100
	recs, ok := c.dmarcRecords(ctx, dm.Name)
	if !ok {
		return
	}
	if org := orgDomain(c.domain); len(recs) == 0 && org != c.domain {
		if recs, ok = c.dmarcRecords(ctx, "_dmarc."+org); !ok {
			return
		}
		if len(recs) > 0 {
			dm.FoundAt, dm.Inherited = "_dmarc."+org, true
		}
	} else if len(recs) > 0 {
		dm.FoundAt = dm.Name
	}
	switch len(recs) {
	case 0:
		c.finding("warning", "dmarc", "no DMARC record at %s: receivers apply no policy, and Gmail and Yahoo want one from bulk senders: publish at least \"v=DMARC1; p=none; rua=mailto:...\"", dm.Name)
		return
	case 1:
	default:
		dm.Error = fmt.Sprintf("%d DMARC records at %s", len(recs), dm.FoundAt)
		c.finding("error", "dmarc", "%d DMARC records at %s: receivers apply none of them (RFC 7489 §6.6.3): keep one", len(recs), dm.FoundAt)
		return
	}
	dm.Record = recs[0]
	tags, order := dmarcTags(dm.Record)
	dm.Policy, dm.SubdomainPolicy = tags["p"], tags["sp"]
	for _, t := range order {
		if !knownDMARCTags[t] {
			c.finding("warning", "dmarc", "%s: unknown tag %q (receivers ignore it)", dm.FoundAt, t)
		}
	}
	rec, err := dmarc.Parse(dm.Record)
	if err != nil {
		dm.Error = strings.TrimPrefix(err.Error(), "dmarc: ")
		c.finding("error", "dmarc", "%s: %s: receivers apply no policy, or p=none when rua= is valid (RFC 7489 §6.6.3)", dm.FoundAt, dm.Error)
		return
	}
	dm.Policy, dm.SubdomainPolicy = string(rec.Policy), string(rec.SubdomainPolicy)
	dm.Applied = dm.Policy
	if dm.Inherited && dm.SubdomainPolicy != "" {
		dm.Applied = dm.SubdomainPolicy
	}
	dm.ADKIM, dm.ASPF = string(rec.DKIMAlignment), string(rec.SPFAlignment)
	if rec.Percent != nil {
		dm.Pct = *rec.Percent
	}
	dm.RUA = rec.ReportURIAggregate
	for _, u := range dm.RUA {
		if !strings.HasPrefix(strings.ToLower(u), "mailto:") {
			c.finding("warning", "dmarc", "rua=%s is not a mailto: URI: receivers send no reports to it", u)
		}
	}
	if len(dm.RUA) == 0 {
		c.finding("info", "dmarc", "no rua=: nobody receives the aggregate reports that show who sends as %s", c.domain)
	}
	if dm.Applied == "none" {
		c.finding("info", "dmarc", "p=none: receivers only report; mail that fails DMARC is delivered as if there were no policy")
	}
	if dm.Pct < 100 {
		c.finding("info", "dmarc", "pct=%d: the policy applies to %d%% of the mail that fails", dm.Pct, dm.Pct)
	}
}

// dmarcRecords returns the TXT records at name that begin with "v=DMARC1" (RFC 7489
// §6.6.3 discards the others); ok is false when the lookup failed.
func (c *checker) dmarcRecords(ctx context.Context, name string) ([]string, bool) {
	txts, err := resolver.TXT(ctx, c.m, name)
	switch {
	case isNotFound(err):
		return nil, true
	case err != nil && isTemporary(err):
		c.dnsError(name, "TXT", err)
		c.rep.DMARC.Unknown = true
		return nil, false
	case err != nil:
		c.finding("error", "dmarc", "%s: %v", name, err)
		return nil, false
	}
	var out []string
	for _, t := range txts {
		if v, _, _ := strings.Cut(t, ";"); strings.TrimSpace(v) == "v=DMARC1" {
			out = append(out, t)
		} else if strings.HasPrefix(strings.ToLower(strings.TrimSpace(t)), "v=dmarc") {
			c.finding("error", "dmarc", "%s: %q does not begin with \"v=DMARC1\" exactly: receivers ignore it", name, t)
		}
	}
	return out, true
}

// dmarcTags splits a DMARC record into its tags and their order.
func dmarcTags(txt string) (map[string]string, []string) {
	tags := map[string]string{}
	var order []string
	for part := range strings.SplitSeq(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			continue
		}
		tags[k] = strings.TrimSpace(v)
		order = append(order, k)
	}
	return tags, order
}

// forecast says whether the relay's mail as this domain passes DMARC, from the decision:
// the envelope it uses (SPF half) and the d= the signer picks (DKIM half).
func (c *checker) forecast(envPass, envKnown bool) {
	dm := &c.rep.DMARC
	f := &dm.Forecast
	if c.rep.Status != StatusReady {
		if c.rep.Status == StatusNotReady {
			f.Text = "the From is rewritten to " + c.dec.From + ": this domain's policy does not apply to the relay's mail"
		}
		return
	}
	from := names.AddressDomain(c.dec.From)
	f.Applies = true
	f.Envelope, f.DKIMDomain = c.dec.Envelope, c.dec.DKIMDomain
	envDomain := names.AddressDomain(c.dec.Envelope)
	f.SPFAligned = envKnown && envPass && aligned(envDomain, from, dm.ASPF)
	keyOK := false
	for _, k := range c.rep.DKIM {
		if k.Domain == c.dec.DKIMDomain && k.State == "match" {
			keyOK = true
		}
	}
	f.DKIMAligned = keyOK && aligned(c.dec.DKIMDomain, from, dm.ADKIM)
	f.Pass = f.SPFAligned || f.DKIMAligned

	var spfWhy, dkimWhy string
	switch {
	case f.SPFAligned:
		spfWhy = "SPF passes for the envelope " + c.dec.Envelope + ", aligned"
	case !envKnown:
		spfWhy = "SPF for the envelope " + c.dec.Envelope + " is unknown (DNS failure)"
	case !aligned(envDomain, from, dm.ASPF):
		spfWhy = "the envelope " + c.dec.Envelope + " is not aligned with " + from
	default:
		spfWhy = "SPF does not pass for the envelope " + c.dec.Envelope
	}
	switch {
	case f.DKIMAligned:
		dkimWhy = "DKIM d=" + c.dec.DKIMDomain + " is aligned and its key is published"
	case !aligned(c.dec.DKIMDomain, from, dm.ADKIM):
		dkimWhy = "DKIM d=" + c.dec.DKIMDomain + " is not aligned with " + from
	default:
		dkimWhy = "DKIM d=" + c.dec.DKIMDomain + " is aligned but its key is not published"
	}
	if f.Pass {
		f.Text = "pass: " + firstTrue(f.DKIMAligned, dkimWhy, spfWhy)
		return
	}
	f.Text = "fail: " + spfWhy + "; " + dkimWhy
	switch {
	case dm.Record == "" || dm.Error != "":
		c.finding("warning", "dmarc", "mail the relay sends as %s fails DMARC (%s; %s): harmless without a policy, but it cannot get one", c.domain, spfWhy, dkimWhy)
	case dm.Applied == "none":
		c.finding("warning", "dmarc", "mail the relay sends as %s fails DMARC (%s; %s): p=none delivers it, a stricter policy will not", c.domain, spfWhy, dkimWhy)
	default:
		c.finding("error", "dmarc", "mail the relay sends as %s fails DMARC (%s; %s): p=%s makes receivers %s it", c.domain, spfWhy, dkimWhy, dm.Applied,
			map[string]string{"reject": "refuse", "quarantine": "quarantine"}[dm.Applied])
	}
}

func firstTrue(cond bool, a, b string) string {
	if cond {
		return a
	}
	return b
}
