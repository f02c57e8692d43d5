package doctor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"relay/internal/config"
	"relay/internal/names"
	"relay/internal/policy"
	"relay/internal/resolver"
	"relay/internal/spf"
)

// run is one Doctor.Run: what every domain's check shares.
type run struct {
	d *Doctor

	// relay is the check of the relay's own records, written before relayDone closes.
	relayDone chan struct{}
	relay     relayState
}

// relayState is what the relay itself publishes, which the advice to customers builds on.
type relayState struct {
	// recordOK: <selector>._domainkey.<[dkim] domain> publishes the default key, so a
	// customer may delegate with a CNAME to it.
	recordOK   bool
	recordName string
	// includeCost is what adding include:<[doctor] spf_include> costs a record in DNS
	// lookups: the include itself and the lookups of the record it names.
	includeCost int
	findings    []Finding
	dnsErrors   []DNSError
}

// checkRelay looks at the relay's own DKIM record and SPF include.
func (r *run) checkRelay(ctx context.Context) relayState {
	cfg := r.d.cfg
	c := &checker{r: r, cfg: cfg, m: resolver.NewMemo(r.d.res), rep: &Report{}}
	st := relayState{includeCost: 1}
	var wg sync.WaitGroup
	if def := r.d.state.Signer.Keys(cfg.DKIM.Domain); len(def) > 0 && cfg.DKIM.Domain != "" {
		wg.Go(func() {
			k := c.lookupKey(ctx, cfg.DKIM.Domain, def[0].Selector, "default-key", def[0].Public, def[0].Algo)
			st.recordName = k.Name
			st.recordOK = k.State == "match"
			if !st.recordOK && k.State != "dns-error" {
				c.finding("warning", "relay", "%s, the relay's own record, does not publish the default key (%s): customers must publish the whole TXT record instead of a CNAME to it; `relay dns %s` says what to publish",
					k.Name, k.State, cfg.DKIM.Domain)
			}
		})
	}
	if inc := cfg.Doctor.SPFInclude; inc != "" {
		wg.Go(func() {
			txts, err := resolver.TXT(ctx, c.m, inc)
			if err != nil && isTemporary(err) {
				c.dnsError(inc, "TXT", err)
				return
			}
			rec := oneSPF(txts)
			if rec == nil {
				c.finding("error", "relay", "[doctor] spf_include %s has no valid SPF record: every customer record that includes it gets permerror", inc)
				return
			}
			tree, err := spf.Walk(ctx, c.m, inc, rec, hasIPv4(cfg.SPF.IPs))
			if err != nil {
				c.dnsError(inc, "SPF", err)
			}
			st.includeCost = 1 + tree.Lookups
			for _, ip := range cfg.SPF.IPs {
				res, err := spf.CheckHost(ctx, c.m, ip, helo(cfg, inc), "postmaster@"+inc)
				switch {
				case res == spf.TempError:
					c.dnsError(inc, "SPF", err)
				case res != spf.Pass:
					c.finding("error", "relay", "[doctor] spf_include %s does not authorize %s (spf %s): fix the relay's own record first, or customers who include it still fail",
						inc, ip, res)
				}
			}
		})
	}
	wg.Wait()
	st.findings, st.dnsErrors = sortFindings(c.findings), sortDNSErrors(c.dnsErrs)
	return st
}

// checker is the check of one domain.
type checker struct {
	r      *run
	cfg    *config.Config
	t      Target
	domain string
	m      *resolver.Memo
	rep    *Report

	dec      policy.Decision
	decErr   error
	watch    *watch
	spfState spfState

	mu       sync.Mutex
	findings []Finding
	dnsErrs  []DNSError
}

