package doctor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/dnstest"
	"relay/internal/doctor"
)

var update = flag.Bool("update", false, "rewrite the golden files (testdata/*.golden, *.json)")

// keys is the repository's testdata/keys, whose keys the zones publish.
var keys = func() string {
	p, err := filepath.Abs("../../testdata/keys")
	if err != nil {
		panic(err)
	}
	return p
}()

// A case is one situation, chasquid-style: testdata/NN-name.zone is what the DNS serves
// (with testdata/relay.zone, the relay's own records, unless it says "; relay: none"),
// NN-name.toml the configuration when it is not testdata/base.toml; NN-name.golden is
// the text output and NN-name.json the JSON output. The zone's comments say why the case
// exists and steer it:
//
//	; check: a.example b.example/sales   the domains (and units) to check; none: the config's
//	; server: silent                      the DNS server never answers
//	; servfail: name ...                  these names answer SERVFAIL
//
// In the zone, {{key:NAME}} is the DKIM record of testdata/keys/NAME.pem and {{p:NAME}}
// its p= value; in the .toml, {{dns}} is the server and {{keys}} the keys directory.
type tcase struct {
	name    string
	zone    string
	targets []doctor.Target
	silent  bool
	fail    []string
	config  string
}

func loadCase(t *testing.T, name string) tcase {
	t.Helper()
	zone, err := os.ReadFile(filepath.Join("testdata", name+".zone"))
	require.NoError(t, err)
	c := tcase{name: name, zone: string(zone)}
	relay := true
	for _, line := range strings.Split(c.zone, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, ";") {
			continue
		}
		key, val, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(line, ";")), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		switch key {
		case "check":
			for _, f := range fields {
				d, unit, _ := strings.Cut(f, "/")
				c.targets = append(c.targets, doctor.Target{Domain: d, Unit: unit})
			}
		case "server":
			c.silent = val == " silent"
		case "servfail":
			c.fail = fields
		case "relay":
			relay = strings.TrimSpace(val) != "none"
		}
	}
	if relay {
		r, err := os.ReadFile("testdata/relay.zone")
		require.NoError(t, err)
		c.zone = string(r) + c.zone
	}
	c.zone = expandKeys(t, c.zone)
	cfg, err := os.ReadFile(filepath.Join("testdata", name+".toml"))
	if os.IsNotExist(err) {
		cfg, err = os.ReadFile("testdata/base.toml")
	}
	require.NoError(t, err)
	c.config = string(cfg)
	return c
}

var keyRef = regexp.MustCompile(`\{\{(key|p):([a-z0-9.]+)\}\}`)

func expandKeys(t testing.TB, zone string) string {
	return keyRef.ReplaceAllStringFunc(zone, func(ref string) string {
		m := keyRef.FindStringSubmatch(ref)
		k, err := dkimkey.Load(filepath.Join(keys, m[2]+".pem"))
		require.NoError(t, err)
		var v string
		if m[1] == "key" {
			v, err = dkimkey.Record(k.Public())
		} else {
			v, err = dkimkey.PublicData(k.Public())
		}
		require.NoError(t, err)
		return v
	})
}

// run serves the case's zone, loads its configuration and runs the doctor.
func (c tcase) run(t *testing.T) (*doctor.Result, *dnstest.Server, time.Duration) {
	t.Helper()
	srv := dnstest.New(t, c.zone)
	srv.SetSilent(c.silent)
	for _, n := range c.fail {
		srv.SetServFail(n, true)
	}
	cfg := loadConfig(t, c.config, srv.Addr)
	d, err := doctor.New(cfg)
	require.NoError(t, err)
	targets := c.targets
	if len(targets) == 0 {
		targets = doctor.Targets(cfg)
	}
	start := time.Now()
	res := d.Run(context.Background(), targets)
	return res, srv, time.Since(start)
}

