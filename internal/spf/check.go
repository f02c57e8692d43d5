// Package spf owns SPF (RFC 7208): the record parser that checks every term, macro
// expansion, and check_host for one IP over a resolver.Querier, evaluated by
// blitiri.com.ar/go/spf on records the parser has accepted in full; it never caches a
// result nor decides whether a sender may be kept (packages authz and policy do).
package spf

import (
	"context"
	"errors"
	"net"
	"net/netip"

	libspf "blitiri.com.ar/go/spf"

	"relay/internal/resolver"
)

// Result is the result of check_host (RFC 7208 §2.6): one of the constants below.
type Result = libspf.Result

// The results of RFC 7208 §2.6.
const (
	None      = libspf.None
	Neutral   = libspf.Neutral
	Pass      = libspf.Pass
	Fail      = libspf.Fail
	SoftFail  = libspf.SoftFail
	TempError = libspf.TempError
	PermError = libspf.PermError
)

// CheckHost is RFC 7208 check_host(ip, domain of sender, sender) evaluated by the SPF
// library (mechanisms, the 10-lookup and 2-void-lookup limits of §4.6.4) with q's DNS,
// on records that Parse has checked in full and whose macros view has expanded
// (macro.go). helo feeds the %{h} macro, and names the domain when sender has none. A
// *resolver.Memo as q lets the checks of several IPs share their lookups, and tells the
// smallest TTL of the records consulted.
func CheckHost(ctx context.Context, q resolver.Querier, ip netip.Addr, helo, sender string) (Result, error) {
	ip = ip.Unmap() // RFC 7208 §5: an IPv4-mapped IPv6 address is checked as IPv4
	v := &view{q: q, env: newMacroEnv(ip, helo, sender)}
	// The library needs only the domain from these: every macro is expanded by view.
	return libspf.CheckHostWithSender(net.IP(ip.AsSlice()), libName(helo), "postmaster@"+libName(v.env.domain),
		libspf.WithResolver(v),
		libspf.WithContext(ctx))
}

// Why says in words what made a temperror or permerror, for the detail of a check and
// the DNS doctor: "timeout", "more than 10 DNS lookups", or the error's own text (a
// syntax error names the record and the term at fault).
func Why(res Result, err error) string {
	var d *net.DNSError
	switch {
	case err == nil:
		return "unknown error"
	case errors.As(err, &d) && d.IsTimeout:
		return "timeout"
	case errors.Is(err, libspf.ErrMultipleRecords):
		return "multiple SPF records"
	case errors.Is(err, libspf.ErrLookupLimitReached):
		return "more than 10 DNS lookups"
	case errors.Is(err, libspf.ErrVoidLookupLimitReached):
		return "more than 2 void DNS lookups"
	case errors.Is(err, libspf.ErrTooManyMXRecords):
		return "more than 10 MX records"
	case errors.Is(err, libspf.ErrNoResult) && res == PermError:
		return "include or redirect to a domain without SPF record"
	case errors.Is(err, libspf.ErrUnknownField):
		return "unknown mechanism"
	}
	return err.Error()
}