// check builds the report of one domain: first what does not depend on the verdict
// (policy.Decide, SPF, DMARC, the domain's own DKIM records) at once, then what does
// (the bounce domain, the DKIM key of the domain signed as, the envelope's SPF).
func (r *run) check(ctx context.Context, t Target) Report {
	ctx, cancel := context.WithTimeout(ctx, r.d.deadline())
	defer cancel()
	rep := Report{Domain: t.Domain, Unit: t.Unit}
	c := &checker{r: r, cfg: r.d.cfg, t: t, domain: t.Domain, m: resolver.NewMemo(r.d.res), rep: &rep,
		watch: &watch{a: r.d.state.Auth}}

	var wg sync.WaitGroup
	wg.Go(func() { c.decide(ctx) })
	wg.Go(func() { c.checkSPF(ctx) })
	wg.Go(func() { c.checkDMARC(ctx) })
	wg.Go(func() { c.checkOwnKeys(ctx) })
	wg.Wait()

	c.verdict()
	ready := rep.Status == StatusReady
	wg.Go(func() { c.checkBounce(ctx) })
	var envPass bool
	var envKnown bool
	if ready {
		wg.Go(func() { c.checkSigningKeys(ctx) })
		wg.Go(func() { envPass, envKnown = c.envelopeSPF(ctx) })
	}
	wg.Wait()
	<-r.relayDone

	c.forecast(envPass, envKnown)
	c.spfAdvice()
	c.dkimAdvice()
	if rep.Status == StatusDNSError && len(rep.Publish) > 0 {
		// What to publish rests on what the failed lookups would have said.
		rep.Publish = nil
		c.finding("info", "relay", "nothing to publish is offered while a lookup fails: run `relay dns %s` again once the DNS answers", c.domain)
	}
	rep.Findings = sortFindings(c.findings)
	rep.DNSErrors = sortDNSErrors(c.dnsErrs)
	return rep
}

// The checks of one domain run at once, so what they found is put in an order of its
// own: by area, then severity, then text.
var (
	areaRank     = map[string]int{"relay": 0, "spf": 1, "dkim": 2, "dmarc": 3, "bounce": 4}
	severityRank = map[string]int{"error": 0, "warning": 1, "info": 2}
)

func sortFindings(fs []Finding) []Finding {
	slices.SortStableFunc(fs, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(areaRank[a.Area], areaRank[b.Area]),
			cmp.Compare(severityRank[a.Severity], severityRank[b.Severity]),
			strings.Compare(a.Text, b.Text))
	})
	return fs
}

func sortDNSErrors(es []DNSError) []DNSError {
	slices.SortStableFunc(es, func(a, b DNSError) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Type, b.Type), strings.Compare(a.Error, b.Error))
	})
	return es
}

// probe is the address the verdict is asked for: a fallback or bounce address of the
// configuration when one is in the domain (its report is then about the relay's own
// rewritten mail), else postmaster@domain.
func probe(cfg *config.Config, domain string) string {
	addrs := []string{cfg.Sender.Fallback, cfg.Sender.BounceAddress}
	for _, u := range cfg.Units {
		addrs = append(addrs, u.Fallback, u.BounceAddress)
	}
	for _, a := range addrs {
		if a != "" && names.AddressDomain(a) == domain {
			return a
		}
	}
	return "postmaster@" + domain
}

// decide asks policy.Decide, through the relay's authorizer, what happens to a message
// from the probe address.
func (c *checker) decide(ctx context.Context) {
	p := probe(c.cfg, c.domain)
	c.dec, c.decErr = policy.Decide(ctx, c.cfg, c.watch, policy.Input{Unit: c.t.Unit, From: p, Envelope: p})
	d := &c.rep.Decision
	d.Probe = p
	if c.decErr != nil {
		return
	}
	d.From, d.Rewritten, d.Reason, d.Detail = c.dec.From, c.dec.Rewritten, string(c.dec.Reason), c.dec.Detail
	d.Envelope, d.EnvelopeRewritten = c.dec.Envelope, c.dec.EnvelopeRewritten
	d.DKIMDomain, d.Delegated = c.dec.DKIMDomain, c.dec.Delegated
	for _, k := range c.r.d.state.Signer.Keys(c.dec.DKIMDomain) {
		d.DKIMSelectors = append(d.DKIMSelectors, k.Selector)
	}
}

