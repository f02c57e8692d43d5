package authz

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"relay/internal/resolver"
	"relay/internal/spf"
)

type ipResult struct {
	ip  netip.Addr
	res spf.Result
	err error
}

// checkIPs runs check_host for every sending IP, at the same time, sharing m.
func checkIPs(ctx context.Context, m *resolver.Memo, ips []netip.Addr, helo, domain string) []ipResult {
	sender := "postmaster@" + domain
	out := make([]ipResult, len(ips))
	if len(ips) == 1 {
		out[0].ip = ips[0]
		out[0].res, out[0].err = spf.CheckHost(ctx, m, ips[0], helo, sender)
		return out
	}
	var wg sync.WaitGroup
	for i, ip := range ips {
		wg.Go(func() {
			out[i].ip = ip
			out[i].res, out[i].err = spf.CheckHost(ctx, m, ip, helo, sender)
		})
	}
	wg.Wait()
	return out
}

// severity orders results for the detail text: the worst one leads.
var severity = map[spf.Result]int{
	spf.Pass: 0, spf.None: 1, spf.Neutral: 2, spf.SoftFail: 3, spf.Fail: 4, spf.PermError: 5, spf.TempError: 6,
}

// spfVerdict turns the per-IP results into the policy answer: authorized only when every
// IP passes; temporary when any is a temperror. The detail names each result and its
// IPs, worst first: "spf softfail for 2001:db8::10 (pass for 203.0.113.10)".
func spfVerdict(rs []ipResult) (ok, temporary bool, detail string) {
	type group struct {
		res spf.Result
		err error
		ips []string
	}
	var groups []*group
	ok = true
	for _, r := range rs {
		ok = ok && r.res == spf.Pass
		temporary = temporary || r.res == spf.TempError
		i := slices.IndexFunc(groups, func(g *group) bool { return g.res == r.res })
		if i < 0 {
			groups = append(groups, &group{res: r.res, err: r.err})
			i = len(groups) - 1
		}
		groups[i].ips = append(groups[i].ips, r.ip.String())
	}
	slices.SortStableFunc(groups, func(a, b *group) int { return severity[b.res] - severity[a.res] })

	var b strings.Builder
	head := groups[0]
	b.WriteString("spf ")
	b.WriteString(string(head.res))
	// A domain-wide outcome shared by every IP needs no list of IPs.
	shared := len(groups) == 1 && (head.res == spf.None || head.res == spf.TempError || head.res == spf.PermError)
	if !shared {
		b.WriteString(" for ")
		b.WriteString(strings.Join(head.ips, ", "))
	}
	switch head.res {
	case spf.None:
		b.WriteString(" (no SPF record)")
	case spf.TempError, spf.PermError:
		b.WriteString(": ")
		b.WriteString(spf.Why(head.res, head.err))
	}
	if len(groups) > 1 {
		b.WriteString(" (")
		for i, g := range groups[1:] {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(string(g.res))
			b.WriteString(" for ")
			b.WriteString(strings.Join(g.ips, ", "))
		}
		b.WriteString(")")
	}
	return ok, temporary, b.String()
}
