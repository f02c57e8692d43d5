// Package doctor owns the DNS doctor (SPEC §9, `relay dns`): for each domain it reads the
// live SPF, DKIM, DMARC and bounce-domain records through the relay's resolver, asks
// policy.Decide what the relay would do with a From at that domain, and says what to
// publish so that it may send as it, as text and as JSON. It never decides a sender
// itself (package policy does, with the authorizer the relay uses), never parses an SPF
// or DKIM record itself (packages spf and dkimkey do) and never changes anything.
package doctor

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"relay/internal/config"
	"relay/internal/pipeline"
	"relay/internal/resolver"
	"relay/internal/server"
	"relay/internal/spf"
)

// DefaultParallel bounds the domains checked at once. Each check makes a dozen or so
// queries, themselves partly in parallel; 16 domains at a time keeps a resolver under a
// few hundred queries in flight, far below what public and ISP resolvers rate-limit.
const DefaultParallel = 16

// Doctor checks domains against one configuration.
type Doctor struct {
	cfg   *config.Config
	state *pipeline.State
	res   *resolver.Resolver

	// Parallel bounds the domains checked at once; 0 means DefaultParallel.
	Parallel int
}

// New makes a doctor for cfg: the relay's own signer and authorizer (server.NewState,
// so the verdicts are the relay's), and a resolver with the [dns] settings for the
// doctor's own lookups.
func New(cfg *config.Config) (*Doctor, error) {
	st, err := server.NewState(cfg)
	if err != nil {
		return nil, err
	}
	r, err := resolver.New(cfg.DNS.Servers, cfg.DNS.Timeout.Duration)
	if err != nil {
		return nil, err
	}
	return &Doctor{cfg: cfg, state: st, res: r}, nil
}

// Target is a domain to check, with the business unit its mail is sent under ("" for
// none): a unit's domains and fallback are checked as that unit sends them.
type Target struct {
	Domain string
	Unit   string
}

// Targets are the domains cfg names (config.NamedDomains), each checked as its unit
// sends it.
func Targets(cfg *config.Config) []Target {
	var out []Target
	for _, d := range cfg.NamedDomains() {
		out = append(out, Target{Domain: d.Domain, Unit: d.Unit})
	}
	return out
}

// Result is what one run of the doctor found: the relay's own setup, then each domain.
type Result struct {
	// Resolvers are the DNS servers asked ([dns] servers, else /etc/resolv.conf's).
	Resolvers  []string `json:"resolvers"`
	SendingIPs []string `json:"sending_ips"`
	SPFInclude string   `json:"spf_include"`
	// Findings are about the relay's own setup: its DKIM record, its SPF include.
	Findings  []Finding  `json:"findings"`
	DNSErrors []DNSError `json:"dns_errors"`
	Domains   []Report   `json:"domains"`
	// ExitCode is what `relay dns` exits with: 0 every domain ready, 1 one is not, 2 a
	// lookup failed (the DNS could not be asked) somewhere.
	ExitCode int `json:"exit_code"`
}

// Run checks the targets, at most Parallel at a time, and returns the reports in the
// order given. Each domain's check is bounded by deadline(): a DNS server that does not
// answer costs that, not minutes.
func (d *Doctor) Run(ctx context.Context, targets []Target) *Result {
	res := &Result{Resolvers: d.res.Servers(), SPFInclude: d.cfg.Doctor.SPFInclude}
	for _, ip := range d.cfg.SPF.IPs {
		res.SendingIPs = append(res.SendingIPs, ip.String())
	}
	r := &run{d: d, relayDone: make(chan struct{})}
	go func() {
		defer close(r.relayDone)
		rctx, cancel := context.WithTimeout(ctx, d.deadline())
		defer cancel()
		r.relay = r.checkRelay(rctx)
	}()

	res.Domains = make([]Report, len(targets))
	n := d.Parallel
	if n <= 0 {
		n = DefaultParallel
	}
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for i, t := range targets {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res.Domains[i] = r.check(ctx, t)
		})
	}
	wg.Wait()
	<-r.relayDone
	res.Findings = r.relay.findings
	res.DNSErrors = r.relay.dnsErrors
	res.ExitCode = exitCode(res)
	res.normalize()
	return res
}

func exitCode(res *Result) int {
	code := 0
	if len(res.DNSErrors) > 0 {
		return 2
	}
	for _, r := range res.Domains {
		switch {
		case r.Status == StatusDNSError || len(r.DNSErrors) > 0:
			return 2
		case r.Status == StatusNotReady:
			code = 1
		}
	}
	return code
}