func loadConfig(t testing.TB, text, dnsAddr string) *config.Config {
	t.Helper()
	text = strings.NewReplacer("{{dns}}", dnsAddr, "{{keys}}", keys).Replace(text)
	path := filepath.Join(t.TempDir(), "relay.toml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	cfg, err := config.Load(path)
	require.NoError(t, err)
	return cfg
}

func cases(t *testing.T) []string {
	zones, err := filepath.Glob("testdata/[0-9]*.zone")
	require.NoError(t, err)
	require.NotEmpty(t, zones)
	var names []string
	for _, z := range zones {
		names = append(names, strings.TrimSuffix(filepath.Base(z), ".zone"))
	}
	return names
}

// TestGolden runs every case and compares the text and JSON output with the golden
// files; go test ./internal/doctor -update rewrites them (review the diff).
func TestGolden(t *testing.T) {
	for _, name := range cases(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := loadCase(t, name)
			res, srv, _ := c.run(t)
			var text, js bytes.Buffer
			require.NoError(t, doctor.WriteText(&text, res))
			require.NoError(t, doctor.WriteJSON(&js, res))
			// The server's port changes from run to run.
			golden(t, filepath.Join("testdata", name+".golden"), strings.ReplaceAll(text.String(), srv.Addr, "DNS"))
			golden(t, filepath.Join("testdata", name+".json"), strings.ReplaceAll(js.String(), srv.Addr, "DNS"))
		})
	}
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "no golden file: run go test ./internal/doctor -update")
	require.Equal(t, string(want), got, "%s differs: run go test ./internal/doctor -update and review the diff", path)
}

// report decodes the JSON output of a case, as a script reading `relay dns -json` would.
type jsonResult struct {
	Resolvers []string `json:"resolvers"`
	ExitCode  int      `json:"exit_code"`
	Domains   []struct {
		Domain   string `json:"domain"`
		Status   string `json:"status"`
		Verdict  string `json:"verdict"`
		Decision struct {
			From       string `json:"from"`
			Reason     string `json:"reason"`
			Envelope   string `json:"envelope"`
			DKIMDomain string `json:"dkim_domain"`
			Delegated  bool   `json:"delegated"`
		} `json:"decision"`
		SPF struct {
			Exists  bool     `json:"exists"`
			Records []string `json:"records"`
			NotSPF  []string `json:"not_spf"`
			Results []struct {
				IP, Result, Why string
			} `json:"results"`
			Pass        bool `json:"pass"`
			Lookups     int  `json:"lookups"`
			VoidLookups int  `json:"void_lookups"`
			Tree        *struct {
				Includes []struct {
					Term    string `json:"term"`
					Lookups int    `json:"lookups"`
				} `json:"includes"`
			} `json:"tree"`
		} `json:"spf"`
		DKIM []struct {
			Name    string   `json:"name"`
			Role    string   `json:"role"`
			State   string   `json:"state"`
			CNAMEs  []string `json:"cnames"`
			KeyType string   `json:"key_type"`
			KeyBits int      `json:"key_bits"`
			Testing bool     `json:"testing"`
			Tag     string   `json:"tag"`
		} `json:"dkim"`
		DMARC struct {
			FoundAt         string   `json:"found_at"`
			Inherited       bool     `json:"inherited"`
			Policy          string   `json:"policy"`
			SubdomainPolicy string   `json:"subdomain_policy"`
			Applied         string   `json:"applied"`
			Pct             int      `json:"pct"`
			ADKIM           string   `json:"adkim"`
			ASPF            string   `json:"aspf"`
			RUA             []string `json:"rua"`
			Error           string   `json:"error"`
			Forecast        struct {
				Applies     bool `json:"applies"`
				Pass        bool `json:"pass"`
				SPFAligned  bool `json:"spf_aligned"`
				DKIMAligned bool `json:"dkim_aligned"`
			} `json:"forecast"`
		} `json:"dmarc"`
		Bounce struct {
			Address string   `json:"address"`
			MX      []string `json:"mx"`
			NullMX  bool     `json:"null_mx"`
			OK      bool     `json:"ok"`
		} `json:"bounce"`
		Findings []struct {
			Severity, Area, Text string
		} `json:"findings"`
		Publish []struct {
			Kind    string   `json:"kind"`
			Name    string   `json:"name"`
			Type    string   `json:"type"`
			Value   string   `json:"value"`
			Strings []string `json:"strings"`
			Zone    string   `json:"zone"`
		} `json:"publish"`
		DNSErrors []struct {
			Name, Type, Server, Error string
		} `json:"dns_errors"`
	} `json:"domains"`
}

