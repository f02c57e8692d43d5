package doctor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"relay/internal/names"
	"relay/internal/resolver"
	"relay/internal/spf"
)

// spfState is what the SPF check keeps for the advice, beyond the report.
type spfState struct {
	// unknown: the domain's TXT records could not be read.
	unknown bool
	// temp: a check_host or the walk failed temporarily.
	temp bool
	// syntax holds the syntax error of each record (nil when it parses).
	syntax []error
	// base is the record the advice builds on: the one record, the merged record, or
	// the one record without the terms that do not parse (dropped); nil when none.
	base    *spf.Record
	dropped []string
}

// checkSPF reads the domain's SPF records, runs check_host for every sending IP and
// walks the include tree of the record that would be published.
func (c *checker) checkSPF(ctx context.Context) {
	s := &c.rep.SPF
	st := &c.spfState
	txts, err := resolver.TXT(ctx, c.m, c.domain)
	switch {
	case isNotFound(err):
	case err != nil && isTemporary(err):
		st.unknown = true
		c.dnsError(c.domain, "TXT", err)
		return
	case err != nil:
		st.unknown = true
		c.finding("error", "spf", "%s TXT: %v", c.domain, err)
		return
	default:
		s.Exists = true
	}
	for _, t := range txts {
		switch {
		case spf.IsSPF(t):
			s.Records = append(s.Records, t)
		case looksLikeSPF(t):
			s.NotSPF = append(s.NotSPF, t)
		}
	}

	var wg sync.WaitGroup
	s.Results = make([]IPResult, len(c.cfg.SPF.IPs))
	for i, ip := range c.cfg.SPF.IPs {
		wg.Go(func() {
			res, err := spf.CheckHost(ctx, c.m, ip, helo(c.cfg, c.domain), "postmaster@"+c.domain)
			s.Results[i] = IPResult{IP: ip.String(), Result: string(res)}
			if res == spf.TempError || res == spf.PermError {
				s.Results[i].Why = spf.Why(res, err)
			}
		})
	}

	var parsed []*spf.Record
	for _, t := range s.Records {
		rec, err := spf.Parse(t)
		st.syntax = append(st.syntax, err)
		if err != nil {
			var bad []string
			rec, bad = lenient(t)
			st.dropped = append(st.dropped, bad...)
		}
		parsed = append(parsed, rec)
	}
	switch len(parsed) {
	case 0:
	case 1:
		st.base = parsed[0]
	default:
		st.base = spf.Merge(parsed...)
	}
	if st.base != nil {
		tree, err := spf.Walk(ctx, c.m, c.domain, st.base, hasIPv4(c.cfg.SPF.IPs))
		if err != nil {
			st.temp = true
			c.dnsError(c.domain, "SPF", err)
		}
		s.Tree, s.Lookups, s.VoidLookups = tree, tree.Lookups, tree.Voids
	}
	wg.Wait()
	s.Pass = len(s.Results) > 0
	for _, r := range s.Results {
		if r.Result == string(spf.TempError) {
			st.temp = true
			c.dnsError(c.domain, "SPF", errors.New(r.Why))
		}
		s.Pass = s.Pass && r.Result == string(spf.Pass)
	}
}

// envelopeSPF is whether SPF passes for every sending IP for the envelope sender the
// relay uses for this domain's mail (DMARC's SPF half), known false when it could not
// be asked.
func (c *checker) envelopeSPF(ctx context.Context) (pass, known bool) {
	env := names.AddressDomain(c.dec.Envelope)
	switch {
	case env == "":
		return false, true
	case env == c.domain:
		return c.rep.SPF.Pass, !c.spfState.temp && !c.spfState.unknown
	case len(c.cfg.SPF.IPs) == 0:
		return false, true
	}
	pass = true
	for _, ip := range c.cfg.SPF.IPs {
		res, err := spf.CheckHost(ctx, c.m, ip, helo(c.cfg, env), "postmaster@"+env)
		if res == spf.TempError {
			c.dnsError(env, "SPF", err)
			return false, false
		}
		pass = pass && res == spf.Pass
	}
	return pass, true
}