// deadline bounds one domain's check: the relay's bound on one SPF evaluation ([spf]
// timeout), plus two queries for what is asked after the verdict (the bounce domain's MX,
// then its address).
func (d *Doctor) deadline() time.Duration {
	spfT := d.cfg.SPF.Timeout.Duration
	if spfT <= 0 {
		spfT = 5 * time.Second
	}
	dnsT := d.cfg.DNS.Timeout.Duration
	if dnsT <= 0 {
		dnsT = resolver.DefaultQueryTimeout
	}
	return spfT + 2*dnsT
}

// Status is a domain's verdict.
type Status string

const (
	// StatusReady: mail with a From at the domain leaves with a From at the domain.
	StatusReady Status = "ready"
	// StatusNotReady: the relay rewrites such a From to a fallback elsewhere.
	StatusNotReady Status = "not-ready"
	// StatusDNSError: a lookup the verdict depends on failed; the verdict is unknown.
	StatusDNSError Status = "dns-error"
)

// Report is what the doctor found for one domain.
type Report struct {
	Domain string `json:"domain"`
	Unit   string `json:"unit"`
	Status Status `json:"status"`
	// Verdict is the status in words: "ready: the relay sends as this domain
	// (spf-pass)", "not ready: the relay falls back to noreply@example.net
	// (fallback-global)".
	Verdict  string    `json:"verdict"`
	Decision Decision  `json:"decision"`
	SPF      SPF       `json:"spf"`
	DKIM     []DKIMKey `json:"dkim"`
	DMARC    DMARC     `json:"dmarc"`
	Bounce   Bounce    `json:"bounce"`
	// Findings are the problems and advice, each about one area.
	Findings []Finding `json:"findings"`
	// Publish are the records to publish, in order of use.
	Publish   []Record   `json:"publish"`
	DNSErrors []DNSError `json:"dns_errors"`
}

// Decision is policy.Decide's answer for a message from the probe address (a fallback
// address in the domain, else postmaster@domain) as From and envelope sender.
type Decision struct {
	Probe             string   `json:"probe"`
	From              string   `json:"from"`
	Rewritten         bool     `json:"rewritten"`
	Reason            string   `json:"reason"`
	Detail            string   `json:"detail"`
	Envelope          string   `json:"envelope"`
	EnvelopeRewritten bool     `json:"envelope_rewritten"`
	DKIMDomain        string   `json:"dkim_domain"`
	DKIMSelectors     []string `json:"dkim_selectors"`
	Delegated         bool     `json:"delegated"`
}

// SPF is what the domain's SPF records say.
type SPF struct {
	// Exists is false when the domain does not exist (NXDOMAIN).
	Exists bool `json:"exists"`
	// Records are the SPF records found (more than one is a permerror); NotSPF the TXT
	// records that look like an attempt at one but are not (receivers ignore them).
	Records []string `json:"records"`
	NotSPF  []string `json:"not_spf"`
	// Results is check_host(ip, domain, postmaster@domain) for each [spf] sending_ips
	// address; Pass is set when every one is "pass".
	Results []IPResult `json:"results"`
	Pass    bool       `json:"pass"`
	// Lookups and VoidLookups count the record's DNS lookups (limit 10) and void lookups
	// (limit 2) when nothing matches, over the whole include tree (Tree); with several
	// records, those of the merged record.
	Lookups     int       `json:"lookups"`
	VoidLookups int       `json:"void_lookups"`
	Tree        *spf.Node `json:"tree"`
}

// IPResult is check_host for one sending IP.
type IPResult struct {
	IP     string `json:"ip"`
	Result string `json:"result"`
	// Why explains a temperror or permerror.
	Why string `json:"why"`
}

// DKIMKey is one DKIM key record the relay needs.
type DKIMKey struct {
	// Name is <selector>._domainkey.<domain>.
	Name     string `json:"name"`
	Domain   string `json:"domain"`
	Selector string `json:"selector"`
	// Role is why the relay needs it: "delegation" (the relay's default key, which lets
	// it keep a From at the domain and sign as it), "own-key" (a [[dkim.keys]] key of the
	// domain), "default-key" (the default key at [dkim] domain itself) or "signing" (a
	// key of the domain the relay signs this domain's mail as).
	Role string `json:"role"`
	// KeyAlgo is the relay's key's algorithm ("ed25519-sha256", "rsa-sha256").
	KeyAlgo string `json:"key_algo"`
	// State is what is published: "match" (the relay's key), "missing", "other-key",
	// "revoked" (empty p=), "malformed", "several" (more than one TXT record) or
	// "dns-error".
	State string `json:"state"`
	// CNAMEs are the names the record's name led to, in order.
	CNAMEs []string `json:"cnames"`
	// Record is the TXT record found.
	Record string `json:"record"`
	// KeyType and KeyBits describe the published key ("rsa" 2048, "ed25519" 256).
	KeyType string `json:"key_type"`
	KeyBits int    `json:"key_bits"`
	// Testing is set for t=y.
	Testing bool `json:"testing"`
	// Tag names the tag at fault of a malformed record; Error says what is wrong.
	Tag   string `json:"tag"`
	Error string `json:"error"`
}