func decoded(t *testing.T, name string) (jsonResult, string, time.Duration) {
	t.Helper()
	c := loadCase(t, name)
	res, srv, took := c.run(t)
	var buf bytes.Buffer
	require.NoError(t, doctor.WriteJSON(&buf, res))
	var out jsonResult
	require.NoError(t, json.Unmarshal(buf.Bytes(), &out))
	return out, srv.Addr, took
}

func findingsText(fs []struct{ Severity, Area, Text string }) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(f.Severity + " " + f.Area + ": " + f.Text + "\n")
	}
	return b.String()
}

// The cases the issue judges by, decoded from JSON and asserted field by field.
func TestOutlookInclude(t *testing.T) {
	out, _, _ := decoded(t, "01-outlook-include")
	require.Equal(t, 1, out.ExitCode)
	d := out.Domains[0]
	require.Equal(t, "customer.example", d.Domain)
	require.Equal(t, "not-ready", d.Status)
	require.Equal(t, "not ready: the relay falls back to noreply@example.net (fallback-global)", d.Verdict)
	require.Equal(t, []string{"v=spf1 include:spf.protection.outlook.com -all"}, d.SPF.Records)
	require.Equal(t, 2, d.SPF.Lookups)
	require.Equal(t, "include:spf.protection.outlook.com", d.SPF.Tree.Includes[0].Term)
	require.Equal(t, "fail", d.SPF.Results[0].Result)
	require.Len(t, d.Publish, 2)
	require.Equal(t, "spf", d.Publish[0].Kind)
	require.Equal(t, "customer.example", d.Publish[0].Name)
	require.Equal(t, "TXT", d.Publish[0].Type)
	require.Equal(t, "v=spf1 include:spf.protection.outlook.com ip4:203.0.113.10 ip6:2001:db8::10 -all", d.Publish[0].Value)
	require.Equal(t, `customer.example. IN TXT "v=spf1 include:spf.protection.outlook.com ip4:203.0.113.10 ip6:2001:db8::10 -all"`, d.Publish[0].Zone)
	require.Equal(t, "dkim", d.Publish[1].Kind)
	require.Equal(t, "CNAME", d.Publish[1].Type)
	require.Equal(t, "default._domainkey.customer.example", d.Publish[1].Name)
	require.Equal(t, "default._domainkey.example.net", d.Publish[1].Value)
	require.Equal(t, "default._domainkey.customer.example. IN CNAME default._domainkey.example.net.", d.Publish[1].Zone)
}

func TestTwoRecords(t *testing.T) {
	out, _, _ := decoded(t, "02-two-records")
	d := out.Domains[0]
	require.Len(t, d.SPF.Records, 2)
	require.Contains(t, findingsText(d.Findings), "error spf: 2 SPF records: receivers treat that as permerror (RFC 7208 §4.5): merge them into one")
	require.Equal(t, "permerror", d.SPF.Results[0].Result)
	require.Equal(t, "v=spf1 include:_spf.google.com ip4:198.51.100.7 ip4:203.0.113.10 ip6:2001:db8::10 ~all", d.Publish[0].Value)
	require.Equal(t, "TXT", d.Publish[0].Type)
}

func TestTenLookups(t *testing.T) {
	out, _, _ := decoded(t, "03-ten-lookups")
	d := out.Domains[0]
	require.Equal(t, 10, d.SPF.Lookups)
	require.Contains(t, findingsText(d.Findings), "the record already makes 10 DNS lookups; include:_spf.relay.example.net adds 1, making 11, over the limit of 10")
	require.Equal(t, "spf", d.Publish[0].Kind)
	require.NotContains(t, d.Publish[0].Value, "include:_spf.relay.example.net")
	require.Contains(t, d.Publish[0].Value, " ip4:203.0.113.10 ip6:2001:db8::10 -all")
}

