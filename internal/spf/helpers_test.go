package spf

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"relay/internal/resolver"
)

// isUDP tells which listener a query came in on.
func isUDP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.UDPAddr)
	return ok
}

func newResolver(t testing.TB, timeout time.Duration, servers ...string) *resolver.Resolver {
	t.Helper()
	r, err := resolver.New(servers, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
