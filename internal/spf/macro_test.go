package spf

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The examples of RFC 7208 §7.4, and the rules of §7.3 they do not show.
func TestMacroExpand(t *testing.T) {
	const sender = "strong-bad@email.example.com"
	v4 := &view{env: newMacroEnv(netip.MustParseAddr("192.0.2.3"), "mx.example.org", sender)}
	v6 := &view{env: newMacroEnv(netip.MustParseAddr("2001:db8::cb01"), "mx.example.org", sender)}
	tests := []struct {
		v          *view
		spec, want string
	}{
		{v4, "%{s}", "strong-bad@email.example.com"},
		{v4, "%{o}", "email.example.com"},
		{v4, "%{d}", "email.example.com"},
		{v4, "%{d4}", "email.example.com"},
		{v4, "%{d3}", "email.example.com"},
		{v4, "%{d2}", "example.com"},
		{v4, "%{d1}", "com"},
		{v4, "%{dr}", "com.example.email"},
		{v4, "%{d2r}", "example.email"},
		{v4, "%{l}", "strong-bad"},
		{v4, "%{l-}", "strong.bad"},
		{v4, "%{lr}", "strong-bad"},
		{v4, "%{lr-}", "bad.strong"},
		{v4, "%{l1r-}", "strong"},
		{v4, "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"},
		{v4, "%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"},
		{v4, "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"},
		{v4, "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"},
		{v4, "%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"},
		{v6, "%{ir}.%{v}._spf.%{d2}", "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"},
		// Not in §7.4.
		{v4, "%{h}.%{H}", "mx.example.org.mx.example.org"},
		{v4, "%{d/}", "email.example.com"},
		{v4, "%%.%_.%-.example.com", "%. .%20.example.com"},
		{v4, "%{S}.example.com", "strong-bad%40email.example.com.example.com"},
		{v4, "%{d200}", "email.example.com"},
		{v4, "no.macro", "no.macro"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			require.Equal(t, tt.want, tt.v.expand(context.Background(), tt.spec, "email.example.com"))
		})
	}

	// §7.3: upper case escapes every octet outside RFC 3986's unreserved set, a space as
	// %20 (url.QueryEscape would write "+").
	odd := &view{env: newMacroEnv(netip.MustParseAddr("192.0.2.3"), "h", "~jack&jill=up a/b@x.example")}
	require.Equal(t, "~jack%26jill%3Dup%20a%2Fb.x.example", odd.expand(context.Background(), "%{L}.%{o}", "x.example"))
	// A "/" delimiter, which the library rejects.
	require.Equal(t, "b.up a.~jack&jill", odd.expand(context.Background(), "%{lr/=}", "x.example"))

	// §7.3: a name longer than 253 octets loses labels on the left.
	long := &view{env: newMacroEnv(netip.MustParseAddr("192.0.2.3"), "h", "x@"+strings.Repeat("abcdefghi.", 30)+"example")}
	got := long.expand(context.Background(), "%{o}.example.com", "d.example")
	require.LessOrEqual(t, len(got), 253)
	require.True(t, strings.HasPrefix(got, "abcdefghi.") && strings.HasSuffix(got, ".example.example.com"), got)
}

func TestMacroEnv(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.3")
	for sender, want := range map[string][3]string{
		"alice@example.com":    {"alice@example.com", "alice", "example.com"},
		"@example.com":         {"postmaster@example.com", "postmaster", "example.com"},
		"":                     {"postmaster@helo.example", "postmaster", "helo.example"},
		`"a@b"@example.com`:    {`"a@b"@example.com`, `"a@b"`, "example.com"},
		"postmaster@x.example": {"postmaster@x.example", "postmaster", "x.example"},
	} {
		env := newMacroEnv(ip, "helo.example", sender)
		require.Equal(t, want, [3]string{env.sender, env.local, env.domain}, sender)
	}
}

func TestLibName(t *testing.T) {
	for name, lib := range map[string]string{
		"example.com":             "example.com",
		"foo:bar/baz.example.com": "foo:bar\x1fsbaz.example.com",
		"a b%c\x1fd":              "a\x1f_b\x1fpc\x1fed",
		"\x1f":                    "\x1fe",
	} {
		require.Equal(t, lib, libName(name))
		require.Equal(t, name, realName(lib))
		require.NotContains(t, lib, "/")
		require.NotContains(t, lib, " ")
		require.NotContains(t, lib, "%")
	}
	require.Equal(t, "x\x1f", realName("x\x1f"), "a lone escape byte is kept")
}

// What the library reads: macros expanded, exp= and unknown modifiers left out, a "/"
// in a domain-spec escaped, CIDR lengths kept.
func TestLibraryRecord(t *testing.T) {
	v := &view{env: newMacroEnv(netip.MustParseAddr("192.0.2.3"), "mx.example.org", "alice@example.com")}
	rec, err := Parse("v=spf1  +a:foo:bar/baz.example.com/24//64 -exists:%{ir}.%{v}._spf.%{d2} ip4:192.0.2.0/24 ip6:2001:db8::/32 ptr ~MX//0 exp=x.%{d} foo=bar redirect=%{o}._spf.example.net")
	require.NoError(t, err)
	require.Equal(t, "v=spf1 +a:foo:bar\x1fsbaz.example.com/24//64 -exists:3.2.0.192.in-addr._spf.example.com ip4:192.0.2.0/24 ip6:2001:db8::/32 ptr ~mx//0 redirect=example.com._spf.example.net",
		v.libraryRecord(context.Background(), rec, "sub.example.com"))
}