// verdict sets the status from the decision (see Status): what policy.Decide says, unless
// it was reached because a lookup failed.
func (c *checker) verdict() {
	rep := c.rep
	var deferErr *policy.DeferError
	fromDomain := names.AddressDomain(c.dec.From)
	switch {
	case errors.As(c.decErr, &deferErr):
		rep.Status = StatusDNSError
		rep.Verdict = "unknown: a DNS lookup failed (" + deferErr.Detail + "); until it works the relay answers 451 (on_temperror = \"defer\")"
		c.dnsError(c.domain, "check", errors.New(deferErr.Detail))
	case c.decErr != nil:
		rep.Status = StatusDNSError
		rep.Verdict = "unknown: " + c.decErr.Error()
	case fromDomain == c.domain && !c.dec.Rewritten:
		rep.Status = StatusReady
		rep.Verdict = fmt.Sprintf("ready: the relay sends as this domain (%s)", c.dec.Reason)
	case fromDomain == c.domain:
		// The domain of the fallback itself: rewritten mail leaves as it.
		rep.Status = StatusReady
		rep.Verdict = fmt.Sprintf("ready: the relay sends rewritten mail as %s (%s)", c.dec.From, c.dec.Reason)
	case len(c.watch.temporary()) > 0:
		rep.Status = StatusDNSError
		rep.Verdict = fmt.Sprintf("unknown: a DNS lookup failed; until it works the relay falls back to %s (%s)", c.dec.From, c.dec.Reason)
		for _, detail := range c.watch.temporary() {
			c.dnsError(c.domain, "check", errors.New(detail))
		}
	default:
		rep.Status = StatusNotReady
		rep.Verdict = fmt.Sprintf("not ready: the relay falls back to %s (%s)", c.dec.From, c.dec.Reason)
	}
}

// watch is the relay's authorizer, for policy.Decide, noting the checks that failed
// temporarily: a verdict reached because of them is not a verdict.
type watch struct {
	a policy.Authorizer

	mu   sync.Mutex
	temp []string
}

func (w *watch) SPF(ctx context.Context, domain string) policy.Check {
	return w.note(w.a.SPF(ctx, domain))
}

func (w *watch) Delegated(ctx context.Context, domain string) policy.Check {
	return w.note(w.a.Delegated(ctx, domain))
}

func (w *watch) note(c policy.Check) policy.Check {
	if c.Temporary {
		w.mu.Lock()
		w.temp = append(w.temp, c.Detail)
		w.mu.Unlock()
	}
	return c
}

func (w *watch) temporary() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.temp
}

func (c *checker) finding(severity, area, format string, args ...any) {
	c.mu.Lock()
	c.findings = append(c.findings, Finding{Severity: severity, Area: area, Text: fmt.Sprintf(format, args...)})
	c.mu.Unlock()
}

// dnsError records a failed lookup of name, once per name, type and error.
func (c *checker) dnsError(name, qtype string, err error) {
	e := DNSError{Name: name, Type: qtype, Error: err.Error()}
	var d *net.DNSError
	if errors.As(err, &d) {
		e.Error = d.Err
		if d.IsTimeout {
			e.Error = "timeout"
		}
		if d.Name != "" {
			e.Name = d.Name
		}
		e.Server = d.Server
	}
	if e.Server == "" {
		e.Server = strings.Join(c.r.d.res.Servers(), ", ")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, x := range c.dnsErrs {
		if x == e {
			return
		}
	}
	c.dnsErrs = append(c.dnsErrs, e)
}

func isTemporary(err error) bool {
	var d *net.DNSError
	return errors.As(err, &d) && d.Temporary()
}

func isNotFound(err error) bool {
	var d *net.DNSError
	return errors.As(err, &d) && d.IsNotFound
}

// helo is the name the relay's SPF checks give for %{h}, as package authz does.
func helo(cfg *config.Config, domain string) string {
	if cfg.Hostname != "" {
		return cfg.Hostname
	}
	return domain
}