func TestDelegatedReject(t *testing.T) {
	out, _, _ := decoded(t, "04-delegated-reject")
	require.Equal(t, 0, out.ExitCode)
	d := out.Domains[0]
	require.Equal(t, "ready", d.Status)
	require.Equal(t, "ready: the relay sends as this domain (dkim-delegated)", d.Verdict)
	require.Equal(t, "dkim-delegated", d.Decision.Reason)
	require.True(t, d.Decision.Delegated)
	require.Equal(t, "delegated.example", d.Decision.DKIMDomain)
	require.Equal(t, "delegation", d.DKIM[0].Role)
	require.Equal(t, "match", d.DKIM[0].State)
	require.Equal(t, []string{"default._domainkey.example.net"}, d.DKIM[0].CNAMEs)
	require.Equal(t, "reject", d.DMARC.Applied)
	require.True(t, d.DMARC.Forecast.Applies)
	require.True(t, d.DMARC.Forecast.Pass)
	require.True(t, d.DMARC.Forecast.DKIMAligned)
	require.False(t, d.DMARC.Forecast.SPFAligned)
	require.Empty(t, d.Publish)
}

// A DNS server that does not answer: exit 2, within the configured bound, and the
// domain is never called "not ready".
func TestNoAnswer(t *testing.T) {
	out, addr, took := decoded(t, "05-no-answer")
	require.Equal(t, 2, out.ExitCode)
	d := out.Domains[0]
	require.Equal(t, "dns-error", d.Status)
	require.NotContains(t, d.Verdict, "not ready")
	require.NotEmpty(t, d.DNSErrors)
	require.Equal(t, addr, d.DNSErrors[0].Server)
	require.Equal(t, "timeout", d.DNSErrors[0].Error)
	// [spf] timeout 500ms + 2 x [dns] timeout 200ms bound each domain.
	require.Less(t, took, 3*900*time.Millisecond, "took %v", took)
}

func TestServFail(t *testing.T) {
	out, _, _ := decoded(t, "06-servfail")
	require.Equal(t, 2, out.ExitCode)
	d := out.Domains[0]
	require.Equal(t, "dns-error", d.Status)
	require.Empty(t, d.Publish, "nothing to publish is known while a lookup fails")
	var failed []string
	for _, e := range d.DNSErrors {
		if e.Error == "SERVFAIL" {
			failed = append(failed, e.Name)
		}
	}
	require.Contains(t, failed, "spf.protection.outlook.com", "the failing name is named: %+v", d.DNSErrors)
}

func byDomain(t *testing.T, out jsonResult, domain string) int {
	t.Helper()
	for i, d := range out.Domains {
		if d.Domain == domain {
			return i
		}
	}
	t.Fatalf("no report for %s", domain)
	return -1
}

func TestSPFProblems(t *testing.T) {
	out, _, _ := decoded(t, "08-spf-problems")
	require.Equal(t, 1, out.ExitCode)
	plus := out.Domains[byDomain(t, out, "plusall.example")]
	require.Equal(t, "ready", plus.Status, "+all passes every host, the relay's too")
	require.Contains(t, findingsText(plus.Findings), `warning spf: "+all" lets every host`)

	ptr := out.Domains[byDomain(t, out, "ptr.example")]
	require.Contains(t, findingsText(ptr.Findings), `warning spf: "?all" is neutral`)
	require.Contains(t, findingsText(ptr.Findings), `warning spf: "ptr": RFC 7208 §5.5`)
	require.Equal(t, "v=spf1 ptr ip4:203.0.113.10 ip6:2001:db8::10 ?all", ptr.Publish[0].Value)

	syn := out.Domains[byDomain(t, out, "syntax.example")]
	require.Equal(t, "permerror", syn.SPF.Results[0].Result, "blitiri accepts /33; receivers do not")
	require.Contains(t, findingsText(syn.Findings), `error spf: syntax error in term "ip4:192.0.2.0/33"`)

	not := out.Domains[byDomain(t, out, "notspf.example")]
	require.Empty(t, not.SPF.Records)
	require.Equal(t, []string{"v=spf1x include:_spf.example.org -all"}, not.SPF.NotSPF)
	require.Equal(t, "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all", not.Publish[0].Value)

	void := out.Domains[byDomain(t, out, "void.example")]
	require.Equal(t, 3, void.SPF.VoidLookups)
	require.Equal(t, "permerror", void.SPF.Results[0].Result)
	require.Contains(t, findingsText(void.Findings), "error spf: 3 void lookups")
}

