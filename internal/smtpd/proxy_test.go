package smtpd

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
)

// proxyV2 builds a v2 header by hand (not with go-proxyproto, so the tests do not trust the
// library to write what it reads): cmd 0 is LOCAL, 1 PROXY; fam is the family/protocol byte.
func proxyV2(ver, cmd, fam byte, addrs []byte) string {
	var b bytes.Buffer
	b.WriteString("\r\n\r\n\x00\r\nQUIT\n")
	b.WriteByte(ver<<4 | cmd)
	b.WriteByte(fam)
	binary.Write(&b, binary.BigEndian, uint16(len(addrs)))
	b.Write(addrs)
	return b.String()
}

var (
	// 203.0.113.7:54321 -> 192.0.2.1:25
	proxyV4Addrs = append(append(netip.MustParseAddr("203.0.113.7").AsSlice(), netip.MustParseAddr("192.0.2.1").AsSlice()...), 0xd4, 0x31, 0, 25)
	// [2001:db8::7]:80 -> [2001:db8::1]:25
	proxyV6Addrs = append(append(netip.MustParseAddr("2001:db8::7").AsSlice(), netip.MustParseAddr("2001:db8::1").AsSlice()...), 0, 80, 0, 25)
)

// proxyConfig trusts 127.0.0.1 (the tests' own address) as a load balancer. allow_networks
// holds the proxied clients, so a message shows which address the server took, and the
// balancer too, so that a header naming no client shows the balancer's listing does not
// carry over to whoever it forwards.
func proxyConfig() *config.Config {
	cfg := testConfig()
	cfg.SMTP.ProxyFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	cfg.SMTP.Networks = []netip.Prefix{
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("2001:db8::/64"),
		netip.MustParsePrefix("127.0.0.0/8"),
	}
	return cfg
}

func TestProxyHeaderAccepted(t *testing.T) {
	// A body longer than the header read-ahead, so the pipelined bytes are served partly
	// from what was read with the header and partly from the socket.
	body := testBody + "X-Pad: " + strings.Repeat("x", 600) + "\r\n"
	pipelined := "EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" + body + ".\r\n"
	tests := []struct {
		name, header string
		want         string // ClientIP
	}{
		{name: "v1 TCP4", header: "PROXY TCP4 203.0.113.7 192.0.2.1 54321 25\r\n", want: "203.0.113.7"},
		{name: "v1 TCP6", header: "PROXY TCP6 2001:db8::7 2001:db8::1 80 25\r\n", want: "2001:db8::7"},
		{name: "v1 TCP6 v4-mapped", header: "PROXY TCP6 ::ffff:203.0.113.7 ::ffff:192.0.2.1 80 25\r\n", want: "203.0.113.7"},
		{name: "v2 TCP4", header: proxyV2(2, 1, 0x11, proxyV4Addrs), want: "203.0.113.7"},
		{name: "v2 TCP6 with TLVs", header: proxyV2(2, 1, 0x21, append(bytes.Clone(proxyV6Addrs), 0x04, 0, 1, 'x')), want: "2001:db8::7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, proxyConfig())
			c := dialRawNoGreeting(t, f.addr)
			// The header and a whole transaction in one write, as a pipelining client
			// behind a balancer may send them: nothing after the header may be lost.
			c.write(tt.header + pipelined)
			c.expect(220, "")
			ehlo := c.expect(250, "")
			require.NotContains(t, ehlo, "\nAUTH ", "the client is not on loopback, the balancer is")
			c.expect(250, "2.0.0")
			c.expect(250, "2.0.0")
			c.expect(354, "")
			c.expect(250, "2.0.0")
			msgs := f.h.all()
			require.Len(t, msgs, 1)
			require.Equal(t, netip.MustParseAddr(tt.want), msgs[0].ClientIP)
			require.True(t, msgs[0].NetworkAllowed)
			require.Equal(t, body, string(msgs[0].Data))
		})
	}
}

