package resolver

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// isUDP tells which listener a query came in on.
func isUDP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.UDPAddr)
	return ok
}

func newResolver(t testing.TB, timeout time.Duration, servers ...string) *Resolver {
	t.Helper()
	r, err := New(servers, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
