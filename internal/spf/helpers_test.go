package spf

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"

	"relay/internal/resolver"
)

// serve starts a real DNS server on 127.0.0.1 (UDP and TCP on one kernel-chosen port)
// answering with h, for what internal/dnstest does not cover: the SPF test suite's zone
// data, with its faults. It returns the address and stops when the test ends. (The same
// helper serves internal/resolver's tests.)
func serve(t testing.TB, h dns.HandlerFunc) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	// The kernel picks a free UDP port, which may still be taken for TCP (by the client
	// end of a connection in TIME_WAIT): then try another one.
	for attempt := 0; ; attempt++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen udp: %v", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			break
		}
		pc.Close()
		if attempt == 20 {
			t.Fatalf("listen tcp on udp port %d: %v", port, err)
		}
	}
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	started := make(chan struct{}, 2)
	udp.NotifyStartedFunc = func() { started <- struct{}{} }
	tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	<-started
	<-started
	t.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
	})
	return pc.LocalAddr().String()
}

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
