package spf

import (
	"context"
	"net/netip"
	"testing"
)

// BenchmarkRecord is what the strict check adds to each SPF record the library reads:
// Parse and the rewritten record handed to the library (view.LookupTXT).
func BenchmarkRecord(b *testing.B) {
	const txt = "v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 include:_spf.example.org a mx:mail.example.org/24 -all"
	v := &view{env: newMacroEnv(netip.MustParseAddr("203.0.113.10"), "relay.example.net", "postmaster@example.org")}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		rec, err := Parse(txt)
		if err != nil {
			b.Fatal(err)
		}
		v.libraryRecord(ctx, rec, "example.org")
	}
}