// TestProxyHeaderWithoutClient: a header that names no TCP client (a health check, or a
// balancer that does not know) leaves the balancer's address, but none of its trust: with
// the balancer in allow_networks, such a connection must still authenticate.
func TestProxyHeaderWithoutClient(t *testing.T) {
	headers := []struct{ name, header string }{
		{name: "v1 UNKNOWN", header: "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"},
		{name: "v1 short UNKNOWN", header: "PROXY UNKNOWN\r\n"},
		{name: "v2 LOCAL", header: proxyV2(2, 0, 0, nil)},
		{name: "v2 LOCAL with addresses", header: proxyV2(2, 0, 0x11, proxyV4Addrs)},
		{name: "v2 UDP", header: proxyV2(2, 1, 0x12, proxyV4Addrs)},
		{name: "v2 unix stream", header: proxyV2(2, 1, 0x31, make([]byte, 216))},
	}
	cfg := proxyConfig()
	require.True(t, inPrefixes(netip.MustParseAddr("127.0.0.1"), cfg.SMTP.Networks), "the balancer must be in allow_networks for this test")
	f := start(t, cfg)
	for _, tt := range headers {
		t.Run(tt.name, func(t *testing.T) {
			c := dialWithPreamble(t, f.addr, tt.header)
			ehlo := c.cmd("EHLO client.test", 250, "")
			require.NotContains(t, ehlo, "\nAUTH ", "AUTH without TLS offered as if on loopback")
			c.cmd("MAIL FROM:<a@example.com>", 530, "5.7.0")
			c.cmd("NOOP", 250, "2.0.0") // refused, not cut off: a health check may go on
		})
	}
	require.Empty(t, f.h.all())

	// Authenticated, such a connection sends as any other; the balancer's address is kept
	// for the log and the rate limits.
	cfg = proxyConfig()
	cfg.SMTP.AllowInsecureAuth = true
	f = start(t, cfg)
	c := dialWithPreamble(t, f.addr, "PROXY UNKNOWN\r\n")
	c.cmd("EHLO client.test", 250, "")
	c.cmd("AUTH PLAIN AGNybQBzM2NyZXQgcGFzcw==", 235, "2.0.0")
	c.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
	c.cmd("RCPT TO:<b@example.net>", 250, "2.0.0")
	c.cmd("DATA", 354, "")
	c.cmd(testBody+".", 250, "2.0.0")
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, netip.MustParseAddr("127.0.0.1"), msgs[0].ClientIP)
	require.False(t, msgs[0].NetworkAllowed)
	require.Equal(t, "crm", msgs[0].User)
}

func TestProxyHeaderRefused(t *testing.T) {
	tests := []struct {
		name, in string
		eof      bool // the balancer closes its side after writing in
	}{
		{name: "no header", in: "EHLO client.test\r\n"},
		{name: "v1 too few fields", in: "PROXY TCP4 203.0.113.7\r\n"},
		{name: "v1 family mismatch", in: "PROXY TCP4 2001:db8::7 192.0.2.1 1 25\r\n"},
		{name: "v1 bad port", in: "PROXY TCP4 203.0.113.7 192.0.2.1 65536 25\r\n"},
		{name: "v1 leading zero port", in: "PROXY TCP4 203.0.113.7 192.0.2.1 025 25\r\n"},
		{name: "v1 LF without CR", in: "PROXY TCP4 203.0.113.7 192.0.2.1 1 25\nEHLO client.test\r\n"},
		{name: "v1 no CRLF within 107 bytes", in: "PROXY TCP4 203.0.113.7 " + strings.Repeat("x", 200) + "\r\n"},
		{name: "v2 short IPv4 block", in: proxyV2(2, 1, 0x11, proxyV4Addrs[:8])},
		{name: "v2 bad command", in: proxyV2(2, 2, 0x11, proxyV4Addrs)},
		{name: "v2 bad version", in: proxyV2(1, 1, 0x11, proxyV4Addrs)},
		{name: "truncated", in: "PROX", eof: true},
		{name: "v2 truncated", in: proxyV2(2, 1, 0x11, proxyV4Addrs)[:20], eof: true},
	}
	f := start(t, proxyConfig())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRawNoGreeting(t, f.addr)
			c.write(tt.in)
			if tt.eof {
				require.NoError(t, c.conn.(*net.TCPConn).CloseWrite())
			}
			// Cut off before the greeting.
			c.closed()
		})
	}
	require.Empty(t, f.h.all())
}

func TestProxyProtocol(t *testing.T) {
	cfg := testConfig()
	cfg.SMTP.ProxyFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	cfg.SMTP.Networks = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	f := start(t, cfg)

	c := dialWithPreamble(t, f.addr, "PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
	c.envelope()
	c.cmd("DATA", 354, "")
	c.cmd(testBody+".", 250, "2.0.0")
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, netip.MustParseAddr("203.0.113.7"), msgs[0].ClientIP)
	require.True(t, msgs[0].NetworkAllowed)

	// A client outside allow_networks behind the balancer is not let through.
	c = dialWithPreamble(t, f.addr, "PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\n")
	c.cmd("EHLO client.test", 250, "")
	c.cmd("MAIL FROM:<a@example.com>", 530, "5.7.0")

	// A balancer that does not send the header is cut off before the greeting.
	c2 := dialRawNoGreeting(t, f.addr)
	c2.write("EHLO client.test\r\n")
	c2.closed()
}

func TestProxyHeaderFromUntrustedPeer(t *testing.T) {
	cfg := testConfig()
	cfg.SMTP.ProxyFrom = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} // not us
	f := start(t, cfg)

	// The server speaks first, and the header is just a bad command.
	c := dialRaw(t, f.addr)
	c.cmd("PROXY TCP4 203.0.113.7 192.0.2.1 54321 25", 501, "5.5.2")
	ehlo := c.cmd("EHLO client.test", 250, "")
	require.Contains(t, ehlo, "\nAUTH ", "still the loopback client")
	c.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
	c.cmd("RCPT TO:<b@example.net>", 250, "2.0.0")
	c.cmd("DATA", 354, "")
	c.cmd(testBody+".", 250, "2.0.0")
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, netip.MustParseAddr("127.0.0.1"), msgs[0].ClientIP)
}

