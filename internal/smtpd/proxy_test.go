package smtpd

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func proxyV2(cmd, fam byte, addrs []byte) string {
	var b bytes.Buffer
	b.Write(proxyV2Sig)
	b.WriteByte(0x20 | cmd)
	b.WriteByte(fam)
	binary.Write(&b, binary.BigEndian, uint16(len(addrs)))
	b.Write(addrs)
	return b.String()
}

func TestReadProxyHeader(t *testing.T) {
	v4 := append(append(netip.MustParseAddr("203.0.113.7").AsSlice(), netip.MustParseAddr("192.0.2.1").AsSlice()...), 0xd4, 0x31, 0, 25)
	v6 := append(append(netip.MustParseAddr("2001:db8::7").AsSlice(), netip.MustParseAddr("2001:db8::1").AsSlice()...), 0, 80, 0, 25)
	tests := []struct {
		name, in, want, err string
	}{
		{name: "v1 TCP4", in: "PROXY TCP4 203.0.113.7 192.0.2.1 54321 25\r\n", want: "203.0.113.7:54321"},
		{name: "v1 TCP6", in: "PROXY TCP6 2001:db8::7 2001:db8::1 80 25\r\n", want: "[2001:db8::7]:80"},
		{name: "v1 UNKNOWN", in: "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", want: "invalid AddrPort"},
		{name: "v1 family mismatch", in: "PROXY TCP4 2001:db8::7 192.0.2.1 1 25\r\n", err: "source address"},
		{name: "v1 bad port", in: "PROXY TCP4 203.0.113.7 192.0.2.1 65536 25\r\n", err: "port"},
		{name: "v1 leading zero port", in: "PROXY TCP4 203.0.113.7 192.0.2.1 025 25\r\n", err: "port"},
		{name: "v1 no CRLF", in: "PROXY TCP4 203.0.113.7 192.0.2.1 1 25\n" + strings.Repeat("x", 200), err: "CRLF"},
		{name: "v1 too few fields", in: "PROXY TCP4 203.0.113.7\r\n", err: "malformed"},
		{name: "v2 TCP4", in: proxyV2(1, 0x11, v4), want: "203.0.113.7:54321"},
		{name: "v2 TCP6 with TLVs", in: proxyV2(1, 0x21, append(v6, 0x04, 0, 1, 'x')), want: "[2001:db8::7]:80"},
		{name: "v2 LOCAL", in: proxyV2(0, 0, nil), want: "invalid AddrPort"},
		{name: "v2 short", in: proxyV2(1, 0x11, v4[:8]), err: "short"},
		{name: "v2 bad command", in: proxyV2(2, 0x11, v4), err: "command"},
		{name: "no header", in: "EHLO client.test\r\n", err: "missing"},
		{name: "truncated", in: "PROX", err: "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			if tt.err == "" {
				in += "EHLO x\r\n"
			}
			r := strings.NewReader(in)
			got, err := readProxyHeader(r)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got.String())
			rest := make([]byte, 8)
			n, _ := r.Read(rest)
			require.Equal(t, "EHLO x\r\n", string(rest[:n]), "reads nothing past the header")
		})
	}
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

func dialWithPreamble(t *testing.T, addr, preamble string) *raw {
	t.Helper()
	r := dialRawNoGreeting(t, addr)
	r.write(preamble)
	r.expect(220, "")
	return r
}

func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 192.0.2.1 54321 25\r\n"))
	f.Add([]byte("PROXY TCP6 2001:db8::7 2001:db8::1 80 25\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte(proxyV2(1, 0x11, make([]byte, 12))))
	f.Add([]byte(proxyV2(1, 0x21, make([]byte, 36))))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		ap, err := readProxyHeader(r)
		if err != nil {
			return
		}
		consumed := len(in) - r.Len()
		// A header ends where the protocol says; SMTP after it is never eaten.
		if bytes.HasPrefix(in, []byte(proxyV1Head)) {
			require.True(t, bytes.HasSuffix(in[:consumed], []byte("\r\n")))
			require.LessOrEqual(t, consumed, proxyV1Max)
		} else {
			require.Equal(t, 16+int(binary.BigEndian.Uint16(in[14:16])), consumed)
		}
		if ap.IsValid() {
			require.Empty(t, ap.Addr().Zone())
		}
	})
}
