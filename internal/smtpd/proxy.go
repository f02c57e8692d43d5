package smtpd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2) lets a TCP load
// balancer in smtp.proxy_protocol_from tell us the client's address in a header sent before
// any SMTP. Connections from those balancers must send one; others never get to.

var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

const (
	proxyV1Max  = 107  // the longest v1 line, CRLF included
	proxyV2Max  = 4096 // address block and TLVs we are willing to read past
	proxyV1Head = "PROXY "
)

// readProxyHeader reads one PROXY header from r without reading past it (SMTP follows) and
// returns the client's address, or the zero AddrPort when the balancer speaks for itself
// (v1 UNKNOWN, v2 LOCAL or a family other than TCP over IPv4/IPv6).
func readProxyHeader(r io.Reader) (netip.AddrPort, error) {
	head := make([]byte, 6)
	if _, err := io.ReadFull(r, head); err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy header: %w", err)
	}
	switch {
	case string(head) == proxyV1Head:
		return readProxyV1(r, head)
	case bytes.Equal(head, proxyV2Sig[:6]):
		return readProxyV2(r, head)
	}
	return netip.AddrPort{}, errors.New("proxy header: missing")
}

func readProxyV1(r io.Reader, line []byte) (netip.AddrPort, error) {
	// One byte at a time: the SMTP client may already have pipelined after the header.
	b := make([]byte, 1)
	for len(line) < proxyV1Max && !bytes.HasSuffix(line, []byte("\r\n")) {
		if _, err := io.ReadFull(r, b); err != nil {
			return netip.AddrPort{}, fmt.Errorf("proxy v1 header: %w", err)
		}
		line = append(line, b[0])
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return netip.AddrPort{}, errors.New("proxy v1 header: no CRLF within 107 bytes")
	}
	return parseProxyV1(string(line[len(proxyV1Head) : len(line)-2]))
}

// parseProxyV1 parses what follows "PROXY ": "TCP4 SRC DST SPORT DPORT", the same with TCP6,
// or "UNKNOWN" and anything.
func parseProxyV1(s string) (netip.AddrPort, error) {
	f := strings.Split(s, " ")
	if f[0] == "UNKNOWN" {
		return netip.AddrPort{}, nil
	}
	if len(f) != 5 || (f[0] != "TCP4" && f[0] != "TCP6") {
		return netip.AddrPort{}, fmt.Errorf("proxy v1 header: malformed %q", s)
	}
	src, err := netip.ParseAddr(f[1])
	if err != nil || src.Is4() != (f[0] == "TCP4") || src.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("proxy v1 header: bad source address %q", f[1])
	}
	if _, err := netip.ParseAddr(f[2]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy v1 header: bad destination address %q", f[2])
	}
	var ports [2]uint16
	for i, p := range f[3:] {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return netip.AddrPort{}, fmt.Errorf("proxy v1 header: bad port %q", p)
		}
		ports[i] = uint16(n)
	}
	return netip.AddrPortFrom(src, ports[0]), nil
}

func readProxyV2(r io.Reader, head []byte) (netip.AddrPort, error) {
	hdr := make([]byte, 16)
	copy(hdr, head)
	if _, err := io.ReadFull(r, hdr[6:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy v2 header: %w", err)
	}
	if !bytes.Equal(hdr[:12], proxyV2Sig) {
		return netip.AddrPort{}, errors.New("proxy v2 header: bad signature")
	}
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	if n > proxyV2Max {
		return netip.AddrPort{}, fmt.Errorf("proxy v2 header: %d bytes of addresses is too long", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy v2 header: %w", err)
	}
	return parseProxyV2(hdr[12], hdr[13], body)
}

// parseProxyV2 reads the version/command byte, the family/protocol byte and the address
// block of a v2 header.
func parseProxyV2(verCmd, famProto byte, body []byte) (netip.AddrPort, error) {
	if verCmd>>4 != 2 {
		return netip.AddrPort{}, fmt.Errorf("proxy v2 header: version %d", verCmd>>4)
	}
	switch verCmd & 0xf {
	case 0: // LOCAL: the balancer's own connection (health checks)
		return netip.AddrPort{}, nil
	case 1: // PROXY
	default:
		return netip.AddrPort{}, fmt.Errorf("proxy v2 header: command %d", verCmd&0xf)
	}
	switch famProto {
	case 0x11: // TCP over IPv4
		if len(body) < 12 {
			return netip.AddrPort{}, errors.New("proxy v2 header: short IPv4 address block")
		}
		src := netip.AddrFrom4([4]byte(body[0:4]))
		return netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[8:10])), nil
	case 0x21: // TCP over IPv6
		if len(body) < 36 {
			return netip.AddrPort{}, errors.New("proxy v2 header: short IPv6 address block")
		}
		src := netip.AddrFrom16([16]byte(body[0:16]))
		return netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[32:34])), nil
	}
	// UNSPEC, UDP, unix sockets: no client address we can use; treat as the balancer's own.
	return netip.AddrPort{}, nil
}