// lenient reads a record that spf.Parse refused term by term, keeping the terms that
// parse: what the advice can build on, once the admin fixes or drops the bad ones.
func lenient(txt string) (*spf.Record, []string) {
	rec := &spf.Record{}
	var bad []string
	if !spf.IsSPF(txt) {
		return rec, nil
	}
	for _, raw := range strings.Fields(txt[6:]) {
		t, err := spf.ParseTerm(raw)
		if err != nil {
			bad = append(bad, raw)
			continue
		}
		rec.Terms = append(rec.Terms, t)
	}
	return rec, bad
}

// oneSPF returns the single valid SPF record among txts, or nil.
func oneSPF(txts []string) *spf.Record {
	var found *spf.Record
	for _, t := range txts {
		if !spf.IsSPF(t) {
			continue
		}
		if found != nil {
			return nil
		}
		rec, err := spf.Parse(t)
		if err != nil {
			return nil
		}
		found = rec
	}
	return found
}

// looksLikeSPF spots a TXT record meant as SPF that receivers ignore (RFC 7208 §4.5:
// it must begin with "v=spf1" and a space): "v=spf1;...", "spf1 ...", a leading
// space, quotes pasted into the value, Sender ID's "spf2.0".
func looksLikeSPF(txt string) bool {
	return strings.Contains(strings.ToLower(txt), "spf")
}

// spfAdvice turns what checkSPF found into findings and, when the relay needs it, the
// record to publish.
func (c *checker) spfAdvice() {
	s := &c.rep.SPF
	st := &c.spfState
	if st.unknown {
		return
	}
	if !s.Exists {
		c.finding("error", "spf", "%s does not exist in the DNS (NXDOMAIN)", c.domain)
	}
	for _, t := range s.NotSPF {
		c.finding("warning", "spf", "TXT %q is not an SPF record (it must begin with \"v=spf1\" and a space, RFC 7208 §4.5): receivers ignore it", t)
	}
	if len(s.Records) > 1 {
		c.finding("error", "spf", "%d SPF records: receivers treat that as permerror (RFC 7208 §4.5): merge them into one (below) and delete the others", len(s.Records))
		alls := map[string]bool{}
		for _, r := range s.Records {
			if rec, _ := lenient(r); rec.AllIndex() >= 0 {
				alls[rec.Terms[rec.AllIndex()].Raw] = true
			}
		}
		if len(alls) > 1 && st.base.AllIndex() >= 0 {
			c.finding("info", "spf", "the records end differently; the merged record keeps %s, the first record's", st.base.Terms[st.base.AllIndex()].Raw)
		}
	}
	for i, err := range st.syntax {
		var se *spf.SyntaxError
		if errors.As(err, &se) && se.Index >= 0 {
			c.finding("error", "spf", "syntax error in term %q: %s; receivers get permerror for the whole record (RFC 7208 §4.6)", se.Term, se.Rule)
		} else if err != nil {
			c.finding("error", "spf", "record %q: %v", s.Records[i], err)
		}
	}
	if st.base != nil {
		if i := st.base.AllIndex(); i >= 0 {
			switch t := st.base.Terms[i]; t.Qualifier {
			case 0, '+':
				c.finding("warning", "spf", "%q lets every host on the internet pass SPF as %s: end the record with -all or ~all", t.Raw, c.domain)
			case '?':
				c.finding("warning", "spf", "%q is neutral about every other host, which protects nothing: end the record with -all or ~all", t.Raw)
			}
		}
		for _, t := range st.base.Terms {
			if !t.IsModifier && t.Name == "ptr" {
				c.finding("warning", "spf", "%q: RFC 7208 §5.5 says not to use ptr (slow and unreliable; some receivers skip it): list the addresses instead", t.Raw)
			}
		}
	}
	if s.Tree != nil {
		if s.Lookups > spf.MaxLookups {
			c.finding("error", "spf", "%d DNS lookups, over the limit of %d: receivers get permerror (RFC 7208 §4.6.4): drop includes no longer used, or replace some by the ip4:/ip6: ranges they list", s.Lookups, spf.MaxLookups)
		}
		if s.VoidLookups > spf.MaxVoidLookups {
			c.finding("error", "spf", "%d void lookups (names that do not exist or have no record), over the limit of %d: receivers get permerror (RFC 7208 §4.6.4): drop those terms", s.VoidLookups, spf.MaxVoidLookups)
		}
		walkNodes(s.Tree, func(n *spf.Node) {
			if n.Term != "" && n.Error != "" && !n.Temporary {
				c.finding("error", "spf", "%s: %s", n.Term, n.Error)
			}
		})
	}
	if st.temp {
		return
	}

	// The record to publish: when the relay needs SPF to keep the From, or (the From
	// kept anyway) for DMARC, through the envelope sender that SPF keeps; and always
	// when several records have to be merged.
	ready := c.rep.Status == StatusReady
	need := !s.Pass && (!ready && c.cfg.SPF.Enabled || ready && c.rep.DMARC.Forecast.Applies && !c.rep.DMARC.Forecast.Pass)
	if !need && len(s.Records) < 2 {
		return
	}
	var mechs []string
	if need {
		mechs = c.mechanisms()
		if len(mechs) == 0 {
			c.finding("warning", "spf", "[spf] sending_ips is empty and [doctor] spf_include unset: nothing to add to the record")
		}
	}
	if st.base == nil {
		if len(mechs) == 0 {
			return
		}
		c.rep.Publish = append(c.rep.Publish, withNote(TXT("spf", "SPF: create the record ("+c.domain+" has none)", c.domain,
			"v=spf1 "+strings.Join(mechs, " ")+" -all"),
			"-all refuses every server not listed: add the others that send as "+c.domain+" (its mail servers, other providers) before -all"))
		return
	}
	rec := st.base
	for _, m := range mechs {
		if next, err := rec.Insert(m); err == nil {
			rec = next
		}
	}
	why := "SPF: update the existing record (do not add a second one)"
	if len(s.Records) > 1 {
		why = fmt.Sprintf("SPF: replace the %d records by this one", len(s.Records))
	}
	r := TXT("spf", why, c.domain, rec.String())
	if len(st.dropped) > 0 {
		r = withNote(r, "it leaves out "+quoteAll(st.dropped)+", which do not parse: fix them instead if they are needed")
	}
	c.rep.Publish = append(c.rep.Publish, r)
}

