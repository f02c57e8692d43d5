package policy_test

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"relay/internal/authz"
	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/dnstest"
	"relay/internal/policy"
	"relay/internal/relaytest"
	"relay/internal/resolver"
)

var update = flag.Bool("update", false, "rewrite the .decision golden files")

// TestGolden runs each testdata/NN-name.in (with its .zone) through Decide with the relay's
// own authorizer against a real DNS server on loopback, and compares with NN-name.decision
// (testdata/README.md).
func TestGolden(t *testing.T) {
	ins, err := filepath.Glob("testdata/*.in")
	require.NoError(t, err)
	require.NotEmpty(t, ins)
	base, err := os.ReadFile("testdata/base.toml")
	require.NoError(t, err)
	dns := dnstest.New(t, "")
	cfgPath := filepath.Join(t.TempDir(), "relay.toml")
	text := strings.NewReplacer("%ROOT%", relaytest.Root, "%DNS%", dns.Addr).Replace(string(base))
	require.NoError(t, os.WriteFile(cfgPath, []byte(text), 0o600))
	cfg, err := config.Load(cfgPath)
	require.NoError(t, err)
	rec, err := dkimkey.Record(cfg.DKIM.Signer.Public())
	require.NoError(t, err)
	defaultKey := "default._domainkey.relay.example.net. 300 IN TXT " + relaytest.TXTStrings(rec)

	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in")
		t.Run(name, func(t *testing.T) {
			zone, err := os.ReadFile(strings.TrimSuffix(in, ".in") + ".zone")
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			require.NoError(t, dns.Load(strings.ReplaceAll(string(zone), "%DEFAULTKEY%", defaultKey)))
			input, servfail := readInput(t, in)
			for _, n := range servfail {
				dns.SetServFail(n, true)
				defer dns.SetServFail(n, false)
			}
			// A fresh authorizer per case: no answer cached from another case.
			r, err := resolver.New(cfg.DNS.Servers, cfg.DNS.Timeout.Duration)
			require.NoError(t, err)
			d, err := policy.Decide(context.Background(), cfg, authz.New(cfg, r, cfg.DKIM.Signer.Public()), input)
			got := strings.ReplaceAll(render(d, err), dns.Addr, "DNS")
			golden := strings.TrimSuffix(in, ".in") + ".decision"
			if *update {
				require.NoError(t, os.WriteFile(golden, []byte(got), 0o644))
				return
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "no golden file: run go test ./internal/policy -update")
			require.Equal(t, string(want), got)
		})
	}
}

func readInput(t *testing.T, path string) (in policy.Input, servfail []string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		require.True(t, ok, "%s: %q is not key: value", path, line)
		v = strings.TrimSpace(v)
		switch k {
		case "from":
			in.From = v
		case "envelope":
			in.Envelope = v
		case "unit":
			in.Unit = v
		case "unit_header":
			in.UnitHeader = v
		case "network_allowed":
			in.NetworkAllowed = v == "true"
		case "servfail":
			servfail = append(servfail, v)
		default:
			t.Fatalf("%s: unknown key %q", path, k)
		}
	}
	require.NoError(t, sc.Err())
	return in, servfail
}

func render(d policy.Decision, err error) string {
	if err != nil {
		return "error: " + err.Error() + "\n"
	}
	var b strings.Builder
	field := func(k string, v any) { fmt.Fprintf(&b, "%-19s%v\n", k+":", v) }
	field("unit", d.Unit)
	field("from_original", d.FromOriginal)
	field("from", d.From)
	field("rewritten", d.Rewritten)
	field("reason", d.Reason)
	field("detail", d.Detail)
	field("envelope", d.Envelope)
	field("envelope_rewritten", d.EnvelopeRewritten)
	field("envelope_detail", d.EnvelopeDetail)
	field("dkim_domain", d.DKIMDomain)
	field("delegated", d.Delegated)
	field("display_name", d.DisplayName)
	field("add_from", d.AddFrom)
	return b.String()
}