func TestDKIMStates(t *testing.T) {
	out, _, _ := decoded(t, "10-dkim-states")
	state := func(domain string) (string, string, int, bool, string) {
		k := out.Domains[byDomain(t, out, domain)].DKIM[0]
		return k.State, k.KeyType, k.KeyBits, k.Testing, k.Tag
	}
	s, typ, bits, _, _ := state("otherkey.example")
	require.Equal(t, []any{"other-key", "rsa", 2048}, []any{s, typ, bits})
	s, _, _, _, _ = state("revoked.example")
	require.Equal(t, "revoked", s)
	s, _, _, testing, _ := state("testing.example")
	require.Equal(t, "match", s)
	require.True(t, testing)
	require.Equal(t, "ready", out.Domains[byDomain(t, out, "testing.example")].Status)
	require.Contains(t, findingsText(out.Domains[byDomain(t, out, "testing.example")].Findings), "t=y (testing)")
	s, _, _, _, tag := state("sha1.example")
	require.Equal(t, []string{"malformed", "h"}, []string{s, tag})
	s, _, _, _, tag = state("malformed.example")
	require.Equal(t, []string{"malformed", "k"}, []string{s, tag})
	_, _, bits, _, _ = state("short.example")
	require.Equal(t, 1024, bits)
	require.Contains(t, findingsText(out.Domains[byDomain(t, out, "short.example")].Findings), "warning dkim: default._domainkey.short.example: RSA key of 1024 bits")
	_, _, bits, _, _ = state("tiny.example")
	require.Equal(t, 512, bits)
	require.Contains(t, findingsText(out.Domains[byDomain(t, out, "tiny.example")].Findings), "error dkim: default._domainkey.tiny.example: RSA key of 512 bits")
}

func TestNullMX(t *testing.T) {
	out, _, _ := decoded(t, "11-null-mx")
	d := out.Domains[0]
	require.Equal(t, "noreply@nomail.example", d.Bounce.Address)
	require.True(t, d.Bounce.NullMX)
	require.False(t, d.Bounce.OK)
	require.Contains(t, findingsText(d.Findings), "error bounce: nomail.example has a null MX (RFC 7505)")
}

func TestDMARC(t *testing.T) {
	out, _, _ := decoded(t, "07-spf-ready")
	require.Equal(t, 0, out.ExitCode)
	top := out.Domains[byDomain(t, out, "ready.example")].DMARC
	require.Equal(t, []any{"quarantine", "reject", "quarantine", 50, "r", "r", false},
		[]any{top.Policy, top.SubdomainPolicy, top.Applied, top.Pct, top.ADKIM, top.ASPF, top.Inherited})
	require.Equal(t, []string{"mailto:d@ready.example"}, top.RUA)
	sub := out.Domains[byDomain(t, out, "mail.ready.example")].DMARC
	require.True(t, sub.Inherited)
	require.Equal(t, "_dmarc.ready.example", sub.FoundAt)
	require.Equal(t, "reject", sub.Applied, "sp= applies to a subdomain")
	require.True(t, sub.Forecast.Pass)
	require.True(t, sub.Forecast.SPFAligned)

	out, _, _ = decoded(t, "12-dmarc-problems")
	bad := out.Domains[byDomain(t, out, "badp.example")].DMARC
	require.NotEmpty(t, bad.Error)
	two := out.Domains[byDomain(t, out, "twodmarc.example")].DMARC
	require.Equal(t, "2 DMARC records at _dmarc.twodmarc.example", two.Error)
	odd := out.Domains[byDomain(t, out, "oddtags.example")]
	require.Contains(t, findingsText(odd.Findings), `unknown tag "foo"`)
	require.Contains(t, findingsText(odd.Findings), "rua=https://reports.example/ is not a mailto: URI")
}