// mechanisms are the terms that authorize the relay: include:<[doctor] spf_include>,
// unless that would take the record past 10 lookups, else ip4:/ip6: of the sending IPs
// that do not pass yet.
func (c *checker) mechanisms() []string {
	s := &c.rep.SPF
	var ips []string
	for i, r := range s.Results {
		if r.Result == string(spf.Pass) {
			continue
		}
		if ip := c.cfg.SPF.IPs[i]; ip.Unmap().Is4() {
			ips = append(ips, "ip4:"+ip.Unmap().String())
		} else {
			ips = append(ips, "ip6:"+ip.String())
		}
	}
	inc := c.cfg.Doctor.SPFInclude
	if inc == "" {
		return ips
	}
	term := "include:" + inc
	if c.spfState.base != nil {
		for _, t := range c.spfState.base.Terms {
			if strings.EqualFold(t.Raw, term) {
				c.finding("error", "spf", "the record already has %s, yet SPF does not pass for every sending IP: check the relay's record at %s", term, inc)
				return ips
			}
		}
	}
	cost := c.r.relay.includeCost
	if s.Lookups+cost > spf.MaxLookups && len(ips) > 0 {
		c.finding("warning", "spf", "the record already makes %d DNS lookups; %s adds %d, making %d, over the limit of %d: SPF would then fail (permerror) at every receiver. The record below uses %s instead, which cost no lookup",
			s.Lookups, term, cost, s.Lookups+cost, spf.MaxLookups, strings.Join(ips, " "))
		return ips
	}
	return []string{term}
}

func walkNodes(n *spf.Node, f func(*spf.Node)) {
	f(n)
	for _, c := range n.Includes {
		walkNodes(c, f)
	}
}

func quoteAll(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