func TestProxyRateLimitPerClientNetwork(t *testing.T) {
	cfg := proxyConfig()
	cfg.SMTP.NetworkLimit = config.Rate{N: 1, Per: time.Hour}
	f := start(t, cfg)

	// Every connection comes from the balancer; the buckets follow the clients behind it.
	a := dialWithPreamble(t, f.addr, "PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n")
	a.cmd("EHLO client.test", 250, "")
	a.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
	a.cmd("RSET", 250, "")
	a.cmd("MAIL FROM:<a@example.com>", 451, "4.7.1")

	b := dialWithPreamble(t, f.addr, "PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n")
	b.cmd("EHLO client.test", 250, "")
	b.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
}

func TestProxyImplicitTLS(t *testing.T) {
	cfg := proxyConfig()
	client := withCert(t, cfg)
	f := start(t, cfg)

	nc, err := net.Dial("tcp", f.tlsAddr)
	require.NoError(t, err)
	// The ClientHello goes out in the same write as the header.
	pc := &prefixConn{Conn: nc, prefix: []byte("PROXY TCP4 203.0.113.7 192.0.2.1 54321 465\r\n")}
	c := smtp.NewClient(tls.Client(pc, client))
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.Hello("client.test"))
	_, err = sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
	require.NoError(t, err)
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, netip.MustParseAddr("203.0.113.7"), msgs[0].ClientIP)
	require.True(t, msgs[0].TLS)
}

// prefixConn sends prefix together with the first Write.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Write(b []byte) (int, error) {
	if c.prefix == nil {
		return c.Conn.Write(b)
	}
	p := append(c.prefix, b...)
	c.prefix = nil
	n, err := c.Conn.Write(p)
	return max(n-(len(p)-len(b)), 0), err
}

func dialWithPreamble(t *testing.T, addr, preamble string) *raw {
	t.Helper()
	r := dialRawNoGreeting(t, addr)
	r.write(preamble)
	r.expect(220, "")
	return r
}

// FuzzProxyHeader reads a PROXY header built from the fuzzed client address, port and
// version, followed by arbitrary bytes, from a trusted balancer: the client must come out
// as the header said, and every byte after the header must reach go-smtp unchanged, in
// order, whether it was read along with the header or later from the socket. Arbitrary
// garbage in place of a header must be refused, never taken for a client address.
func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte{203, 0, 113, 7}, uint16(54321), false, []byte("EHLO x\r\n"), []byte("garbage"))
	f.Add([]byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7}, uint16(80), true, []byte{}, []byte("PROXY TCP4 1.2.3.4\r\n"))
	f.Fuzz(func(t *testing.T, ip []byte, port uint16, v2 bool, rest, garbage []byte) {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok || port == 0 {
			t.Skip()
		}
		addr = addr.Unmap()
		var hdr string
		switch {
		case v2 && addr.Is4():
			hdr = proxyV2(2, 1, 0x11, append(append(addr.AsSlice(), 192, 0, 2, 1), byte(port>>8), byte(port), 0, 25))
		case v2:
			hdr = proxyV2(2, 1, 0x21, append(append(addr.AsSlice(), netip.MustParseAddr("2001:db8::1").AsSlice()...), byte(port>>8), byte(port), 0, 25))
		case addr.Is4():
			hdr = "PROXY TCP4 " + addr.String() + " 192.0.2.1 " + itoa(port) + " 25\r\n"
		default:
			hdr = "PROXY TCP6 " + addr.String() + " 2001:db8::1 " + itoa(port) + " 25\r\n"
		}
		got, remote, err := readThroughProxy(t, []byte(hdr), rest)
		require.NoError(t, err, "%q", hdr)
		require.Equal(t, netip.AddrPortFrom(addr, port), remote)
		require.Equal(t, string(rest), string(got))

		if !bytes.HasPrefix(garbage, []byte("PROXY ")) && !bytes.HasPrefix(garbage, []byte("\r\n\r\n\x00\r\nQUIT\n")) {
			_, _, err := readThroughProxy(t, garbage, nil)
			require.Error(t, err, "%q taken for a PROXY header", garbage)
		}
	})
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }

// readThroughProxy writes hdr then rest into one end of a pipe, reads the PROXY header
// from the other as a connection from a trusted balancer, then reads what follows.
func readThroughProxy(t *testing.T, hdr, rest []byte) ([]byte, netip.AddrPort, error) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		a.Write(hdr)
		if len(rest) > 0 {
			a.Write(rest)
		}
		a.Close()
	}()
	c := &conn{Conn: b}
	if err := c.readProxyHeader(time.Second); err != nil {
		return nil, netip.AddrPort{}, err
	}
	var got bytes.Buffer
	buf := make([]byte, 7) // small reads: the pending bytes come out across several
	for {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return got.Bytes(), c.remote, nil
}
