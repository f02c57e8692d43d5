// Package dnstest runs a real DNS server on loopback (UDP and TCP, miekg/dns) that answers
// from zone text, for tests of everything that resolves names. It counts the queries it
// sees so tests can prove caching, and can be told to stay silent or truncate.
package dnstest

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server answers authoritatively from its records. Names not present get NXDOMAIN; present
// names without the asked type get NODATA (NOERROR, empty answer). CNAMEs are returned for
// any type and followed inside the zone, as a recursive resolver would.
type Server struct {
	// Addr is the "127.0.0.1:port" both the UDP and TCP listeners use.
	Addr string

	mu       sync.Mutex
	records  map[string][]dns.RR // by lower-case FQDN
	queries  map[string]int      // "name/TYPE" -> count
	total    int
	silent   bool // never answer (for timeout tests)
	truncate bool // answer UDP with TC set and no records, so clients retry over TCP
	servfail map[string]bool
	delay    time.Duration // before each answer, like a resolver that is not on loopback

}

// New starts a server on 127.0.0.1 with the given zone text (RFC 1035 master format; an
// $ORIGIN is not needed when names are fully qualified; default TTL 300). It is shut down
// when the test ends.
func New(t testing.TB, zone string) *Server {
	t.Helper()
	s := &Server{records: map[string][]dns.RR{}, queries: map[string]int{}, servfail: map[string]bool{}}
	if err := s.Load(zone); err != nil {
		t.Fatalf("dnstest: zone: %v", err)
	}
	s.Addr = Serve(t, func(w dns.ResponseWriter, r *dns.Msg) {
		_, udp := w.RemoteAddr().(*net.UDPAddr)
		s.serve(w, r, udp)
	})
	return s
}

// Load replaces the served records with zone.
func (s *Server) Load(zone string) error {
	recs := map[string][]dns.RR{}
	zp := dns.NewZoneParser(strings.NewReader(zone), ".", "dnstest")
	zp.SetDefaultTTL(300)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		name := strings.ToLower(rr.Header().Name)
		recs[name] = append(recs[name], rr)
	}
	if err := zp.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.records = recs
	s.mu.Unlock()
	return nil
}

// Queries is how many queries for name (any case, with or without the final dot) and qtype
// (e.g. dns.TypeTXT) the server has seen; qtype 0 counts every type.
func (s *Server) Queries(name string, qtype uint16) int {
	name = strings.ToLower(dns.Fqdn(name))
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, v := range s.queries {
		kn, kt, _ := strings.Cut(k, "/")
		if kn == name && (qtype == 0 || kt == dns.TypeToString[qtype]) {
			n += v
		}
	}
	return n
}

// Total is how many queries the server has seen.
func (s *Server) Total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// SetSilent makes the server drop every query (clients time out).
func (s *Server) SetSilent(v bool) { s.mu.Lock(); s.silent = v; s.mu.Unlock() }

// SetTruncate makes UDP answers come back truncated and empty, so clients must use TCP.
func (s *Server) SetTruncate(v bool) { s.mu.Lock(); s.truncate = v; s.mu.Unlock() }

// SetDelay makes every answer wait d, as a resolver across a network does (miekg/dns
// serves each query in its own goroutine, so queries still overlap).
func (s *Server) SetDelay(d time.Duration) { s.mu.Lock(); s.delay = d; s.mu.Unlock() }

// SetServFail makes queries for name answer SERVFAIL.
func (s *Server) SetServFail(name string, v bool) {
	s.mu.Lock()
	s.servfail[strings.ToLower(dns.Fqdn(name))] = v
	s.mu.Unlock()
}

// Serve starts a DNS server on 127.0.0.1, UDP and TCP on one kernel-chosen port, answering
// every query with h, and returns its address; it stops when the test ends. New serves a
// zone with it; tests that need answers no zone gives (servers that do not chase CNAMEs,
// check EDNS0, or serve the RFC 7208 suite's faults) give their own handler.
func Serve(t testing.TB, h dns.HandlerFunc) string {
	t.Helper()
	// UDP and TCP must share one port; the kernel picks the UDP one, and another test may
	// hold the same TCP port, so try a few.
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ; try++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("dnstest: listen udp: %v", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			t.Fatalf("dnstest: listen tcp on udp port %d: %v", port, err)
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

func (s *Server) serve(w dns.ResponseWriter, r *dns.Msg, udp bool) {
	if len(r.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	s.total++
	s.queries[name+"/"+dns.TypeToString[q.Qtype]]++
	silent, truncate, servfail, delay := s.silent, s.truncate, s.servfail[name], s.delay
	s.mu.Unlock()
	if silent {
		return
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(4096, false)
	}
	if servfail {
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	if udp && truncate {
		m.Truncated = true
		w.WriteMsg(m)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	found := false
	for hops := 0; hops < 16; hops++ {
		rrs, ok := s.records[name]
		if !ok {
			break
		}
		found = true
		var next string
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
				m.Answer = append(m.Answer, dns.Copy(rr))
			} else if c, ok := rr.(*dns.CNAME); ok {
				m.Answer = append(m.Answer, dns.Copy(rr))
				next = strings.ToLower(c.Target)
			}
		}
		if next == "" || q.Qtype == dns.TypeCNAME {
			break
		}
		name = next
		found = false
	}
	if !found && len(m.Answer) == 0 {
		m.Rcode = dns.RcodeNameError
	}
	if udp {
		size := 512
		if opt := r.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}
