package spf

import (
	"context"
	"fmt"
	"net"
	"strings"

	"relay/internal/resolver"
)

// view is the library's DNSResolver for checking one IP: address lookups ask for the record
// type of that IP (RFC 7208 §5.3-5.5), plus A for an IPv6 client because "exists"
// always asks for A (§5.7) and the library does not tell the two uses apart. It hands
// the library every SPF record checked and rewritten (macro.go), and takes the names
// the library asks for back from libName form. One check_host uses it, from one
// goroutine (the library makes no other).
type view struct {
	q   resolver.Querier
	env macroEnv

	ptrDone  bool     // ptrNames is known
	ptrNames []string // validated names of env.ip, for %{p}
}

// LookupTXT is where the library reads the record of every domain it evaluates: the
// sender's, and each include: and redirect= target. A record that Parse rejects is
// an error the library turns into permerror (it is not a *net.DNSError), so a syntax
// error anywhere in any record consulted makes the whole check a permerror (§4.6).
func (v *view) LookupTXT(ctx context.Context, name string) ([]string, error) {
	domain := realName(name)
	txts, err := resolver.TXT(ctx, v.q, domain)
	if err != nil {
		return nil, err
	}
	i, n := -1, 0
	for j, txt := range txts {
		if IsSPF(txt) {
			i, n = j, n+1
		}
	}
	if n != 1 {
		return txts, nil // none is "none"; several, the library's permerror (§4.5)
	}
	rec, err := Parse(txts[i])
	if err != nil {
		return nil, fmt.Errorf("SPF record of %s: %w", strings.TrimSuffix(domain, "."), err)
	}
	return []string{v.libraryRecord(ctx, rec, domain)}, nil
}

func (v *view) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	mxs, err := resolver.MX(ctx, v.q, realName(name))
	for _, mx := range mxs {
		mx.Host = libName(mx.Host)
	}
	return mxs, err
}

func (v *view) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return resolver.IP(ctx, v.q, realName(host), true, !v.env.ip.Is4())
}

func (v *view) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	names, err := resolver.PTR(ctx, v.q, addr)
	for i, n := range names {
		names[i] = libName(n)
	}
	return names, err
}