// With no domain named, every domain of the configuration, each once, units kept.
func TestConfigDomains(t *testing.T) {
	out, _, _ := decoded(t, "13-config-domains")
	var got []string
	for _, d := range out.Domains {
		got = append(got, d.Domain)
	}
	require.Equal(t, []string{"example.com", "partner.example", "example.net"}, got)
	ex := out.Domains[0]
	require.Equal(t, "allowed-domain", ex.Decision.Reason)
	require.Equal(t, "match", ex.DKIM[0].State)
	require.Equal(t, "other-key", ex.DKIM[1].State)
	require.Equal(t, "s2026r._domainkey.example.com", ex.Publish[0].Name)
	require.Len(t, ex.Publish[0].Strings, 2, "an RSA-2048 record is two strings of at most 255")
	for _, s := range ex.Publish[0].Strings {
		require.LessOrEqual(t, len(s), 255)
	}
	require.Equal(t, ex.Publish[0].Value, strings.Join(ex.Publish[0].Strings, ""))
	require.Equal(t, "ready", out.Domains[1].Status)
}

// BenchmarkHundredDomains is the figure the README gives: 100 domains, each with an
// include chain, against a DNS server on loopback that answers after 20 ms (a resolver
// that is not on the same machine), at the default parallelism.
func BenchmarkHundredDomains(b *testing.B) {
	var zone strings.Builder
	r, err := os.ReadFile("testdata/relay.zone")
	require.NoError(b, err)
	zone.WriteString(expandKeys(b, string(r)))
	var targets []doctor.Target
	for i := range 100 {
		d := "c" + strconv.Itoa(i) + ".example"
		targets = append(targets, doctor.Target{Domain: d})
		zone.WriteString(d + ". TXT \"v=spf1 include:_spf." + d + " -all\"\n")
		zone.WriteString("_spf." + d + ". TXT \"v=spf1 ip4:192.0.2." + strconv.Itoa(i) + " -all\"\n")
		zone.WriteString(d + ". MX 10 mx." + d + ".\n")
		zone.WriteString("_dmarc." + d + ". TXT \"v=DMARC1; p=none\"\n")
	}
	srv := dnstest.New(b, zone.String())
	srv.SetDelay(20 * time.Millisecond)
	base, err := os.ReadFile("testdata/base.toml")
	require.NoError(b, err)
	cfg := loadConfig(b, string(base), srv.Addr)
	d, err := doctor.New(cfg)
	require.NoError(b, err)
	b.ResetTimer()
	for b.Loop() {
		res := d.Run(context.Background(), targets)
		require.Equal(b, 1, res.ExitCode)
	}
}

// When the relay's own record is missing, a CNAME to it would point at nothing: the
// doctor offers the whole TXT record, in strings of at most 255 bytes.
func TestRelayKeyUnpublished(t *testing.T) {
	c := loadCase(t, "14-relay-key-unpublished")
	res, _, _ := c.run(t)
	require.Contains(t, res.Findings[0].Text, "default._domainkey.example.net, the relay's own record, does not publish the default key")
	p := res.Domains[0].Publish[1]
	require.Equal(t, []string{"dkim", "TXT", "default._domainkey.customer.example"}, []string{p.Kind, p.Type, p.Name})
	k, err := dkimkey.Load(filepath.Join(keys, "default.pem"))
	require.NoError(t, err)
	rec, err := dkimkey.Record(k.Public())
	require.NoError(t, err)
	require.Equal(t, rec, p.Value)
	require.Equal(t, rec, strings.Join(p.Strings, ""))
	require.Len(t, p.Strings, 2)
	require.Len(t, p.Strings[0], 255)
}

func TestSplitTXT(t *testing.T) {
	require.Equal(t, []string{"short"}, doctor.SplitTXT("short"))
	long := strings.Repeat("a", 255) + strings.Repeat("b", 255) + "c"
	require.Equal(t, []string{strings.Repeat("a", 255), strings.Repeat("b", 255), "c"}, doctor.SplitTXT(long))
	require.Equal(t, `"a\"b\\c"`, doctor.QuoteTXT(`a"b\c`))
}