// DMARC is the domain's DMARC policy and whether the relay's mail would pass it.
type DMARC struct {
	// Name is _dmarc.<domain>; FoundAt where the record was found: Name, or
	// _dmarc.<organizational domain> (Inherited) for a subdomain without one.
	Name      string `json:"name"`
	FoundAt   string `json:"found_at"`
	Inherited bool   `json:"inherited"`
	Record    string `json:"record"`
	// Policy (p=), SubdomainPolicy (sp=), and Applied: what receivers apply to mail
	// from this domain ("none" when there is no usable record).
	Policy          string   `json:"policy"`
	SubdomainPolicy string   `json:"subdomain_policy"`
	Applied         string   `json:"applied"`
	Pct             int      `json:"pct"`
	ADKIM           string   `json:"adkim"`
	ASPF            string   `json:"aspf"`
	RUA             []string `json:"rua"`
	// Error is a syntax error, or several records: receivers then apply no policy.
	Error string `json:"error"`
	// Unknown is set when the lookup failed: nothing above is known.
	Unknown  bool     `json:"unknown"`
	Forecast Forecast `json:"forecast"`
}

// Forecast says whether mail the relay sends as this domain passes DMARC (RFC 7489
// §4.2): SPF pass for the envelope domain and aligned with the From, or a DKIM
// signature the receiver can verify with a d= aligned with the From.
type Forecast struct {
	// Applies is false when the relay rewrites the From: this domain's policy does not
	// then apply to its mail.
	Applies     bool   `json:"applies"`
	Pass        bool   `json:"pass"`
	SPFAligned  bool   `json:"spf_aligned"`
	DKIMAligned bool   `json:"dkim_aligned"`
	Envelope    string `json:"envelope"`
	DKIMDomain  string `json:"dkim_domain"`
	Text        string `json:"text"`
}

// Bounce is the check of the envelope sender's domain (SPEC §9): bounces and receivers'
// sender callbacks need an MX (or an address).
type Bounce struct {
	Address string   `json:"address"`
	Domain  string   `json:"domain"`
	MX      []string `json:"mx"`
	NullMX  bool     `json:"null_mx"`
	// HasAddress: no MX but an A or AAAA record (RFC 5321 §5.1 implicit MX).
	HasAddress bool `json:"has_address"`
	OK         bool `json:"ok"`
	// Unknown is set when the lookup failed: nothing above is known.
	Unknown bool `json:"unknown"`
}

// Finding is one problem or piece of advice.
type Finding struct {
	// Severity: "error" (breaks something), "warning" (a risk) or "info".
	Severity string `json:"severity"`
	// Area: "spf", "dkim", "dmarc", "bounce", "relay".
	Area string `json:"area"`
	Text string `json:"text"`
}

// DNSError is a lookup that failed, so a part of the report is unknown.
type DNSError struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	Server string `json:"server"`
	Error  string `json:"error"`
}

// normalize makes every list of the JSON form a list, never null.
func (res *Result) normalize() {
	nonNil(&res.Resolvers)
	nonNil(&res.SendingIPs)
	nonNil(&res.Findings)
	nonNil(&res.DNSErrors)
	for i := range res.Domains {
		r := &res.Domains[i]
		nonNil(&r.Decision.DKIMSelectors)
		nonNil(&r.SPF.Records)
		nonNil(&r.SPF.NotSPF)
		nonNil(&r.SPF.Results)
		nonNil(&r.DKIM)
		for j := range r.DKIM {
			nonNil(&r.DKIM[j].CNAMEs)
		}
		nonNil(&r.DMARC.RUA)
		nonNil(&r.Bounce.MX)
		nonNil(&r.Findings)
		nonNil(&r.Publish)
		for j := range r.Publish {
			nonNil(&r.Publish[j].Strings)
		}
		nonNil(&r.DNSErrors)
		normalizeNode(r.SPF.Tree)
	}
}

func normalizeNode(n *spf.Node) {
	if n == nil {
		return
	}
	nonNil(&n.Notes)
	nonNil(&n.Includes)
	for _, c := range n.Includes {
		normalizeNode(c)
	}
}

func nonNil[T any](s *[]T) {
	if *s == nil {
		*s = []T{}
	}
}

// hasIPv4 reports whether any sending IP is IPv4 (or there is none): the void lookups
// that count are then those an IPv4 client's check sees.
func hasIPv4(ips []netip.Addr) bool {
	return len(ips) == 0 || slices.ContainsFunc(ips, func(a netip.Addr) bool { return a.Unmap().Is4() })
}
